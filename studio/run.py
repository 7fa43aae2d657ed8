"""Running a configured session: headless with a progress bar, or under a front-end. Every mode stops
cleanly on Ctrl-C / SIGTERM: the step finishes, a checkpoint is written into the run folder (atomically),
and its path is printed."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterable

from guidance.priors.base import PriorError

from . import commands as C
from . import confio
from .cli_errors import UsageError
from .config import StudioConfig
from .session import Session
from .signals import StopSignals
from .ui.common import EventTracker
from .view import ViewSettings


def run(cfg: StudioConfig, *, ui: str, out_dir: Path, exports: tuple[str, ...], resume: Path | None,
        host: str, port: int, progress: bool = True, user_set: Iterable[str] = (),
        view: ViewSettings = ViewSettings(), allow_origins: tuple[str, ...] = ()) -> int:
    try:
        session = Session(cfg, out_dir, paused=(ui != "headless"), user_set=user_set)
    except PriorError as e:  # a missing model: one line, exit 2 (the renderer and device: startup.check_device)
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if resume is not None:
        resume_from(session, resume, cfg)
    print(f"run folder: {out_dir}", file=sys.stderr)
    with StopSignals() as stop:
        if ui == "headless":
            return run_headless(session, exports, progress, stop)
        if ui == "viser":
            from .ui.viser_ui import serve

            status = serve(session, host=host, port=port, stop=stop, view=view, allow_origins=allow_origins)
        else:
            from .ui.desktop_ui import open_window

            status = open_window(session, view, stop=stop)
    return status


def resume_from(session: Session, path: Path, cfg: StudioConfig) -> None:
    """Load a checkpoint, then lay the command line's settings (built over the checkpoint's) on top."""
    try:
        session.send(C.LoadCheckpoint(str(path)))
    except C.CommandError as e:
        raise UsageError(f"--resume: {e}") from None
    session.drain()
    last = session.snapshot.events[-1] if session.snapshot.events else None
    if last is None or last.level == "error":
        raise UsageError(f"--resume {path}: {last.text if last else 'nothing loaded'}")
    changes = confio.diff(session.config, cfg)
    if changes:
        session.send(C.UpdateSettings(changes))
        session.drain()


def save_on_exit(session: Session, why: str) -> None:
    """Write a checkpoint if the scene changed since the last one, and say where (the worker has stopped)."""
    try:
        path = session.save_if_due()
    except OSError as e:
        print(f"error: {why} at step {session.trainer.iteration}; the checkpoint could not be written: {e}",
              file=sys.stderr)
        return
    if path is not None:
        print(f"{why} at step {session.trainer.iteration}: checkpoint written to {path} "
              f"(continue with: python app.py --resume {path})", file=sys.stderr)


def run_headless(session: Session, exports: tuple[str, ...], progress: bool, stop: threading.Event) -> int:
    from tqdm import tqdm

    total = session.trainer.cfg.run.steps
    todo = max(0, total - session.trainer.iteration)
    bar = tqdm(total=total, initial=session.trainer.iteration, disable=not progress, unit="it",
               dynamic_ncols=True, file=sys.stderr)

    events = EventTracker(session.snapshot)

    def say_new_events(write) -> None:  # warnings and errors (a full disk, a skipped step) as they come
        for event in events.new(session.snapshot):
            if event.level != "info":
                write(f"{event.level}: {event.text}")

    def tick(s: Session) -> None:
        say_new_events(bar.write)
        bar.update(1)
        latest = s.snapshot.latest
        post = {"loss": f"{latest.get('loss', float('nan')):.3g}"}
        if "psnr_ref" in latest:
            post["psnr_ref"] = f"{latest['psnr_ref']:.2f}dB"
        bar.set_postfix(post, refresh=False)

    session.run_steps(todo, callback=tick, stop=stop)
    bar.close()
    say_new_events(lambda text: print(text, file=sys.stderr))
    if stop.is_set():
        save_on_exit(session, "interrupted")
        return 130
    snap = session.snapshot
    if session.last_error:  # its event, printed above, says what failed and where the scene is
        save_on_exit(session, "paused")  # the scene is the last good one: --resume continues from it
        return 1
    score = session.trainer.score()
    if score is not None:
        view = session.trainer.score(session.trainer.cfg.run.view_resolution)
        print(f"psnr_ref {float(score.psnr):.2f} dB at {session.trainer.cfg.render.resolution} px, "
              f"{float(view.psnr):.2f} dB at {session.trainer.cfg.run.view_resolution} px (nearest mode: "
              f"{score.mode_name}) after {snap.iteration} steps, {snap.elapsed:.1f} s, "
              f"{snap.num_gaussians:,} Gaussians")
    if exports:
        for path in session.export_now(exports):
            print(f"wrote {path}")
    return 0
