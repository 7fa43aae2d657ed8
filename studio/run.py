"""Running a configured session: headless with a progress bar, or under a front-end."""

from __future__ import annotations

import sys
from pathlib import Path

from guidance.priors.base import PriorError

from . import commands as C
from . import confio
from .cli_errors import UsageError
from .config import StudioConfig
from .session import Session


def run(cfg: StudioConfig, *, ui: str, out_dir: Path, exports: tuple[str, ...], resume: Path | None,
        host: str, port: int, progress: bool = True) -> int:
    try:
        session = Session(cfg, out_dir, paused=(ui != "headless"))
    except (PriorError, RuntimeError) as e:  # a missing model, gsplat without CUDA: one line, exit 2
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if resume is not None:
        resume_from(session, resume, cfg)
    if ui == "headless":
        return run_headless(session, exports, progress)
    if ui == "viser":
        from .ui.viser_ui import serve

        return serve(session, host=host, port=port)
    from .ui.desktop_ui import open_window

    return open_window(session)


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


def run_headless(session: Session, exports: tuple[str, ...], progress: bool) -> int:
    from tqdm import tqdm

    total = session.trainer.cfg.run.steps
    todo = max(0, total - session.trainer.iteration)
    bar = tqdm(total=total, initial=session.trainer.iteration, disable=not progress, unit="it",
               dynamic_ncols=True, file=sys.stderr)

    def tick(s: Session) -> None:
        bar.update(1)
        latest = s.snapshot.latest
        post = {"loss": f"{latest.get('loss', float('nan')):.3g}"}
        if "psnr_ref" in latest:
            post["psnr_ref"] = f"{latest['psnr_ref']:.2f}dB"
        bar.set_postfix(post, refresh=False)

    session.run_steps(todo, callback=tick)
    bar.close()
    snap = session.snapshot
    if session.last_error:
        print(f"error: {session.last_error}", file=sys.stderr)
        return 1
    score = session.trainer.score()
    if score is not None:
        print(f"psnr_ref {float(score.psnr):.2f} dB (nearest mode: {score.mode_name}) after "
              f"{snap.iteration} steps, {snap.elapsed:.1f} s")
    if exports:
        for path in session.actions.export(exports, session.out_dir):
            print(f"wrote {path}")
    return 0
