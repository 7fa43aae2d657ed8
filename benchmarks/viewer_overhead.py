"""What the browser studio costs the training loop: it/s headless vs. with the viser front-end, and with
one connected browser (headless Chromium drawing the splats with software WebGL), same settings, one run.

    .venv/bin/python benchmarks/viewer_overhead.py              # table, written to docs/BENCHMARKS.md
    .venv/bin/python benchmarks/viewer_overhead.py --quick --no-write

One Session from the SDS preset (procedural prior, CPU renderer, 64 px, batch 4) trains in its worker
thread, as in the studio, with 10,000 Gaussians and densification off so that every step costs the
same. The ViserStudio and one Chromium stay up for the whole run, and windows of equal step counts
alternate between three modes (their order rotating every round): "headless": the studio's UI thread
pushes nothing and the browser shows about:blank (no websocket); "viser": the UI thread polls snapshots
at 10 Hz and pushes status, images, plots and splats (at most 2 Hz, only when changed) into the server
with no page open; "viser + browser": the same with the page open and drawing. The machine is shared
with other jobs whose load comes and goes, so the overhead is the median over rounds of each round's
ratio to its own headless window, and each window starts after a short settle. CPU columns are CPU
seconds per wall second over the windows (1.0 = one core busy): the studio's process (trainer, UI
thread, server) and the browser's process tree. The browser here has no GPU: Chromium draws the splats
with SwiftShader on the same two cores the trainer uses, and each scene update makes the page redraw
for a quarter second (plus viser's 1 Hz heartbeat frame), so that row is the worst case; with a GPU
(or the page on another machine) the browser's share leaves the training machine and the "viser" row
is what remains.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import load_average, machine, markdown_table, small_config, write_section

import studio.commands as C  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui.headless import HeadlessBrowser, find_chromium  # noqa: E402
from studio.ui.viser_ui import ViserStudio  # noqa: E402

MODES = ("headless", "viser", "viser + browser")
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(root_pid: int) -> dict[int, float]:
    """{pid: user + system CPU seconds} of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        pid = int(entry.name)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    out, todo = {}, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = (int(stats[pid][11]) + int(stats[pid][12])) / TICK  # utime, stime
        todo.extend(children.get(pid, []))
    return out


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree spent between two `tree_cpu` readings (processes that ended in between are
    not counted: /proc forgets them)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


class Bench:
    """One session, one studio, one browser; `window(mode)` switches mode, settles, times `steps` steps."""

    def __init__(self, out: Path, steps: int, settle: float):
        cfg = small_config("sds", {"run.steps": 100_000, "init.num": 10_000, "densify.enabled": False})
        self.steps, self.settle = steps, settle
        self.session = Session(cfg, out, paused=True, metrics_file=False)
        self.studio = ViserStudio(self.session, port=0).start()
        self.browser = HeadlessBrowser("about:blank", 1280, 800) if find_chromium() is not None else None
        self.page_open = False
        self.session.start()
        self.session.send(C.Resume())

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
        self.studio.stop()
        self.session.stop()

    def _show_page(self, show: bool) -> None:
        if self.browser is None or show == self.page_open:
            return
        if show:
            self.browser.driver.get(self.studio.url)
            self.browser.wait(self.browser.status, 60, "the status line")
        else:
            self.browser.driver.get("about:blank")
        self.page_open = show

    def window(self, mode: str) -> dict[str, float]:
        self.studio.set_updates(mode != "headless")
        self._show_page(mode == "viser + browser")
        time.sleep(self.settle)
        tr = self.session.trainer
        pid = self.browser.driver.service.process.pid if self.browser is not None else None
        cpu0, b0 = time.process_time(), tree_cpu(pid) if pid else {}
        sends0 = self.studio.scene.splat_sends
        t0, i0 = time.perf_counter(), tr.iteration
        while tr.iteration < i0 + self.steps:
            time.sleep(0.005)
        dt, di = time.perf_counter() - t0, tr.iteration - i0
        return {"its": di / dt, "cpu": (time.process_time() - cpu0) / dt,
                "browser_cpu": cpu_since(b0, tree_cpu(pid)) / dt if pid else float("nan"),
                "sends": (self.studio.scene.splat_sends - sends0) / dt}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30, help="steps per window")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = p.parse_args()
    rounds, warmup, steps, settle = (1, 2, 5, 0.5) if args.quick else (args.rounds, args.warmup, args.steps, 1.5)
    modes = MODES if find_chromium() is not None else MODES[:2]
    load = load_average()
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="viewer-overhead-") as tmp:
        bench = Bench(Path(tmp), steps, settle)
        try:
            while bench.session.trainer.iteration < warmup:
                time.sleep(0.01)
            for r in range(rounds):
                order = modes[r % len(modes):] + modes[:r % len(modes)]
                for mode in order:
                    res = bench.window(mode)
                    results[mode].append(res)
                    print(f"round {r + 1}/{rounds} {mode:>16}: {res['its']:.2f} it/s", flush=True)
        finally:
            bench.close()
    table = summary(results, modes)
    if "viser + browser" not in modes:
        table += "\n\n(chromium is not installed: the browser row was skipped)"
    print(table)
    print(f"machine: {machine(load)}")
    if not args.no_write:
        cmd = "benchmarks/viewer_overhead.py" + (" --quick" if args.quick else "")
        body = (f"## Viewer overhead\n\nCommand: `.venv/bin/python {cmd}` ({time.strftime('%Y-%m-%d')}): "
                f"{rounds} round(s), windows of {steps} steps. Machine: {machine(load)}.\n\n"
                + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + table)
        write_section("viewer", body)
    return 0


def summary(results: dict[str, list[dict[str, float]]], modes: tuple[str, ...]) -> str:
    base = results["headless"]
    rows = []
    for mode in modes:
        runs = results[mode]
        ratios = [r["its"] / b["its"] for r, b in zip(runs, base)]

        def med(key: str) -> str:
            value = statistics.median(r[key] for r in runs)
            return "-" if value != value or (mode == "headless" and key == "sends") else f"{value:.2f}"

        rows.append([mode, f"{statistics.median(r['its'] for r in runs):.2f}",
                     " / ".join(f"{r['its']:.1f}" for r in runs),
                     f"{100 * (statistics.median(ratios) - 1):+.1f}%",
                     " / ".join(f"{100 * (x - 1):+.0f}" for x in ratios),
                     med("cpu"), med("browser_cpu"), med("sends")])
    return markdown_table(["mode", "it/s (median)", "it/s per round", "vs headless (median)",
                           "per round, %", "studio CPU", "browser CPU", "splat sends/s"], rows)


if __name__ == "__main__":
    raise SystemExit(main())
