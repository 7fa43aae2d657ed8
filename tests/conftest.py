"""Shared pytest set-up.

- Tests marked `gpu` are skipped, with the reason, on machines without CUDA.
- OpenMP threads wait passively: libgomp (loaded by torch, and used by numba's "omp" threading layer for
  the CPU rasterizer) spin-waits at every barrier by default, and on a busy 2-core machine the spinning
  threads starve the working ones (a 10 ms render measured 100 ms). libgomp reads the variable once, when
  torch loads it, so it is set before `import torch`; an explicit setting in the environment wins.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device and torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
