"""Offline gradient variance of an estimator (METHODS.md, "Measuring variance").

At a frozen scene and fixed cameras, draw n noise (and timestep) samples, compute the estimator's g for
each, and report mean_n ||g_n - mean(g)||^2 / dim, in z space or, through the renderer's backward, in
Gaussian-parameter space. The estimator is left exactly as it was (random streams and learned state).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.types import RenderOutput

from .priors.base import DiffusionPrior, ViewCond


@dataclass
class VarianceReport:
    """variance: mean_n ||g_n - mean(g)||^2 / dim (scalar); mean_sq_norm: mean_n ||g_n||^2 / dim;
    mean: the average gradient [dim]; n samples of dim entries each."""

    variance: Tensor
    mean_sq_norm: Tensor
    mean: Tensor
    n: int
    dim: int


def summarize(samples: Tensor) -> VarianceReport:
    """samples [n, dim] -> VarianceReport."""
    assert samples.dim() == 2 and samples.shape[0] >= 2, f"samples: expected [n >= 2, dim], got {tuple(samples.shape)}"
    n, dim = samples.shape
    x = samples.double()
    mean = x.mean(dim=0)
    var = ((x - mean) ** 2).sum(dim=1).mean() / dim
    return VarianceReport(var.float(), ((x**2).sum(dim=1).mean() / dim).float(), mean.float(), n, dim)


def _sampling(estimator: Any, n: int, seed: int | None, freeze: bool, draw: Callable[[], Tensor]) -> Tensor:
    """Call draw() n times (each calls the estimator once); restore the estimator afterwards.

    freeze: put the learned state back after every sample (SSD's μ stays what it was), so that the
    samples are i.i.d. draws of one estimator rather than of a drifting one."""
    saved = copy.deepcopy(estimator.state_dict())
    out = []
    try:
        if seed is not None:
            estimator.reseed(seed)
        for _ in range(n):
            out.append(draw().reshape(-1))
            if freeze:
                estimator.load_state_dict({**copy.deepcopy(saved), "rng": estimator.rng.state_dict()})
    finally:
        estimator.load_state_dict(saved)
    return torch.stack(out)


def z_space_variance(estimator: Any, prior: DiffusionPrior, render: RenderOutput, cameras: CameraBatch,
                     vc: ViewCond, n: int = 32, step: int = 0, seed: int | None = None,
                     freeze: bool = True) -> VarianceReport:
    """Variance of g [B, C, h, w] (all B cameras form one sample) over n draws at a fixed render.

    Args:
        estimator: an SDS / ISM / SSD estimator (state restored on return)
        render: the frozen scene's render of `cameras` (rgb [B, H, W, 3], alpha, depth, normal)
        n: number of samples (>= 2); step: the step the schedules are evaluated at
        seed: reseed the estimator's streams for the measurement (None: continue its streams)
        freeze: keep learned state fixed during the measurement
    """
    frozen = RenderOutput(render.rgb.detach(), render.alpha.detach(), render.depth.detach(),
                          render.normal.detach(), render.info)

    def draw() -> Tensor:
        return estimator(prior, frozen, cameras, vc, step).grad.float()

    return summarize(_sampling(estimator, n, seed, freeze, draw))


def param_space_variance(estimator: Any, prior: DiffusionPrior, render_fn: Callable[[], RenderOutput],
                         params: Sequence[Tensor], cameras: CameraBatch, vc: ViewCond, n: int = 32,
                         step: int = 0, seed: int | None = None, freeze: bool = True) -> VarianceReport:
    """Variance of the loss's gradient w.r.t. `params` (the Gaussians' tensors, requires_grad) over
    n draws; render_fn() re-renders the frozen scene with a fresh graph each time."""

    def draw() -> Tensor:
        loss = estimator(prior, render_fn(), cameras, vc, step).loss
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1).float()
                          for p, gr in zip(params, grads)])

    return summarize(_sampling(estimator, n, seed, freeze, draw))
