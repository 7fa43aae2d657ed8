"""Interval Score Matching (LucidDreamer), as METHODS.md's pseudo-code (section "ISM").

Symbols: z the latent of the render, eps ~ N(0, I), ab_t = alphas_cumprod[t], t the noisy timestep,
s = t - dT the interval's start, dS (`delta_s`) the inversion stride, e(x, t, "") the prediction for the
empty prompt (branch "empty": never the negative prompt, which only enters CFG, as in LucidDreamer),
e_cfg the guided one (textbook CFG e_u + s (e_c - e_u)), lam the weight.

    1. warm-up: r = 1 - min(step / warmup, 1); dT = int(delta_t + r (delta_t_start - delta_t));
       t ~ U{t_min, t_max + r (t_max_start - t_max)} (one t for the whole batch); s = max(t - dT, 0)
    2. eps = randn (+ offset_noise * a per-(item, channel) constant, LucidDreamer's 0.1; optional)
    3. no grad: x = z noised to the first timestep first = max(s - dS * inv_steps, 0) with eps;
       DDIM inversion (eta 0, empty prompt) first -> s with stride dS, the last step shortened to land
       on s; zero-length steps are skipped (s = 0 needs none; dS >= s - first needs one)
    4. e_s = e(x_s, s, ""), the target; x_t = sqrt(ab_t) (x_s - sqrt(1 - ab_s) e_s) / sqrt(ab_s) +
       sqrt(1 - ab_t) e_s (one more DDIM inversion step s -> t)
    5. e_cfg = CFG of e(x_t, t, negative) and e(x_t, t, prompt), one batched call
    6. g = lam sqrt((1 - ab_t) / ab_t) (e_cfg - e_s); with `taylor`, less mu_T times the residual's
       first-order term in eps along the inversion path (taylor.py)

Starting the inversion at max(s - dS inv_steps, 0) rather than 0 is what LucidDreamer's code does
(`starting_ind`), so the inversion always lands on s even when s > dS inv_steps.

Prior calls per step ("prior_calls"), counting the batched CFG call as one:
    min(ceil(s / dS), inv_steps)      empty-prompt inversion calls on B latents (0 when s = 0)
  + 1                                 empty-prompt call for e_s
  + 1                                 CFG call (cond + uncond on 2B latents inside the prior)
i.e. ceil(s / dS) + 2 whenever ceil(s / dS) <= inv_steps (always with the defaults: s <= 880 < 5 * 200).

Timesteps are the prior's own 0..T-1 (LucidDreamer's index i is SD's DDIM timestep i + 1; the shift is
immaterial and a prior-agnostic estimator cannot know the spacing of another model's sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.types import RenderOutput

from ..priors.base import DiffusionPrior, ViewCond, add_noise
from .base import EstimatorResult, check_range, finish
from .common import (
    EstimatorBase, RandomStreams, check_guidance, check_t_range, check_taylor, frac_to_step, render_to_z,
)
from .sds import clamp_grad
from .taylor import jvp


@dataclass(frozen=True)
class ISMSettings:
    guidance_scale: float = 7.5
    """classifier-free guidance scale s in e_u + s (e_c - e_u) (LucidDreamer: 7.5)"""
    delta_t: int = 50
    """δT: interval length t - s after warm-up (LucidDreamer: 50 or 80 by prompt, 25 for thin objects)"""
    delta_t_start: int = 100
    """δT at step 0, annealed linearly down to delta_t over the warm-up"""
    delta_s: int = 200
    """δS: stride of the DDIM inversion from the first timestep to s"""
    inv_steps: int = 5
    """most DDIM inversion steps to reach s (the inversion starts at max(s - δS * inv_steps, 0))"""
    warmup_steps: int = 1500
    """steps over which δT and the upper end of the t range are annealed (0: no warm-up)"""
    t_range: tuple[float, float] = (0.02, 0.5)
    """(t_min, t_max) after warm-up, as fractions of T"""
    t_max_start: float = 0.98
    """upper end of the t range at step 0 (fraction of T), annealed to t_range's during warm-up"""
    lam: float = 0.1
    """λ: weight of the ISM gradient (LucidDreamer's configs: 0.1)"""
    offset_noise: float = 0.0
    """scale of a per-channel constant added to eps (LucidDreamer: 0.1; 0: off)"""
    grad_clamp: float = 0.0
    """clamp every element of g to [-grad_clamp, grad_clamp] (0: off)"""
    antithetic: bool = False
    """pair the batch's noise: cameras b and b + B/2 get eps and -eps (each still N(0, I))"""
    taylor: Literal["off", "fixed", "learned"] = "off"
    """first-order (Taylor) control variate: the residual's term linear in eps along the inversion path,
    from one Jacobian-vector product (zero mean given z and t): off, fixed (weight 1) or learned (fitted
    from previous steps, starting at 0); costs the path's prior calls again in forward mode"""

    def validate(self, owner: str = "ism") -> None:
        check_guidance(owner, self.guidance_scale)
        check_range(owner, "delta_t", self.delta_t, 1, 999)
        check_range(owner, "delta_t_start", self.delta_t_start, 1, 999)
        check_range(owner, "delta_s", self.delta_s, 1, 1000)
        check_range(owner, "inv_steps", self.inv_steps, 1, 100)
        check_range(owner, "warmup_steps", self.warmup_steps, 0, 10_000_000)
        check_t_range(owner, "t_range", self.t_range)
        check_range(owner, "t_max_start", self.t_max_start, self.t_range[1], 1.0)
        check_range(owner, "lam", self.lam, 0.0, 1e6)
        check_range(owner, "offset_noise", self.offset_noise, 0.0, 10.0)
        check_range(owner, "grad_clamp", self.grad_clamp, 0.0, 1e9)
        check_taylor(owner, self.taylor)


def ism_schedule(s: ISMSettings, step: int, T: int) -> tuple[int, int, int]:
    """Step 1 without the draw: (dT, t_lo, t_hi) at `step`, t_hi inclusive, all in [0, T - 1]."""
    r = 1.0 - min(step / s.warmup_steps, 1.0) if s.warmup_steps > 0 else 0.0
    dT = int(s.delta_t + r * (s.delta_t_start - s.delta_t))
    lo = frac_to_step(s.t_range[0], T)
    hi = max(frac_to_step(s.t_range[1] + r * (s.t_max_start - s.t_range[1]), T), lo)
    return dT, lo, hi


def inversion_path(first: int, s: int, delta_s: int) -> list[int]:
    """Timesteps the DDIM inversion visits: first, first + dS, ..., s (the last step shortened);
    [first] alone when first == s (no step to take)."""
    path = [first]
    while path[-1] < s:
        path.append(min(path[-1] + delta_s, s))
    return path


def ddim_step(alphas_cumprod: Tensor, x: Tensor, e: Tensor, cur: int, nxt: int) -> Tensor:
    """Deterministic DDIM (eta 0) from timestep cur to nxt with noise prediction e (either direction):
    x0 = (x - sqrt(1 - ab_cur) e) / sqrt(ab_cur); x' = sqrt(ab_nxt) x0 + sqrt(1 - ab_nxt) e."""
    ab_cur, ab_nxt = alphas_cumprod[cur].float(), alphas_cumprod[nxt].float()
    x0 = (x - (1 - ab_cur).sqrt() * e) / ab_cur.sqrt()
    return ab_nxt.sqrt() * x0 + (1 - ab_nxt).sqrt() * e


def predict_empty(prior: DiffusionPrior, x: Tensor, timestep: int, vc: ViewCond) -> Tensor:
    """e(x, timestep, "") for the batch: the empty prompt's prediction (inversion and target)."""
    t = torch.full((x.shape[0],), timestep, dtype=torch.long, device=x.device)
    return prior.predict_noise(x, t, vc, None, branch="empty").float()


class ISMTerms(NamedTuple):
    """What steps 1-5 produce; SSD built on ISM reuses them."""

    t: Tensor  # [B] long, CPU, one value repeated
    s: Tensor  # [B] long, CPU
    delta_T: int
    eps: Tensor  # [B, C, h, w] float32
    x_t: Tensor  # [B, C, h, w] float32, reached by inversion
    e_s: Tensor  # [B, C, h, w] float32, the target
    e_cfg: Tensor  # [B, C, h, w] float32
    w: Tensor  # [B, 1, 1, 1] float32: lam sqrt((1 - ab_t) / ab_t)
    prior_calls: int


def ism_path(prior: DiffusionPrior, z: Tensor, eps: Tensor, t_int: int, s_int: int, s: ISMSettings,
             vc: ViewCond) -> tuple[Tensor, Tensor, Tensor, int]:
    """Steps 3-5 for z and eps [B, C, h, w] at t and s: (x_t, e_s, e_cfg, prior calls). A function of eps
    alone once z and t are fixed (the Taylor term differentiates it in forward mode)."""
    B, ab = z.shape[0], prior.alphas_cumprod
    # 3. Noise z to the first timestep, then invert to s (empty prompt, stride dS, no zero-length step).
    first = max(s_int - s.delta_s * s.inv_steps, 0)
    x = add_noise(ab, z, eps, torch.full((B,), first, dtype=torch.long, device=z.device))
    path = inversion_path(first, s_int, s.delta_s)
    for cur, nxt in zip(path[:-1], path[1:]):
        x = ddim_step(ab, x, predict_empty(prior, x, cur, vc), cur, nxt)
    # 4. The target e_s, then one more inversion step s -> t.
    e_s = predict_empty(prior, x, s_int, vc)
    x_t = ddim_step(ab, x, e_s, s_int, t_int)
    # 5. Guided prediction at x_t (one batched call for both branches, inside the prior).
    t = torch.full((B,), t_int, dtype=torch.long, device=z.device)
    e_cfg = prior.predict_noise(x_t, t, vc, s.guidance_scale, branch="cfg").float()
    return x_t, e_s, e_cfg, (len(path) - 1) + 1 + 1


def ism_taylor_term(prior: DiffusionPrior, z: Tensor, vc: ViewCond, s: ISMSettings, terms: "ISMTerms") -> Tensor:
    """h = J_r(0) eps [B, C, h, w]: the first-order term in eps of ISM's residual r(eps) = e_cfg - e_s
    along the inversion path (taylor.py), at the step's t, s and eps."""
    t_int, s_int = int(terms.t[0]), int(terms.s[0])

    def residual(e: Tensor) -> Tensor:
        _, e_s, e_cfg, _ = ism_path(prior, z.detach().float(), e, t_int, s_int, s, vc)
        return e_cfg - e_s

    return jvp(residual, torch.zeros_like(terms.eps), terms.eps)


@torch.no_grad()
def ism_terms(prior: DiffusionPrior, z: Tensor, vc: ViewCond, s: ISMSettings, step: int,
              rng: RandomStreams) -> ISMTerms:
    """Steps 1-5 of the module doc for z [B, C, h, w] (its graph is not used)."""
    B, T, ab = z.shape[0], prior.num_train_timesteps, prior.alphas_cumprod
    # 1. Warm-up annealing, one t for the batch, s = t - dT clipped at 0.
    dT, lo, hi = ism_schedule(s, step, T)
    t_int = int(rng.randint(lo, hi, 1)[0])
    s_int = max(t_int - dT, 0)
    # 2. Noise, with LucidDreamer's optional per-channel offset.
    eps = rng.randn_antithetic(tuple(z.shape), z.device) if s.antithetic else rng.randn(tuple(z.shape), z.device)
    if s.offset_noise > 0:
        eps = eps + s.offset_noise * rng.randn((B, z.shape[1], 1, 1), z.device)
    # 3-5. The inversion path and the two predictions.
    x_t, e_s, e_cfg, calls = ism_path(prior, z.detach().float(), eps, t_int, s_int, s, vc)
    t = torch.full((B,), t_int, dtype=torch.long)
    ab_t = ab[t_int].float()
    w = (s.lam * ((1 - ab_t) / ab_t).sqrt()).expand(B, 1, 1, 1)
    return ISMTerms(t, torch.full((B,), s_int, dtype=torch.long), dT, eps, x_t, e_s, e_cfg, w, calls)


def expected_prior_calls(s: int, delta_s: int, inv_steps: int) -> int:
    """The docstring's count: min(ceil(s / dS), inv_steps) + 1 + 1 (the CFG call counted once)."""
    return min(math.ceil(s / delta_s), inv_steps) + 2


class ISM(EstimatorBase):
    """The ISM estimator: `ISM(settings, seed)(prior, render, cameras, vc, step) -> EstimatorResult`.

    Extra diagnostics: "s" [B], "delta_T" scalar, "prior_calls" scalar (see the module doc)."""

    name = "ism"
    settings_class = ISMSettings

    def __call__(self, prior: DiffusionPrior, render: RenderOutput, cameras: CameraBatch, vc: ViewCond,
                 step: int) -> EstimatorResult:
        s = self.settings
        z = render_to_z(prior, render)
        terms = ism_terms(prior, z, vc, s, step, self.rng)
        # 6. g = lam sqrt((1 - ab_t) / ab_t) (e_cfg - e_s), less the Taylor term if asked
        r, extras = terms.e_cfg - terms.e_s, {}
        if s.taylor != "off":
            h = ism_taylor_term(prior, z, vc, s, terms)
            r, extras["taylor_mu"] = self.taylor.apply(s.taylor, r, h, terms.w)
        g = terms.w * r
        extras |= {
            "s": terms.s,
            "delta_T": torch.tensor(terms.delta_T),
            "prior_calls": torch.tensor(terms.prior_calls),
        }
        return finish(z, clamp_grad(g, s.grad_clamp), terms.t, extras)
