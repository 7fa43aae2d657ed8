"""`python app.py batch PROMPTS.txt --out DIR`: one headless session per (prompt, seed), each a Ray task.

The plan is made and checked here, before Ray starts: the prompts file, the settings every job shares
(preset <- --config <- flags <- --set, as for a single run), the seeds, the exports, the address. Bad
input for the whole batch is one `error:` line and exit status 2. A job whose own settings are refused
(a seed past run.seed's range) fails alone, with its message in the summary; so does a prompt the prior
cannot use (found by the job, when its session starts).

Each job has a folder named for what it trains, `<slug>-s<seed>-<hash>` (the hash of prompt, seed and
the shared settings), so the same command finds the same folders again: a job whose result.json says
done is skipped, any other resumes from its latest checkpoint (studio/batch_job.py). studio/batch_ray.py
runs the jobs; studio/batch_report.py writes summary.json, summary.md and gallery.html.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as cfgmod
from .atomic import write_json_atomic
from .cli_errors import USAGE_ERRORS, Parser, UsageError, report
from .commands import EXPORT_FORMATS
from .confio import ConfigError

DEFAULT_EXPORTS = "gif,ply,checkpoint"
BATCH_DEFAULTS = {"run.checkpoint_every": 100}  # what a batch job sets unless the user does
PROMPTS_MAX_BYTES = 16 << 20
MAX_SEEDS = 1000


@dataclass(frozen=True)
class Job:
    """One (prompt, seed): its folder, and either its config or why it cannot run."""

    id: str
    prompt: str
    seed: int
    folder: Path
    config: dict[str, Any] | None  # the job's whole config (confio.to_dict); None when refused
    error: str | None  # why its settings were refused; None when it can run
    user_set: tuple[str, ...]
    exports: tuple[str, ...]

    def spec(self) -> dict[str, Any]:
        """What the Ray task gets (plain JSON values: it travels to other machines), as job.json holds it."""
        return {"id": self.id, "prompt": self.prompt, "seed": self.seed, "folder": str(self.folder),
                "config": self.config, "error": self.error, "user_set": list(self.user_set),
                "exports": list(self.exports)}


@dataclass(frozen=True)
class BatchPlan:
    jobs: tuple[Job, ...]
    out: Path
    address: str | None  # None: a local Ray started for this batch
    workers: int  # the local Ray's CPUs (ignored with an address)
    retries: int  # how often a job whose worker dies is started again
    progress: bool


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="app.py batch", description="Many prompts x seeds as headless runs on Ray: one job per "
               "(prompt, seed), one GPU each where CUDA is present, else one CPU. Re-running the same command "
               "skips finished jobs and resumes the others from their checkpoints.")
    p.add_argument("prompts", type=Path, help="a UTF-8 text file: one prompt per line (blank lines and lines "
                   "starting with # are skipped)")
    p.add_argument("--out", type=Path, required=True, help="the batch folder: one folder per job, the summary "
                   "(summary.json, summary.md) and gallery.html")
    p.add_argument("--seeds", type=int, default=1, help=f"seeds per prompt, 1..{MAX_SEEDS} (default 1): run.seed, "
                   "run.seed + 1, ...")
    p.add_argument("--method", choices=cfgmod.METHODS, help="gradient estimator (default: the preset's)")
    p.add_argument("--preset", help=f"settings preset: {', '.join(cfgmod.preset_names())}")
    p.add_argument("--config", type=Path, help="a JSON config file (as written next to every export)")
    p.add_argument("--model", help="'procedural' (built in, offline) or a Stable Diffusion hub id / folder")
    p.add_argument("--steps", type=int, help="optimization steps of every job")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field for every job, e.g. --set ism.delta_t=80 (repeatable); batch jobs "
                   f"default to {', '.join(f'{k}={v}' for k, v in BATCH_DEFAULTS.items())}")
    p.add_argument("--export", default=DEFAULT_EXPORTS, help=f"formats each job writes at its end: "
                   f"{','.join(EXPORT_FORMATS)} (default: {DEFAULT_EXPORTS}; the gallery shows the gif)")
    p.add_argument("--address", help="an existing Ray cluster: auto (the one this machine is part of), "
                   "ray://HEAD:10001 (Ray client) or HEAD:6379; its nodes need this project installed and --out "
                   "on a file system they share. Default: a local Ray for this batch")
    p.add_argument("--workers", type=int, help="CPUs of the local Ray, i.e. jobs at once without CUDA "
                   "(default: this machine's CPU count)")
    p.add_argument("--retries", type=int, default=3, help="starts again of a job whose worker dies (default 3); "
                   "each resumes from the job's latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def read_prompts(path: Path) -> list[tuple[int, str]]:
    """(line number, prompt) of every prompt in the file; UsageError if it is missing, not a regular
    file, too large, not UTF-8 or holds no prompt."""
    where = f"prompts file {path}"
    if not path.exists():
        raise UsageError(f"{where}: no such file")
    if not path.is_file():
        raise UsageError(f"{where}: not a regular file; give a text file with one prompt per line")
    try:
        if path.stat().st_size > PROMPTS_MAX_BYTES:
            raise UsageError(f"{where}: larger than {PROMPTS_MAX_BYTES >> 20} MiB; give one prompt per line")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{where}: not UTF-8 text (byte {e.start}); give one prompt per line") from None
    prompts = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
               if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"{where}: holds no prompt (blank lines and # comments are skipped); write one per line")
    return prompts


def shared_settings(args: argparse.Namespace) -> tuple[cfgmod.StudioConfig, set[str]]:
    """The settings every job starts from, built as for one run (studio/cli.py), with the batch defaults
    under the user's values; ConfigError / UsageError name a bad one."""
    from .cli import settings_from_args

    views = [s for s in args.sets if s.split("=", 1)[0].strip().startswith("view.")]
    if views:
        raise UsageError(f"--set {views[0]}: viewer settings (view.*) have no meaning in a batch; leave them out")
    one_run = argparse.Namespace(resume=None, preset=args.preset, method=args.method, config=args.config,
                                 prompt=None, negative=None, model=args.model, renderer=None, steps=args.steps,
                                 resolution=None, batch=None, seed=None, sets=args.sets)
    cfg, user_set = settings_from_args(one_run)
    defaults = {k: v for k, v in BATCH_DEFAULTS.items() if k not in user_set}
    return cfgmod.with_values(cfg, defaults), user_set


def job_id(prompt: str, seed: int, shared: dict[str, Any]) -> str:
    """`<slug>-s<seed>-<hash>`: stable for the same prompt, seed and shared settings."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", prompt).strip("-").lower()[:40] or "prompt"
    key = json.dumps({"prompt": prompt, "seed": seed, "settings": shared}, sort_keys=True)
    return f"{slug}-s{seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def make_jobs(prompts: list[tuple[int, str]], seeds: int, shared: cfgmod.StudioConfig, user_set: set[str],
              exports: tuple[str, ...], out: Path) -> list[Job]:
    """Every (prompt, seed) once, in file order; a repeated prompt runs once (with a warning)."""
    shared_dict = cfgmod.confio.to_dict(shared)
    user = tuple(sorted(user_set | {"prompt.prompt", "run.seed"}))
    jobs: dict[str, Job] = {}
    first_line: dict[str, int] = {}
    for line, prompt in prompts:
        if prompt in first_line:
            print(f"warning: line {line} repeats the prompt of line {first_line[prompt]}; it runs once",
                  file=sys.stderr)
            continue
        first_line[prompt] = line
        for k in range(seeds):
            seed = shared.run.seed + k
            jid = job_id(prompt, seed, shared_dict)
            try:
                config = cfgmod.confio.to_dict(cfgmod.with_values(shared, {"prompt.prompt": prompt, "run.seed": seed}))
                error = None
            except ConfigError as e:
                config, error = None, f"line {line}: {e}"
            jobs[jid] = Job(jid, prompt, seed, out / jid, config, error, user, exports)
    return list(jobs.values())


def plan_from_args(argv: list[str]) -> BatchPlan:
    """Parse and check everything (UsageError / ConfigError for bad input), before Ray starts."""
    from .batch_ray import check_ray_address
    from .cli import parse_exports
    from .startup import check_device, check_init_mesh, check_init_ply

    args = build_parser().parse_args(argv)
    prompts = read_prompts(args.prompts)
    if not 1 <= args.seeds <= MAX_SEEDS:
        raise UsageError(f"--seeds: must lie in [1, {MAX_SEEDS}], got {args.seeds}")
    if not 0 <= args.retries <= 100:
        raise UsageError(f"--retries: must lie in [0, 100], got {args.retries}")
    if args.address is not None and args.workers is not None:
        raise UsageError("--workers: sets the CPUs of the local Ray; a cluster (--address) has its own, leave it out")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if not 1 <= workers <= 4096:
        raise UsageError(f"--workers: must lie in [1, 4096], got {workers}")
    address = check_ray_address(args.address) if args.address is not None else None
    shared, user_set = shared_settings(args)
    exports = parse_exports(args.export)
    if address is None:  # jobs run on this machine: what it cannot run is refused now, as for one run
        if shared.init.kind == "ply":
            check_init_ply(shared.init.path)
        if shared.init.kind == "mesh":
            check_init_mesh(shared.init.path)
        check_device(shared)
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: not a folder")
    jobs = make_jobs(prompts, args.seeds, shared, user_set, exports, args.out)
    return BatchPlan(tuple(jobs), args.out, address, workers, args.retries, not args.no_progress)


def write_plan(plan: BatchPlan, argv: list[str]) -> None:
    """The batch folder, batch.json (the command and its jobs) and every job's job.json; UsageError if
    --out cannot be written. Finished jobs' folders are left as they are."""
    from .batch_job import JOB_FILE, is_done

    try:
        plan.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(plan.out / "batch.json", {"argv": argv, "started": time.time(),
                                                    "jobs": [job.id for job in plan.jobs]})
        for job in plan.jobs:
            if not is_done(job.folder):
                write_json_atomic(job.folder / JOB_FILE, job.spec())
    except OSError as e:
        raise UsageError(f"--out {plan.out}: cannot write there: {getattr(e, 'reason', None) or e.strerror or e}") \
            from None


def main(argv: list[str]) -> int:
    """`app.py batch ...`: 0 when every job is done, 1 when one failed, 130 when interrupted, 2 for bad input."""
    try:
        plan = plan_from_args(argv)
        from .batch_ray import ray_cluster, run_batch
        from .batch_report import print_summary, write_summary

        with ray_cluster(plan.address, plan.workers) as cluster:  # a cluster that cannot be joined: no folders
            write_plan(plan, argv)
            outcome = run_batch(plan, cluster)
    except USAGE_ERRORS as e:
        return report(e)
    paths = write_summary(plan.out, outcome)
    print_summary(outcome, paths)
    if outcome.interrupted:
        return 130
    return 1 if any(r["status"] != "done" for r in outcome.results) else 0
