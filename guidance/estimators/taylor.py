"""The first-order (Taylor) control variate, a setting of SDS, ISM and SSD (`sds.taylor`, `ism.taylor`,
`ssd.taylor`): the project's addition to METHODS.md, which defines the variance it lowers in "Measuring variance".

Given z and t, an estimator's residual r (SDS: e_cfg(x_t) - eps; ISM: e_cfg(x_t) - e_s, both taken
along ISM's inversion; SSD: its a - mu h) is a function of the noise eps alone. Its first-order term at
eps = 0,

    h = J_r(0) eps          (one Jacobian-vector product, forward-mode, of the path from eps to r)

is linear in eps with a Jacobian fixed by z and t, so E[h | z, t] = 0 exactly and g = w (r - mu_T h)
keeps the estimator's expected gradient for every mu_T. Where the prior is locally linear (one Gaussian
mode: e is affine in x_t) r - h is r's value at eps = 0 and the noise's share of the variance is gone.
For SDS, h = sigma_t J_e(sqrt(ab_t) z) eps - eps; SSD uses its score term's h (SDS's or ISM's) and
fits mu_T on its own residual.

mu_T: "fixed" 1 (subtract the whole first-order term); "learned" E[w^2 r.h] / E[w^2 h.h] from EMAs over
previous steps (decay TAYLOR_BETA), starting at 0, the estimator without it, so in expectation it can
only lower the variance (up to the EMAs' error). Cost: the JVP repeats the score term's prior calls in
forward mode (SDS one more CFG call, ISM its inversion path again). Attention runs on PyTorch's math
kernel inside the JVP (the fused kernels have no forward-mode derivative).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

TAYLOR_MODES = ("off", "fixed", "learned")
TAYLOR_BETA = 0.99


@torch.no_grad()
def jvp(fn: Callable[[Tensor], Tensor], primal: Tensor, tangent: Tensor) -> Tensor:
    """d/ds fn(primal + s tangent) at s = 0, by forward-mode AD (detached, fn's output shape)."""
    with fwAD.dual_level(), sdpa_kernel(SDPBackend.MATH):
        out = fn(fwAD.make_dual(primal, tangent))
        tan = fwAD.unpack_dual(out).tangent
    return torch.zeros_like(out) if tan is None else tan.detach()


class RatioEMA:
    """A learned control-variate weight E[w^2 r.h] / E[w^2 h.h]: both expectations as EMAs per channel
    ([C] each, None before the first step), saved under the two given state keys. SSD's one-coefficient
    mu (ema_ah, ema_hh) and the Taylor weight (taylor_rh, taylor_hh) are each one of these."""

    def __init__(self, keys: tuple[str, str]) -> None:
        self.keys = keys
        self.rh: Tensor | None = None
        self.hh: Tensor | None = None

    def ratio(self, start: float, channels: int, device: torch.device, per_channel: bool = False) -> Tensor:
        """The weight, [1, C, 1, 1] per channel or [1, 1, 1, 1]; `start` until the EMAs hold a step (or
        where h has carried nothing)."""
        first = torch.tensor(float(start), device=device)
        if self.rh is None or self.rh.shape != (channels,):
            return first.view(1, 1, 1, 1)
        rh, hh = self.rh.to(device), self.hh.to(device)
        if per_channel:
            return torch.where(hh > 0, rh / hh.clamp_min(1e-30), first).view(1, channels, 1, 1)
        return torch.where(hh.sum() > 0, rh.sum() / hh.sum().clamp_min(1e-30), first).view(1, 1, 1, 1)

    def update(self, r: Tensor, h: Tensor, w: Tensor, beta: float) -> None:
        """Fold this step's E[w^2 r.h], E[w^2 h.h] per channel into the EMAs (the first step is its own
        average, so there is no bias towards 0)."""
        w2 = w.float() ** 2  # [B, 1, 1, 1]
        rh = (w2 * r * h).sum(dim=(2, 3)).mean(dim=0)  # [C]
        hh = (w2 * h * h).sum(dim=(2, 3)).mean(dim=0)
        if self.rh is None or self.rh.shape != rh.shape:
            self.rh, self.hh = rh, hh
            return
        self.rh = beta * self.rh.to(rh.device) + (1 - beta) * rh
        self.hh = beta * self.hh.to(hh.device) + (1 - beta) * hh

    def state(self) -> dict[str, Tensor | None]:
        return dict(zip(self.keys, (self.rh, self.hh)))

    def load(self, state: dict) -> None:
        rh, hh = (state.get(k) for k in self.keys)
        ok = isinstance(rh, Tensor) and isinstance(hh, Tensor)
        self.rh, self.hh = (rh, hh) if ok else (None, None)


class TaylorWeight(RatioEMA):
    """mu_T: 1 when fixed; learned, the EMAs' ratio over all channels, starting at 0."""

    def __init__(self) -> None:
        super().__init__(("taylor_rh", "taylor_hh"))

    def apply(self, mode: str, r: Tensor, h: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """(r - mu_T h, mu_T as a scalar tensor); a learned mu_T then folds this step into its EMAs."""
        mu = torch.ones((), device=r.device) if mode == "fixed" else self.ratio(0.0, r.shape[1], r.device).reshape(())
        out = r - mu * h
        if mode == "learned":
            self.update(r, h, w, TAYLOR_BETA)
        return out, mu
