"""One job of a batch: a headless session for one (prompt, seed) in its own folder, as a Ray task runs it.

Nothing here imports Ray: `run_job(spec)` is a plain function (the driver, studio/batch.py, wraps it in
`ray.remote`), so a job runs the same in a test, a worker process or a cluster node.

A job folder holds everything the job is:

    job.json        what to run: prompt, seed, the full config, exports (the driver writes it)
    worker.json     the attempt running it now or last: pid, host, attempt number, start time
    metrics.jsonl   every step's scalars; each start of the job (a retry, a re-run) is a new segment
    checkpoint_*.pt the latest periodic checkpoint (run.checkpoint_every) that a retry resumes from
    <stem>.gif ...  the exports, each with its config beside it (<stem>.gif.json)
    result.json     the outcome: done (steps, psnr_ref, loss, exports; seconds: this start's wall time,
                    train_seconds: the training time of all starts) or failed (its one-line error)
    error.log       a task that raised (a bug): Ray's report with its traceback

Every file is written atomically (studio/atomic.py), so a worker killed at any moment leaves either the
old file or the new one. A job whose result.json says "done" is finished: running it again returns that
result at once (a task retried after it had finished, a re-run of the batch).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from guidance.priors.base import PriorError

from .atomic import write_json_atomic
from .cli_errors import USAGE_ERRORS, one_line
from .commands import CommandError

JOB_FILE, WORKER_FILE, RESULT_FILE = "job.json", "worker.json", "result.json"
DONE, FAILED = "done", "failed"


class JobFailed(RuntimeError):
    """A job's session stopped on an error (its event says what); the job fails with that message."""


# What fails a job alone with its message: bad input for this job (the message names the field or file),
# a session that stopped on an error, and (OSError) a file that could not be read or written. Anything
# else is a bug and keeps its traceback: the task raises and the driver records it.
INPUT_ERRORS = (*USAGE_ERRORS, PriorError, CommandError, JobFailed)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if it is missing or not one (a folder from an older layout)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_result(folder: Path) -> dict[str, Any] | None:
    return read_json(folder / RESULT_FILE)


def is_done(folder: Path) -> bool:
    result = read_result(folder)
    return result is not None and result.get("status") == DONE


def failed_result(spec: dict[str, Any], error: str) -> dict[str, Any]:
    """The result of a job that failed, with its one-line message and the steps its metrics reached."""
    folder = Path(spec["folder"])
    return {"id": spec["id"], "prompt": spec["prompt"], "seed": spec["seed"], "status": FAILED,
            "error": one_line(error) or "failed", "steps": steps_in(folder), "seconds": 0.0,
            "attempts": _attempt_of(folder), "exports": []}


def record_failure(spec: dict[str, Any], error: str) -> dict[str, Any]:
    """Write and return a failed result for a job that never ran, or whose task failed (the driver)."""
    result = failed_result(spec, error)
    write_json_atomic(Path(spec["folder"]) / RESULT_FILE, result)
    return result


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one job to its plan in `spec["folder"]`, from its latest checkpoint if it has one.

    Args:
        spec: {"id", "prompt", "seed", "folder", "config" (a config dict), "user_set" (paths),
               "exports" (formats), and optionally "threads" (the CPUs the task reserved: torch's and
               numba's thread count, so jobs side by side do not contend for cores)}, as
               `studio.batch.Job.spec` builds it
    Returns:
        the job's result (also written to result.json): status "done" or "failed" with its message.
        Bad input for this job (a prompt the prior cannot use, settings it refuses, a file it cannot
        write) is a failed result; anything else is a bug and raises (the driver records it).
    """
    folder = Path(spec["folder"])
    previous = read_result(folder)
    if previous is not None and previous.get("status") == DONE:
        return previous
    attempt = _attempt_of(folder) + 1
    write_json_atomic(folder / WORKER_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt,
                                             "started": time.time()})
    if spec.get("threads"):
        _use_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    try:
        result = _train(spec, folder)
    except INPUT_ERRORS as e:
        result = failed_result(spec, str(e))
    except OSError as e:
        result = failed_result(spec, f"{type(e).__name__}: {e}")
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["attempts"] = attempt
    write_json_atomic(folder / RESULT_FILE, result)
    return result


def _train(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    from . import config as cfgmod
    from .run import resume_from
    from .session import Session
    from .startup import latest_checkpoint

    cfg = cfgmod.from_json(spec["config"])
    checkpoint = latest_checkpoint(folder) if any(folder.glob("*.pt")) else None
    session = Session(cfg, folder, user_set=spec.get("user_set", ()))
    if checkpoint is not None:
        resume_from(session, checkpoint, cfg)
    resumed_at = session.trainer.iteration
    session.run_steps(max(0, cfg.run.steps - session.trainer.iteration))
    if session.last_error:
        session.save_if_due()  # the last good scene: a re-run resumes from it
        raise JobFailed(f"step {session.trainer.iteration}: {session.last_error}")
    score = session.trainer.score()
    exports = session.export_now(tuple(spec["exports"])) if spec["exports"] else []
    if "checkpoint" in spec["exports"]:  # the exported one holds the final scene: the periodic ones are spent
        for periodic in folder.glob("checkpoint_*.pt"):
            periodic.unlink(missing_ok=True)
    latest = session.snapshot.latest
    return {
        "id": spec["id"], "prompt": spec["prompt"], "seed": spec["seed"], "status": DONE, "error": None,
        "steps": session.trainer.iteration, "resumed_at": resumed_at,
        "psnr_ref": round(float(score.psnr), 3) if score is not None else None,
        "ref_mode": score.mode_name if score is not None else None,
        "loss": float(latest["loss"]) if "loss" in latest else None,
        "train_seconds": round(session.snapshot.elapsed, 3), "gaussians": session.trainer.scene.num_gaussians,
        "exports": [p.name for p in exports],
    }


def _use_threads(n: int) -> None:
    import numba
    import torch

    torch.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _attempt_of(folder: Path) -> int:
    worker = read_json(folder / WORKER_FILE)
    attempt = worker.get("attempt") if worker else 0
    return attempt if isinstance(attempt, int) and attempt >= 0 else 0


def steps_in(folder: Path) -> int:
    """The highest step in the folder's metrics.jsonl (0 if none); a line cut by a kill is skipped."""
    best = 0
    try:
        with open(folder / "metrics.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    best = max(best, int(json.loads(line).get("step", 0)))
                except (ValueError, TypeError, AttributeError):
                    continue
    except OSError:
        return 0
    return best
