"""The desktop window while training: its frame time, and training it/s with and without it.

    .venv/bin/python benchmarks/desktop_frame.py            # table, written to docs/BENCHMARKS.md
    .venv/bin/python benchmarks/desktop_frame.py --quick --no-write
    .venv/bin/python benchmarks/desktop_frame.py --screenshot docs/screenshot_desktop.png
    .venv/bin/python benchmarks/desktop_frame.py --screenshot docs/screenshot_desktop_1000x650.png --size 1000x650

Every case is a fresh process (one DearPyGui window per process; GLFW on X11 cannot be initialized
twice) running the default session (SDS preset, procedural prior, CPU renderer, 64 px, batch 4, 2000
Gaussians) for --seconds after --warmup seconds; it/s is the iterations the worker made in that window
divided by its length. Window cases run the studio's own loop (`frame()` then `pace()`): "idle" is no
input (the window drops to idle_fps), "orbiting" drags the camera every frame (fps cap, a re-render every
frame). While training, the view renders at ViewSettings.moving_size (128 px by default, shown
upscaled to the 512 px view) and sharpens to size (256 px) once paused and still; the 256 px rows
render at 256 px throughout. The view renders in the window's render thread (the UI thread posts a
request and uploads the finished image). "frame ms" is the time of one `frame()` call: queued callbacks,
snapshot follow-up, uploading a finished view, and DearPyGui drawing the window (with no GPU, Mesa's
llvmpipe draws it on the CPU); "view render ms" is the render thread's time per view. "worker renders"
is the alternative design, emulated without a window: the worker itself waits for a view render at max
Hz between steps (`run_steps` callback), so every render is serial with training. Without a
display the script runs itself under xvfb-run. The machine is shared with other jobs (load average
above): rounds are interleaved and medians over rounds are shown; compare ratios, not digits.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, load_average, machine, markdown_table, small_config, write_section

CASES = {  # name -> (window?, view px paused, view px training, max_hz, orbiting, worker renders)
    "no window": (False, 0, 0, 0.0, False, False),
    "window idle, no view renders": (True, 256, 128, 0.1, False, False),
    "window idle, view 128 px at 4 Hz (default)": (True, 256, 128, 4.0, False, False),
    "window idle, view 256 px at 4 Hz": (True, 256, 256, 4.0, False, False),
    "window idle, view 128 px at 10 Hz": (True, 256, 128, 10.0, False, False),
    "window orbiting (128 px while moving)": (True, 256, 128, 4.0, True, False),
    "worker renders 128 px at 4 Hz": (False, 128, 128, 4.0, False, True),
    "worker renders 256 px at 4 Hz": (False, 256, 256, 4.0, False, True),
}
QUICK = ("no window", "window idle, view 128 px at 4 Hz (default)", "window orbiting (128 px while moving)")


def prime(session) -> None:
    """One training step and one view render before any clock starts: numba compiles (or loads from its
    cache) the kernels on first use, which took tens of seconds on the busy machine after an edit."""
    from studio.ui.desktop_view import OrbitView, ViewportRenderer
    from studio.view import ViewSettings

    session.run_steps(1)
    for size in (128, 256):
        viewport = ViewportRenderer(ViewSettings(size=size, moving_size=size), session.config.render.renderer)
        viewport.update(session.snapshot, OrbitView.for_config(session.config, size))
        viewport.wait(600)
        viewport.close()


def measure(case: str, warmup: float, seconds: float) -> dict:
    """Run one case in this process; returns its figures."""
    import numpy as np

    import studio.commands as C
    from studio.session import Session
    from studio.view import ViewSettings

    window, size, moving, hz, orbiting, worker_renders = CASES[case]
    session = Session(small_config("sds", {}), Path("/tmp") / f"desktop_bench_{os.getpid()}", paused=True,
                      metrics_file=False)
    prime(session)
    if worker_renders:
        return measure_worker_renders(session, ViewSettings(size=size, moving_size=moving, max_hz=hz), warmup,
                                      seconds)
    studio = None
    if window:
        from studio.ui.desktop_ui import DesktopStudio

        studio = DesktopStudio(session, ViewSettings(size=size, moving_size=moving, max_hz=hz))
    session.send(C.Resume())
    session.start()
    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    renders_before = 0
    render_ms: list[float] = []
    while time.perf_counter() - t0 < warmup + seconds:
        now = time.perf_counter()
        if not marks and now - t0 >= warmup:
            marks.append((now, session.snapshot.iteration))
            if studio is not None:
                renders_before = studio.viewport.renders
                studio.frame_ms.clear()
        if studio is None:
            time.sleep(0.05)
            continue
        if orbiting:
            studio.view.orbit(3.0, 0.0)
            studio.mark_input()  # what a drag does: the window runs at its interactive fps
        renders = studio.viewport.renders
        studio.frame()
        if marks and studio.viewport.renders > renders:
            render_ms.append(studio.viewport.last_ms)
        studio.pace()
    end = (time.perf_counter(), session.snapshot.iteration)
    out = {"case": case, "its": (end[1] - marks[0][1]) / (end[0] - marks[0][0])}
    if studio is not None:
        ms = list(studio.frame_ms)
        out.update(frame_ms=float(np.median(ms)), frame_p90=float(np.percentile(ms, 90)), fps=len(ms) / seconds,
                   renders_per_s=(studio.viewport.renders - renders_before) / seconds,
                   render_ms=float(np.median(render_ms)) if render_ms else float("nan"))
        studio.close()
    session.stop()
    return out


class _Done(Exception):
    """Ends run_steps from its callback once the measured window is over."""


def measure_worker_renders(session, settings, warmup: float, seconds: float) -> dict:
    """The worker waits for a view render, at most `hz` times a second, between steps (the alternative
    to rendering beside training); snapshots are published as in the threaded loop."""
    import studio.commands as C
    from studio.ui.desktop_view import OrbitView, ViewportRenderer

    viewport = ViewportRenderer(settings, session.config.render.renderer)
    view = OrbitView.for_config(session.config, settings.display)
    render_ms: list[float] = []
    t0 = time.perf_counter()
    marks: list[tuple[float, int]] = []

    def after_step(s) -> None:
        now = time.perf_counter()
        viewport.update(s.snapshot, view)  # posts a render when due ...
        viewport.wait(600)  # ... which this step waits for
        if viewport.update(s.snapshot, view) and marks:
            render_ms.append(viewport.last_ms)
        if not marks and now - t0 >= warmup:
            marks.append((now, s.trainer.iteration))
        if now - t0 >= warmup + seconds:
            marks.append((now, s.trainer.iteration))
            raise _Done

    session.send(C.Resume())  # snapshots say "running", so the view renders at max_hz, not at once
    try:
        session.run_steps(1_000_000, callback=after_step)
    except _Done:
        pass
    viewport.close()
    (t_a, i_a), (t_b, i_b) = marks
    return {"case": "worker renders", "its": (i_b - i_a) / (t_b - t_a), "renders_per_s": len(render_ms) / (t_b - t_a),
            "render_ms": statistics.median(render_ms) if render_ms else float("nan")}


def run_case(case: str, warmup: float, seconds: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--warmup", str(warmup),
                           "--seconds", str(seconds)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or x != x else format(x, spec)


def table(results: dict[str, list[dict]]) -> str:
    def med(case: str, key: str) -> float | None:
        values = [r[key] for r in results[case] if key in r]
        return statistics.median(values) if values else None

    base = med("no window", "its")
    rows = []
    for case in results:
        its = med(case, "its")
        rows.append([case, fmt(its, ".2f"), fmt(its / base if base else None, ".0%"),
                     fmt(med(case, "frame_ms")), fmt(med(case, "frame_p90")), fmt(med(case, "fps")),
                     fmt(med(case, "renders_per_s")), fmt(med(case, "render_ms"))])
    header = ["case", "it/s", "vs. no window", "frame ms (median)", "frame ms (p90)", "frames/s",
              "view renders/s", "view render ms"]
    return markdown_table(header, rows)


def reading(results: dict[str, list[dict]]) -> str:
    """What the table says, in sentences built from its medians; differences smaller than the spread of
    the no-window rounds are called what they are, noise."""
    def its(case: str) -> float:
        return statistics.median(r["its"] for r in results[case])

    def pct(a: float, b: float) -> str:
        return f"{100 * a / b:.0f}%"

    base, bare = its("no window"), its("window idle, no view renders")
    rounds = [r["its"] for r in results["no window"]]
    spread = (max(rounds) - min(rounds)) / base
    lines = [f"Reading: rounds of the same case differed by up to {100 * spread:.0f}% (no window). The window "
             f"alone, idle and drawing no new view, keeps {pct(bare, base)} of the no-window it/s."]
    for px in (128, 256):
        ui = its("window idle, view 128 px at 4 Hz (default)" if px == 128 else "window idle, view 256 px at 4 Hz")
        worker = its(f"worker renders {px} px at 4 Hz")
        ui_cost, worker_cost = 1 - ui / bare, 1 - worker / base
        if abs(ui_cost - worker_cost) <= spread:
            verdict = "the difference is within the spread: neither costs training measurably more"
        else:
            verdict = f"{'the render thread' if ui_cost < worker_cost else 'the worker'} costs training less"
        lines.append(f"A {px} px view at 4 Hz rendered in the window's render thread changes that rate by "
                     f"{int(round(-100 * ui_cost)):+d}%; rendered by the worker between steps, the no-window rate "
                     f"by {int(round(-100 * worker_cost)):+d}% ({verdict}).")
    lines.append("The window's render runs beside the step and competes with it for the two cores (and for "
                 "the interpreter: the rasterizer's numba kernels hold the GIL); the worker's render adds its "
                 "whole time to the step it follows. Orbiting re-renders and redraws every frame, at the "
                 f"interactive fps, and keeps {pct(its('window orbiting (128 px while moving)'), base)}.")
    return " ".join(lines)


def screenshot(path: Path, steps: int, size: tuple[int, int]) -> None:
    """Open the window on the default session, train `steps` in it, pause, export a PLY (so the message
    area has a real message), let the view sharpen, save the window's pixels as a 256-colour PNG."""
    import numpy as np
    from PIL import Image

    import studio.commands as C
    from studio.session import Session
    from studio.ui import common
    from studio.ui.desktop_ui import DesktopStudio

    session = Session(small_config("sds", {}), Path("/tmp") / f"desktop_shot_{os.getpid()}", paused=True,
                      metrics_file=False)
    studio = DesktopStudio(session, width=size[0], height=size[1])
    session.send(C.Resume())
    session.start()
    while session.snapshot.iteration < steps:
        studio.frame()
        studio.pace()
    studio.panel.send_all(common.button_commands("pause", session.snapshot))
    session.wait_for(lambda s: s.paused, timeout=60)
    last = session.snapshot.events[-1].id if session.snapshot.events else 0
    studio.panel.send_all(common.button_commands("export:ply", session.snapshot))
    session.wait_for(lambda s: any(e.id > last and e.path for e in s.events), timeout=60)
    start = time.perf_counter()
    while time.perf_counter() - start < 1.5 or not studio.viewport.idle():  # still: full-size view
        studio.frame()
        studio.pace()
    pixels = studio.grab()
    image = Image.fromarray((np.clip(pixels[..., :3], 0, 1) * 255 + 0.5).astype(np.uint8))
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    print(f"wrote {path} ({pixels.shape[1]}x{pixels.shape[0]}) at step {session.snapshot.iteration}")
    studio.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three cases, one round, short windows")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the cases")
    ap.add_argument("--warmup", type=float, default=6.0, help="seconds of training before measuring")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds measured per case")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process (the child)
    ap.add_argument("--screenshot", type=Path, help="write a PNG of the window after --steps steps and exit")
    ap.add_argument("--steps", type=int, default=150, help="training steps before the screenshot")
    ap.add_argument("--size", default="1280x800", help="window size of the screenshot, WIDTHxHEIGHT")
    args = ap.parse_args(argv)
    if not os.environ.get("DISPLAY"):  # xvfb-run sets it, so this runs once
        if shutil.which("xvfb-run") is None:
            sys.exit("desktop_frame: needs a display or xvfb-run (apt-get install -y xvfb libgl1 libgl1-mesa-dri)")
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 3000x2000x24", sys.executable, __file__, *sys.argv[1:]]
        sys.exit(subprocess.call(cmd))
    if args.case:
        print(json.dumps(measure(args.case, args.warmup, args.seconds)))
        return
    if args.screenshot:
        width, height = (int(v) for v in args.size.lower().split("x"))
        screenshot(args.screenshot, args.steps, (width, height))
        return
    load = load_average()
    cases = QUICK if args.quick else tuple(CASES)
    rounds, warmup, seconds = (1, 3.0, 4.0) if args.quick else (args.rounds, args.warmup, args.seconds)
    results: dict[str, list[dict]] = {c: [] for c in cases}
    for r in range(rounds):
        for case in cases:
            results[case].append(run_case(case, warmup, seconds))
            print(f"round {r + 1}: {json.dumps(results[case][-1])}", flush=True)
    body = table(results)
    if not args.quick:
        body += "\n\n" + reading(results)
    print(body)
    print(f"machine: {machine(load)}")
    if args.no_write:
        return
    text = (f"## Desktop window while training\n\nCommand: `.venv/bin/python benchmarks/desktop_frame.py` "
            f"({time.strftime('%Y-%m-%d')}; {rounds} interleaved rounds, {warmup:.0f} s warm-up, "
            f"{seconds:.0f} s measured per case). Machine: {machine(load)}; display: Xvfb + Mesa llvmpipe "
            f"(no GPU).\n\n{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n{body}\n")
    write_section("desktop", text)
    print(f"\nwrote {ROOT / 'docs' / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
