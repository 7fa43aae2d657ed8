"""Host-to-device copies that do not stall the host.

A plain `.to("cuda")` of a tensor in pageable host memory waits for the GPU's queue to drain before it
copies, so a training step that sends its cameras or timesteps up mid-step stops the CPU from running
ahead of the GPU. Copies from pinned memory with non_blocking=True are queued like kernels instead;
PyTorch's pinned-memory allocator keeps the staging buffer alive until the copy has run.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """`x` on `device` (and in `dtype`), queued without a host sync when it goes from CPU to CUDA."""
    device = torch.device(device)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
