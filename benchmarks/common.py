"""Shared helpers of the benchmark scripts: machine description, medians, tables, marked doc sections,
the prior wrapper that times and counts calls, and the small-config factory the studies share.

The scripts run as files (`python benchmarks/<name>.py`), so this module is imported as `common` from
the benchmarks folder; importing it also sets OMP_WAIT_POLICY before torch loads (see render.py).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# OpenMP spin-waits at barriers by default, which starves the working threads on a busy machine; it reads
# this once, when torch loads it. See tests/conftest.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import torch  # noqa: E402

DOCS = ROOT / "docs" / "BENCHMARKS.md"
TIMED_PRIOR_METHODS = ("encode", "view_cond", "predict_noise", "estimate_disparity", "estimate_depth")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def machine(load: str) -> str:
    """CPU model, cores, the load when the run started, versions and thread counts (call after a render)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    cuda = (f"CUDA device: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
            else "no CUDA device (none was lent to this run)")
    return (f"{model}, {os.cpu_count()} cores (load average at start: {load}); {cuda}; Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), numba "
            f"{numba.__version__} ({numba.get_num_threads()} threads, {numba.threading_layer()} threading layer), "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")


def median_ms(fn: Callable[[], Any], warmup: int, repeats: int) -> float:
    """Median wall time of fn() in ms over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align_left: int = 1) -> str:
    """A GitHub table; the first `align_left` columns left-aligned, the rest right-aligned."""
    rule = ["---" if i < align_left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(tag: str, body: str, path: Path = DOCS) -> None:
    """Replace the text between `<!-- tag:begin -->` and `<!-- tag:end -->` (append the pair if absent)."""
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    section = f"{begin}\n{body}\n{end}"
    intro = "# Benchmarks\n\nMeasured tables; each section names the command that produced it.\n"
    text = path.read_text() if path.exists() else intro
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class TimedPrior:
    """Wraps a prior: the calls in TIMED_PRIOR_METHODS add their wall time (s, by `clock`) and count to
    `seconds` and `calls`; every other attribute passes through, so estimators and the trainer see the
    same prior. On CUDA pass a clock that synchronizes first (cuda_clock), or the GPU's work lands in
    whichever stage happens to wait for it."""

    def __init__(self, prior: Any, clock: Callable[[], float] = time.perf_counter):
        object.__setattr__(self, "_prior", prior)
        object.__setattr__(self, "_clock", clock)
        object.__setattr__(self, "seconds", defaultdict(float))
        object.__setattr__(self, "calls", defaultdict(int))

    def reset_counters(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._prior, name)
        if name not in TIMED_PRIOR_METHODS:
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self._clock()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds[name] += self._clock() - start
                self.calls[name] += 1

        return timed


def cuda_clock() -> float:
    """perf_counter after the GPU's queue has drained: stage boundaries then split GPU time correctly."""
    torch.cuda.synchronize()
    return time.perf_counter()


def small_config(method: str, values: dict[str, Any]) -> Any:
    """default_config(method) with the dotted `values` applied (validated)."""
    from studio.config import default_config, with_values

    return with_values(default_config(method), values)
