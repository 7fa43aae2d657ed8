"""How responsive the browser studio's page is while the session trains: the page's frame rate, how late
its main thread runs a 50 ms timer, and how long a click on Pause takes to show on the page; one or
several versions of the code in one run.

    .venv/bin/python benchmarks/browser_responsiveness.py                        # this tree; table -> docs
    .venv/bin/python benchmarks/browser_responsiveness.py --code before=/tmp/before --code after=.
    .venv/bin/python benchmarks/browser_responsiveness.py --quick --no-write     # smoke test

Each scenario of each version is measured in its own process (versions alternate within a scenario, so
a change in the machine's load falls on all of them), started with that tree as its working folder and
first on PYTHONPATH (so `import studio` is that version's; the process checks it), by this script with
the hidden flag --measure, which prints one JSON line. Per scenario: one Session (paused, resumed once
the studio is up, as app.py does) with its ViserStudio, and one headless Chromium page (1280 x 800,
software WebGL on the same two cores the trainer uses) on it. Once the page shows the status line, the
counter has moved and a settle has passed, a window of `--window` seconds counts requestAnimationFrame
callbacks (page fps) and how late a setInterval(50 ms) fires (lag p95 / max), and sums the long tasks
(> 50 ms) the page reports; Python does not touch the page during the window (the probe's reset and
read-out are page calls, so the page's own window is longer when its main thread is slow to answer).
Then Pause is clicked as a user would: a mouse press and release dispatched to the browser (CDP
Input.dispatchMouseEvent) at the button's centre, found and scrolled to beforehand, timed from just
before the press (each dispatch returns once the page has handled it; a Selenium call that waits over
120 s fails, and the clock goes on): "server pause" is when the session's snapshot says paused, "page
pause" when the page's status line shows the paused iteration (polled every 0.1 s), capped at `--cap`
seconds. Scenarios: "default" is app.py's default
session (`default_config("sds")`: 64 px, batch 4, 2,000 Gaussians at start, densifying up to 20,000);
"50k" the same with 50,000 Gaussians at start and densification off. Both get a 100,000-step plan so
that the plan's end ("done" pauses the session) never falls inside a measurement; nothing else reads
the plan. "Main thread busy" is Chromium's own accounting (CDP Performance.getMetrics) of the page's
main thread over the window: all its tasks, of which JavaScript and style + layout. Without a GPU the
rest is mostly the frame's commit waiting for the GPU process to draw the WebGL canvas in SwiftShader
(GLES2::ReadPixels in a Chromium trace of 822f187: about 0.65 s a frame at 1280 x 800, 2,000 splats).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
RESULT_MARK = "BROWSER-RESPONSIVENESS-RESULT "
SCENARIOS = {
    "default": {},
    "50k": {"init.num": 50_000, "densify.enabled": False},
    "quick": {"render.resolution": 32, "render.batch": 2, "init.num": 100, "densify.enabled": False},
}
PLAN = 100_000  # steps: the plan's end pauses the session, so keep it out of reach

# Counters the page keeps from the moment it is injected; __bench_reset() zeroes them (window start).
PROBE_JS = """
if (!window.__bench) {
  const b = window.__bench = {frames: 0, gaps: [], lates: [], longtask: 0, longtasks: 0, t0: 0,
                              lastFrame: 0, expected: 0, observer: false};
  const frame = (t) => { if (b.lastFrame) b.gaps.push(t - b.lastFrame); b.lastFrame = t; b.frames++;
                         requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  setInterval(() => { const now = performance.now(); if (b.expected) b.lates.push(Math.max(0, now - b.expected));
                      b.expected = now + 50; }, 50);
  try {
    new PerformanceObserver((list) => { for (const e of list.getEntries()) { if (e.startTime >= b.t0) {
      b.longtask += e.duration; b.longtasks++; } } }).observe({type: 'longtask'});
    b.observer = true;
  } catch (e) { b.observer = false; }
}
window.__bench_reset = () => { const b = window.__bench; b.frames = 0; b.gaps = []; b.lates = []; b.longtask = 0;
  b.longtasks = 0; b.t0 = performance.now(); b.lastFrame = 0; b.expected = 0; };
window.__bench_reset();
return document.visibilityState;
"""
READ_JS = """
const b = window.__bench;
return {elapsed_ms: performance.now() - b.t0, frames: b.frames, gaps: b.gaps, lates: b.lates,
        longtask_ms: b.longtask, longtasks: b.longtasks, observer: b.observer};
"""
# The enabled button whose text is arguments[0], scrolled into view: its centre in CSS pixels, or null.
LOCATE_JS = """
const b = Array.from(document.querySelectorAll('button')).find(
  (e) => e.textContent.trim() === arguments[0] && !e.disabled);
if (!b) return null;
b.scrollIntoView({block: 'center'});
const r = b.getBoundingClientRect();
return [r.left + r.width / 2, r.top + r.height / 2];
"""
# Chromium's own main-thread accounting (CDP Performance.getMetrics, cumulative seconds).
CDP_TIMES = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
CDP_CLOCK = "Timestamp"  # when the page took the reading: the metrics' own denominator


# ----- the measuring process (imports the tree under test) --------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cdp_times(page: Any) -> dict[str, float]:
    metrics = page.driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return {m["name"]: m["value"] for m in metrics if m["name"] in CDP_TIMES + (CDP_CLOCK,)}


class PauseWatch:
    """A thread that notes (perf_counter) when the session's snapshot first says paused."""

    def __init__(self, session: Any):
        self.session, self.at, self.snapshot = session, None, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pause-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = self.session.snapshot
            if snap.paused:
                self.at, self.snapshot = time.perf_counter(), snap
                return
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


def click_to_pause(session: Any, page: Any, cap: float) -> dict[str, Any]:
    """Click Pause; seconds until the server pauses and until the page shows the paused iteration."""
    from selenium.common.exceptions import WebDriverException
    from urllib3.exceptions import HTTPError

    busy = (WebDriverException, HTTPError, TimeoutError)  # a page too busy to answer Selenium in time
    x, y = page.wait(lambda: page.driver.execute_script(LOCATE_JS, "Pause"), 180, "an enabled Pause button")
    mouse = {"x": x, "y": y, "button": "left", "clickCount": 1}
    page.driver.execute_cdp_cmd("Input.dispatchMouseEvent", {**mouse, "type": "mouseMoved", "button": "none"})
    watch = PauseWatch(session)
    t0 = time.perf_counter()
    click_error = None
    try:  # as a user clicks: each dispatch returns once the page has handled the event
        for kind in ("mousePressed", "mouseReleased"):
            page.driver.execute_cdp_cmd("Input.dispatchMouseEvent", {**mouse, "type": kind})
    except busy as e:  # the click may still land: the watch and the polling below decide
        click_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    clicked = time.perf_counter() - t0
    out: dict[str, Any] = {"click_call_s": clicked, "click_error": click_error, "server_pause_s": None,
                           "page_pause_s": None, "paused_iteration": None, "page_errors": 0}
    while watch.at is None and time.perf_counter() - t0 < cap:
        time.sleep(0.01)
    watch.close()
    if watch.at is None:
        return out
    out["server_pause_s"], out["paused_iteration"] = watch.at - t0, watch.snapshot.iteration
    shown = None
    while time.perf_counter() - t0 < cap:
        try:
            shown = page.status()
        except busy:  # Selenium's read timeout while the page's main thread is busy: ask again
            out["page_errors"] += 1
            shown = None
        if shown is not None and shown[0] == watch.snapshot.iteration:
            out["page_pause_s"] = time.perf_counter() - t0
            break
        time.sleep(0.1)
    out["page_iteration_last"] = shown[0] if shown else None
    return out


def measure_scenario(name: str, window: float, settle: float, cap: float) -> dict[str, Any]:
    import studio.commands as C
    from studio.config import default_config, with_values
    from studio.session import Session
    from studio.ui.headless import HeadlessBrowser
    from studio.ui.viser_ui import ViserStudio

    cfg = with_values(default_config("sds"), {"run.steps": PLAN, **SCENARIOS[name]})
    out: dict[str, Any] = {"scenario": name}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="browser-responsiveness-") as tmp:
        session = Session(cfg, Path(tmp), paused=True)
        viser_studio = ViserStudio(session, port=0).start()
        session.start()
        session.send(C.Resume())
        try:
            t_open = time.perf_counter()
            with HeadlessBrowser(viser_studio.url, 1280, 800) as page:
                first = page.wait(page.status, 180, "the status line")
                out["status_shown_s"] = time.perf_counter() - t_open
                page.wait(lambda: (s := page.status()) and s[0] > first[0], 180, "the iteration counter advancing")
                time.sleep(settle)
                out["visibility"] = page.driver.execute_script(PROBE_JS)
                page.driver.execute_cdp_cmd("Performance.enable", {})
                cdp0, snap0, t0 = cdp_times(page), session.snapshot, time.perf_counter()
                time.sleep(window)
                cdp1, snap1, t1 = cdp_times(page), session.snapshot, time.perf_counter()
                probe = page.driver.execute_script(READ_JS)
                out.update(window_figures(probe, cdp0, cdp1, snap0, snap1, t1 - t0))
                out.update(click_to_pause(session, page, cap))
        finally:
            viser_studio.stop()
            session.stop()
    out["scenario_s"] = time.perf_counter() - t_start
    return out


def window_figures(probe: dict, cdp0: dict, cdp1: dict, snap0: Any, snap1: Any, seconds: float) -> dict[str, Any]:
    page_s = probe["elapsed_ms"] / 1e3
    cdp_s = cdp1[CDP_CLOCK] - cdp0[CDP_CLOCK]
    return {
        "window_s": seconds, "page_window_s": page_s, "cdp_window_s": cdp_s,
        "gaussians_start": snap0.num_gaussians, "gaussians": snap1.num_gaussians,
        "iteration_start": snap0.iteration, "iteration_end": snap1.iteration,
        "its": (snap1.iteration - snap0.iteration) / seconds,
        "fps": probe["frames"] / page_s if page_s > 0 else float("nan"),
        "frame_gap_max_ms": max(probe["gaps"], default=float("nan")),
        "lag_p95_ms": percentile(probe["lates"], 0.95), "lag_max_ms": max(probe["lates"], default=float("nan")),
        "timer_ticks": len(probe["lates"]),
        "longtask_s": probe["longtask_ms"] / 1e3 if probe["observer"] else None,
        "longtasks": probe["longtasks"] if probe["observer"] else None,
        # share of the window the renderer's main thread was busy, and with what (Chromium's accounting)
        "main_thread": {k: (cdp1.get(k, 0.0) - cdp0.get(k, 0.0)) / cdp_s for k in CDP_TIMES},
    }


def measure(args: argparse.Namespace) -> int:
    """The --measure process: cwd and PYTHONPATH are the tree under test; one JSON line on stdout."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as app.py: before torch loads
    if sys.path and Path(sys.path[0]).resolve() == HERE.parent:
        sys.path.pop(0)  # this script's folder: benchmarks/common.py of the tree that holds the script
    import studio

    tree = Path.cwd().resolve()
    where = Path(studio.__file__).resolve()
    if tree not in where.parents:
        print(f"error: `import studio` found {where}, not the tree under test {tree}; "
              f"run with PYTHONPATH={tree}", file=sys.stderr)
        return 2
    results = []
    for name in args.scenario:
        print(f"[{tree}] {name}: measuring ...", file=sys.stderr, flush=True)
        res = measure_scenario(name, args.window, args.settle, args.cap)
        print(f"[{tree}] {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
        results.append(res)
    print(RESULT_MARK + json.dumps({"studio": str(where.parent), "scenarios": results}), flush=True)
    return 0


# ----- the driving process ------------------------------------------------------------------------------
def tree_version(tree: Path) -> str:
    """Short commit of the tree, '+ changes' when its work tree differs from it."""
    def git(*argv: str) -> str:
        proc = subprocess.run(["git", "-C", str(tree), *argv], check=False, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "not a git tree"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_one(label: str, tree: Path, scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    """One scenario of one version, in its own process: {"studio": its package folder, "scenarios": [...]}."""
    argv = [sys.executable, str(HERE), "--measure", "--window", str(args.window), "--settle", str(args.settle),
            "--cap", str(args.cap), "--scenario", scenario]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    timeout = 3 * args.cap + args.window + args.settle + 600  # page loads and Selenium calls at a crawl
    proc = subprocess.run(argv, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{label} ({tree}), {scenario}: the measuring process exited {proc.returncode} "
                           f"without a result; its stderr is above. stdout tail: {proc.stdout[-1000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def seconds(value: float | None, cap: float) -> str:
    return f"> {cap:.0f}" if value is None else f"{value:.1f}"


def busy_cell(busy: dict[str, float]) -> str:
    style_layout = busy["LayoutDuration"] + busy["RecalcStyleDuration"]
    return f"{100 * busy['TaskDuration']:.0f}% ({100 * busy['ScriptDuration']:.0f}% / {100 * style_layout:.0f}%)"


def table(runs: list[dict[str, Any]], cap: float) -> str:
    from common import markdown_table

    rows = []
    for run in runs:
        for r in run["scenarios"]:
            rows.append([run["label"], r["scenario"], f"{r['gaussians']:,}", f"{r['its']:.2f}", f"{r['fps']:.1f}",
                         f"{r['lag_p95_ms']:.0f} / {r['lag_max_ms']:.0f}",
                         "-" if r["longtask_s"] is None else f"{r['longtask_s']:.1f}",
                         busy_cell(r["main_thread"]),
                         seconds(r["page_pause_s"], cap), seconds(r["server_pause_s"], cap)])
    header = ["version", "scenario", "Gaussians", "it/s", "page fps", "lag p95 / max ms", "long tasks s",
              "main thread busy (script / style+layout)", "click-to-pause page s", "server pause s"]
    return markdown_table(header, rows, align_left=2)


def parse_code(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"--code wants LABEL=DIR (e.g. before=/tmp/before), got {text!r}")
    tree = Path(folder).expanduser().resolve()
    if not (tree / "studio" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"--code {text}: {tree} holds no studio package (studio/__init__.py)")
    return label, tree


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", action="append", type=parse_code, default=[], metavar="LABEL=DIR",
                   help="a version to measure: a tree holding the studio package (repeatable; default: this tree)")
    p.add_argument("--scenario", action="append", choices=tuple(SCENARIOS), default=None,
                   help="scenario(s) to run (repeatable; default: default and 50k, or quick with --quick)")
    p.add_argument("--window", type=float, default=15.0, help="seconds of fps / lag measurement")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the counter moves, before the window")
    p.add_argument("--cap", type=float, default=240.0, help="longest wait for the pause, seconds")
    p.add_argument("--quick", action="store_true", help="the small scenario, short windows (smoke test)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    p.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = build_parser().parse_args()
    if args.quick:
        args.window, args.settle, args.cap = min(args.window, 2.0), min(args.settle, 0.5), min(args.cap, 60.0)
    args.scenario = args.scenario or (["quick"] if args.quick else ["default", "50k"])
    if args.measure:
        return measure(args)

    from common import load_average, machine, write_section

    load = load_average()
    codes = args.code or [("current", HERE.parents[1])]
    runs = {label: {"label": label, "tree": str(tree), "version": tree_version(tree), "scenarios": []}
            for label, tree in codes}
    for scenario in args.scenario:  # versions alternate, so that a change in the machine's load hits all
        for label, tree in codes:
            print(f"measuring {label} ({tree}, {runs[label]['version']}): {scenario}", flush=True)
            result = run_one(label, tree, scenario, args)
            runs[label]["studio"] = result["studio"]
            runs[label]["scenarios"] += result["scenarios"]
    runs = list(runs.values())
    text = table(runs, args.cap)
    where = machine(load)
    print(text)
    print(f"machine: {where}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": where, "command": sys.argv, "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.json}")
    if not args.no_write:
        write_section("browser-responsiveness", doc_section(runs, args, where, text))
    return 0


def doc_section(runs: list[dict[str, Any]], args: argparse.Namespace, where: str, text: str) -> str:
    command = shlex.join([".venv/bin/python", "benchmarks/browser_responsiveness.py", *sys.argv[1:]])
    versions = "; ".join(f"{r['label']} = {r['version']}" for r in runs)
    about = __doc__.split("\n\n", 2)[2].strip()
    return "\n".join([
        "## Browser responsiveness while training", "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}; versions: {versions}) on {where}.", "",
        about, "",
        (f"Window {args.window:.0f} s after a {args.settle:.0f} s settle; pause capped at {args.cap:.0f} s. "
         "Gaussians at the window's end; it/s the session's over the window; long tasks: their total "
         "duration in the page's window."), "",
        text,
    ])


if __name__ == "__main__":
    raise SystemExit(main())
