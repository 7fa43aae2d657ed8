"""The batch's jobs as Ray tasks: the cluster (a local Ray for this batch, or an existing one by address),
what each task asks for (one GPU where CUDA is present, else one CPU), retries, progress and outcomes.

Retries are Ray's: a task whose worker process dies (killed, out of memory, its node lost) is started
again up to `--retries` times, and the job resumes from its latest checkpoint. A job that fails on its own
terms (a bad prompt, a session that stopped on an error) returns a failed result and is not retried
(retry_exceptions=False): the same input would fail again. Ray is imported only here, and only once the
command line has been checked.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from .batch_job import DONE, read_result, record_failure, run_job, steps_in
from .cli_errors import UsageError, one_line
from .signals import StopSignals

PROBE_TIMEOUT_S = 5.0  # a head that does not answer within this is refused (Ray itself would wait minutes)
RAY_CLIENT_PORT = 10001
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}  # Ray asks nothing of the network for us


@dataclass
class BatchOutcome:
    """What the batch came to: every job's result (this run's, an earlier run's, or 'unfinished')."""

    results: list[dict[str, Any]]
    seconds: float
    ran: int  # jobs started in this run
    interrupted: bool = False
    resources: dict[str, float] = field(default_factory=dict)  # what each task asked for


def check_ray_address(text: str) -> str:
    """--address as Ray takes it: auto, ray://host[:port] or host:port, checked for form and, but for auto,
    for a server answering there within PROBE_TIMEOUT_S. UsageError says what to give instead."""
    text = text.strip()
    if text == "auto":
        return text
    usage = (f"--address {text!r}: give auto (the cluster this machine belongs to), ray://HEAD:{RAY_CLIENT_PORT} "
             f"(the Ray client) or HEAD:6379 (the head's address)")
    client = text.startswith("ray://")
    if "://" in text and not client:
        raise UsageError(usage)
    parts = urlsplit(text if client else f"//{text}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{usage}; the port must lie in [1, 65535]") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UsageError(usage)
    if port is None and not client:
        raise UsageError(f"{usage}; the port is missing")
    if port == 0:
        raise UsageError(f"{usage}; the port must lie in [1, 65535]")
    if client:
        try:
            import grpc  # noqa: F401 -- the Ray client's transport, in ray[client]
        except ImportError:
            raise UsageError(f"--address {text}: the Ray client needs its extra: pip install 'ray[client]' (the "
                             f"project's [cluster] extra), or give the head's HEAD:6379 from a cluster node") from None
    _probe(parts.hostname, port or RAY_CLIENT_PORT, text)
    return text


def _probe(host: str, port: int, address: str) -> None:
    """UsageError unless a TCP connection to host:port opens within PROBE_TIMEOUT_S (the name lookup
    included: it runs in a daemon thread, as glibc's resolver cannot be interrupted)."""
    found: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            found.append(None)
        except (OSError, UnicodeError) as e:
            found.append(e)

    thread = threading.Thread(target=connect, name="studio-ray-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1.0)
    why = "no answer" if not found else found[0]
    if why is not None:
        reason = getattr(why, "strerror", None) or str(why) or type(why).__name__
        raise UsageError(f"--address {address}: nothing answers at {host}:{port} ({reason}); start the head with "
                         f"`ray start --head` there, or check the address")


@contextmanager
def ray_cluster(address: str | None, workers: int) -> Iterator[Any]:
    """Ray, ready: joined at `address`, or a local instance with `workers` CPUs and no dashboard (shut
    down at the end). A Ray this process has already joined (a notebook, a test) is used as it is and left
    running. RAY_ADDRESS is ignored without --address: the default is a local Ray, not whatever that names."""
    for key, value in RAY_ENV.items():  # before Ray loads; an explicit setting wins
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        yield ray
        return
    try:
        if address is None:
            os.environ.pop("RAY_ADDRESS", None)
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as e:
        where = f"--address {address}" if address else "the local Ray"
        raise UsageError(f"{where}: Ray did not start: {one_line(str(e)) or type(e).__name__}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def task_resources(cluster: dict[str, float], cuda: bool) -> dict[str, float]:
    """One GPU per task where the jobs can use one (`cuda`: CUDA in this process, or a remote cluster) and
    the cluster has GPUs; else one CPU."""
    if cuda and cluster.get("GPU", 0) >= 1:
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1}


def run_batch(plan: Any, ray: Any) -> BatchOutcome:
    """Run every job of `plan` (a BatchPlan) that is not done yet on the joined cluster `ray`, with one
    progress bar for the batch; Ctrl-C / SIGTERM cancels the running jobs (their checkpoints stay)."""
    import torch
    from tqdm import tqdm

    t0 = time.perf_counter()
    resources = task_resources(ray.cluster_resources(), plan.address is not None or torch.cuda.is_available())
    task = ray.remote(run_job).options(max_retries=plan.retries, retry_exceptions=False, **resources)
    results: dict[str, dict[str, Any]] = {}
    pending: dict[Any, Any] = {}
    for job in plan.jobs:
        earlier = read_result(job.folder)
        if earlier is not None and earlier.get("status") == DONE:
            results[job.id] = {**earlier, "earlier": True}
        elif job.error is not None:
            results[job.id] = record_failure(job.spec(), job.error)
            print(_line(results[job.id]), file=sys.stderr)
        else:
            pending[task.remote({**job.spec(), "threads": int(resources["num_cpus"])})] = job
    ran = len(pending)
    bar = tqdm(total=len(plan.jobs), initial=len(results), unit="job", disable=not plan.progress,
               dynamic_ncols=True, file=sys.stderr, desc="batch")
    failures = sum(r["status"] != DONE for r in results.values())
    bar.set_postfix(failed=failures)
    interrupted = False
    with StopSignals() as stop:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if stop.is_set():
                interrupted = True
                break
            for ref in ready:
                job = pending.pop(ref)
                result = _outcome(ray, ref, job, plan.retries)
                results[job.id] = result
                failures += result["status"] != DONE
                bar.write(_line(result), file=sys.stderr)
                bar.update(1)
                bar.set_postfix(failed=failures)
    for ref in pending:  # interrupted: the workers stop; each job's checkpoint is where a re-run resumes
        ray.cancel(ref, force=True)
    bar.close()
    if interrupted:
        print(f"interrupted: {len(pending)} jobs stopped; the same command resumes each from its latest "
              f"checkpoint", file=sys.stderr)
    ordered = [results.get(job.id) or _unfinished(job) for job in plan.jobs]
    return BatchOutcome(ordered, time.perf_counter() - t0, ran, interrupted, resources)


def _unfinished(job: Any) -> dict[str, Any]:
    return {"id": job.id, "prompt": job.prompt, "seed": job.seed, "status": "unfinished", "steps": steps_in(job.folder),
            "error": "interrupted; run the same command again to resume it", "exports": []}


def _outcome(ray: Any, ref: Any, job: Any, retries: int) -> dict[str, Any]:
    """A finished task's result; a task that raised (a bug: its traceback goes to the job's error.log) or
    whose worker died more than `retries` times is a failed result with its one-line reason."""
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = e.cause if isinstance(e.cause, BaseException) else e
        _write_log(job.folder, str(e))
        return record_failure(job.spec(), f"{type(cause).__name__}: {cause} (traceback in error.log)")
    except RayError as e:
        _write_log(job.folder, str(e))
        starts = f"{retries + 1} start{'s' if retries else ''}"
        return record_failure(job.spec(), f"its worker was lost on each of its {starts} ({type(e).__name__}: "
                                          f"{one_line(str(e))[:200]}); run the batch again to resume it")


def _write_log(folder: Path, text: str) -> None:
    """The job's error.log: Ray's report of the failure (the task's traceback), without terminal colours."""
    from .atomic import write_text_atomic

    try:
        write_text_atomic(folder / "error.log", re.sub(r"\x1b\[[0-9;]*m", "", text) + "\n")
    except OSError as e:
        print(f"warning: {folder / 'error.log'} could not be written: {e}", file=sys.stderr)


def _line(result: dict[str, Any]) -> str:
    """One line per finished job, above the bar."""
    head = f"{result['status']}: {result['prompt']!r} seed {result['seed']}"
    if result["status"] != DONE:
        return f"{head}: {result.get('error')}"
    psnr = f", psnr_ref {result['psnr_ref']:.2f} dB" if result.get("psnr_ref") is not None else ""
    return f"{head}: {result['steps']} steps{psnr}, {result.get('seconds', 0):.1f} s"
