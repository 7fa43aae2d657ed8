"""Batches on Ray against plain headless runs: jobs per hour with 1 and 2 workers on this machine, and
what the batch costs beyond running the same jobs one after another with `app.py --ui headless`.

    .venv/bin/python benchmarks/batch.py                 # table + docs/BENCHMARKS.md section "batch"
    .venv/bin/python benchmarks/batch.py --quick --no-write

Every configuration runs the same jobs (prompts x seeds, the same settings, the same exports: gif, ply,
checkpoint) into a fresh folder, as a user would type it, each command a subprocess timed from start to
exit: "plain headless" is one `app.py --ui headless` per job in sequence (each process imports torch and
builds its prior anew), once with the default threads and once with one thread (what a batch task with
one CPU gets); "batch, N workers" is one `app.py batch --workers N` (a local Ray with N CPUs, started and
shut down inside the command). The jobs' own phase of a batch is summary.json's `seconds` (from the first
task submitted to the last result); the rest of its wall time is Ray's start and stop and the imports.
Rounds alternate the configurations; the table holds each one's median wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, load_average, machine, markdown_table, write_section

PROMPTS = ("a red cube", "a sphere", "a torus", "a mushroom")


def job_sets(args: argparse.Namespace) -> list[str]:
    values = {"render.resolution": args.resolution, "render.batch": 2, "init.num": 1000, "densify.enabled": "false",
              "run.psnr_every": 0, "run.view_psnr_every": 0, "run.checkpoint_every": args.checkpoint_every}
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return seconds


def plain(args: argparse.Namespace, prompts: list[str], threads: int | None) -> tuple[float, None]:
    env = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"} if threads == 1 else None
    total = 0.0
    with tempfile.TemporaryDirectory() as out:
        for prompt in prompts:
            for seed in range(args.seeds):
                total += timed([sys.executable, "app.py", "--ui", "headless", "--prompt", prompt, "--seed", str(seed),
                                "--steps", str(args.steps), *job_sets(args), "--export", "gif,ply,checkpoint",
                                "--out", out, "--no-progress"], env)
    return total, None


def batch(args: argparse.Namespace, prompts: list[str], workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        lines = Path(out) / "prompts.txt"
        lines.write_text("\n".join(prompts) + "\n")
        wall = timed([sys.executable, "app.py", "batch", str(lines), "--out", str(Path(out) / "batch"),
                      "--seeds", str(args.seeds), "--workers", str(workers), "--steps", str(args.steps),
                      *job_sets(args), "--no-progress"])
        summary = json.loads((Path(out) / "batch" / "summary.json").read_text())
        assert all(j["status"] == "done" for j in summary["jobs"]), summary["summary"]
        return wall, summary["seconds"]


STEP_LOOP = """
import os, sys, tempfile, time
sys.path.insert(0, os.getcwd())
from studio import config as cfgmod
from studio.session import Session
cfg = cfgmod.with_values(cfgmod.default_config(), {"render.resolution": %d, "render.batch": 2, "init.num": 1000,
    "densify.enabled": False, "run.psnr_every": 0, "run.view_psnr_every": 0, "run.steps": 200})
s = Session(cfg, tempfile.mkdtemp())
s.run_steps(20)
t = time.perf_counter()
s.run_steps(100)
print((time.perf_counter() - t) * 10)
"""


def free_cores(resolution: int) -> tuple[float, float]:
    """ms per step of one 1-thread step loop alone, and the mean of two side by side: how much of a second
    core this shared machine had free just then (equal: a whole one; twice: none)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", STEP_LOOP % resolution]

    def ms(n: int) -> float:
        procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)]
        return statistics.mean(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)

    return ms(1), ms(2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4, help="prompts (of PROMPTS), default 4")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt, default 2")
    ap.add_argument("--steps", type=int, default=150, help="steps per job, default 150")
    ap.add_argument("--resolution", type=int, default=32, help="training resolution, default 32")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="run.checkpoint_every of every job, default 50")
    ap.add_argument("--rounds", type=int, default=2, help="rounds over the configurations, default 2")
    ap.add_argument("--quick", action="store_true", help="2 jobs of 20 steps, one round (smoke test)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.seeds, args.steps, args.rounds, args.resolution = 2, 1, 20, 1, 16
    prompts = list(PROMPTS[: args.prompts])
    jobs = len(prompts) * args.seeds
    load = load_average()
    configs = {
        "plain headless, in sequence": lambda: plain(args, prompts, None),
        "plain headless, in sequence, 1 thread": lambda: plain(args, prompts, 1),
        "batch, 1 worker": lambda: batch(args, prompts, 1),
        "batch, 2 workers": lambda: batch(args, prompts, 2),
    }
    cores = [free_cores(args.resolution)]
    walls: dict[str, list[float]] = {name: [] for name in configs}
    phases: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(args.rounds):
        names = list(configs)[r % len(configs):] + list(configs)[: r % len(configs)]
        for name in names:
            wall, phase = configs[name]()
            walls[name].append(wall)
            if phase is not None:
                phases[name].append(phase)
            print(f"round {r + 1}: {name}: {wall:.1f} s", flush=True)
    cores.append(free_cores(args.resolution))
    control = ("A control for the shared machine: one 1-thread step loop of these jobs alone, then two side by "
               "side (how much of a second core was free), before the rounds: " + "; after them: ".join(
                   f"{alone:.0f} ms/step alone, {pair:.0f} ms/step each as a pair" for alone, pair in cores) + ".")
    base = statistics.median(walls["plain headless, in sequence"])
    rows = []
    for name in configs:
        wall = statistics.median(walls[name])
        phase = f"{statistics.median(phases[name]):.1f}" if phases[name] else "-"
        rows.append([name, f"{wall:.1f}", " / ".join(f"{w:.1f}" for w in walls[name]), phase, f"{wall / jobs:.1f}",
                     f"{jobs * 3600 / wall:.0f}", f"{100 * (wall / base - 1):+.0f}%"])
    header = ["configuration", "wall s (median)", "wall s per round", "jobs phase s", "s per job", "jobs / hour",
              "vs plain in sequence"]
    table = markdown_table(header, rows)
    from studio.session import Session  # a step first: numba's threading layer is known only after a render
    from studio import config as cfgmod

    cfg = cfgmod.with_values(cfgmod.default_config(), {"render.resolution": 16, "render.batch": 1, "init.num": 100})
    Session(cfg, metrics_file=False).run_steps(1)
    where = machine(load)
    reading = reading_of(walls, phases, jobs)
    print(f"machine: {where}")
    print(table)
    print(reading)
    print(control)
    if not args.no_write:
        write_section("batch", "\n".join([
            "## Batches on Ray",
            "",
            f"Command: `.venv/bin/python benchmarks/batch.py` ({time.strftime('%Y-%m-%d')}): {jobs} jobs "
            f"({len(prompts)} prompts x {args.seeds} seeds), each {args.steps} steps at {args.resolution} px, batch 2, "
            f"1,000 Gaussians, densification off, a checkpoint every {args.checkpoint_every} steps, exports gif, ply "
            f"and checkpoint; {args.rounds} round(s). Machine: {where}.",
            "",
            "Each configuration is one command timed from start to exit, into a fresh folder. Plain headless: one",
            "`app.py --ui headless` per job in sequence (default threads, then OMP/NUMBA_NUM_THREADS=1). Batch: one",
            "`app.py batch --workers N` (a local Ray with N CPUs, one CPU and one thread per job); its jobs phase is",
            "summary.json's `seconds`, from the first task submitted to the last result, and the rest of its wall",
            "time is imports, Ray's start and shutdown and the summary.",
            "",
            table,
            "",
            reading,
            "",
            control,
        ]))
    return 0


def reading_of(walls: dict[str, list[float]], phases: dict[str, list[float]], jobs: int) -> str:
    """The figures the table implies, in words (medians)."""
    med = {name: statistics.median(v) for name, v in walls.items()}
    phase = {name: statistics.median(v) for name, v in phases.items() if v}
    one, two, plain_ = "batch, 1 worker", "batch, 2 workers", "plain headless, in sequence"
    return (f"Reading: the batch's fixed cost (wall time beyond its jobs phase: imports, Ray's start and shutdown, "
            f"the summary) was {med[one] - phase[one]:.0f} s with 1 worker and {med[two] - phase[two]:.0f} s with 2. "
            f"Its jobs phase took {phase[one] / jobs:.1f} s per job against {med[plain_] / jobs:.1f} s per plain "
            f"headless run, which starts a process, imports torch and builds its prior for every job, where a Ray "
            f"worker does that once and then runs job after job. 2 workers made {jobs * 3600 / med[two]:.0f} jobs "
            f"per hour against {jobs * 3600 / med[one]:.0f} with 1 (x{med[one] / med[two]:.2f}); the machine has "
            f"two cores and shares them with other work (see the load average and the control below), so a second "
            f"worker has at most one more core to use.")


if __name__ == "__main__":
    raise SystemExit(main())
