"""What every gradient estimator shares: its result type, the loss that carries its gradient, and
the online variance estimate.

Loss convention (the same for SDS, ISM and SSD, so their figures compare):

    loss = 0.5 * sum((z - (z - g).detach())^2) / B      =>      d loss / d z = g / B

i.e. the estimator's gradient g, averaged over the batch of B cameras. Estimators never call
backward; the session does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.types import RenderOutput

from ..priors.base import DiffusionPrior, ViewCond


class SettingsError(ValueError):
    """An estimator setting out of range; the message names the field and the allowed range."""


@dataclass
class EstimatorResult:
    """loss: scalar whose gradient w.r.t. z is g / B. diagnostics: tensors (never .item()'d here):
    "t" [B] timesteps, "grad_norm" scalar ||g|| / B, "grad_var" scalar variance estimate,
    "nonfinite" scalar count of non-finite entries of g (zeroed before the loss), plus estimator extras."""

    loss: Tensor
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    z: Tensor | None = None  # the latent the gradient is defined on (for variance studies)
    grad: Tensor | None = None  # g itself, detached [B, C, h, w]


class Estimator(Protocol):
    name: str
    settings: Any  # a frozen dataclass, replaced whole between steps

    def __call__(
        self, prior: DiffusionPrior, render: RenderOutput, cameras: CameraBatch, vc: ViewCond, step: int
    ) -> EstimatorResult: ...

    def reset(self) -> None: ...


def check_range(owner: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise SettingsError(f"{owner}.{name}: must lie in [{lo}, {hi}], got {value}")


def distillation_loss(z: Tensor, g: Tensor) -> Tensor:
    """0.5 * ||z - (z - g).detach()||^2 / B, whose gradient w.r.t. z is g / B."""
    target = (z - g).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


def sanitize(g: Tensor) -> tuple[Tensor, Tensor]:
    """Zero non-finite entries of g and return (g, their count) so the count can be shown, not hidden."""
    finite = torch.isfinite(g)
    return torch.where(finite, g, torch.zeros_like(g)), (~finite).sum()


def batch_variance(g: Tensor) -> Tensor:
    """Online gradient-variance estimate: mean over entries of the per-sample deviation from the
    batch mean, sum_b ||g_b - mean(g)||^2 / ((B - 1) * dim). Zero for B = 1 (no spread to measure)."""
    B = g.shape[0]
    if B < 2:
        return torch.zeros((), device=g.device, dtype=torch.float32)
    dev = g.float() - g.float().mean(dim=0, keepdim=True)
    return (dev**2).sum() / ((B - 1) * g[0].numel())


def finish(z: Tensor, g: Tensor, t: Tensor, extras: dict[str, Tensor] | None = None) -> EstimatorResult:
    """Common tail of every estimator: count and zero non-finite entries, build loss and diagnostics."""
    g, nonfinite = sanitize(g)
    diagnostics = {
        "t": t.detach(),
        "grad_norm": g.detach().float().norm() / g.shape[0],
        "grad_var": batch_variance(g.detach()),
        "nonfinite": nonfinite,
    }
    diagnostics.update(extras or {})
    return EstimatorResult(distillation_loss(z, g), diagnostics, z=z, grad=g.detach())
