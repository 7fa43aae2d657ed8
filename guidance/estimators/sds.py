"""Score Distillation Sampling (DreamFusion), as threestudio implements it (METHODS.md, "SDS").

Symbols: z the latent of the render, eps ~ N(0, I), ab_t = alphas_cumprod[t], x_t = sqrt(ab_t) z +
sqrt(1 - ab_t) eps, e_cfg the prior's guided noise prediction (textbook CFG e_u + s (e_c - e_u); note
threestudio's e_c + s (e_c - e_u) is this at s + 1), w(t) the weighting.

    1. t ~ U{t_min, t_max} per batch item (or the deterministic sqrt schedule), t_max possibly annealed;
       optionally stratified across the batch (`t_sampling`), or shared by antithetic pairs (`antithetic`:
       cameras b and b + B/2 get t_b and eps, -eps), each draw keeping its law
    2. x_t from z with fresh eps; one batched prior call for cond + uncond
    3. g = w(t) (e_cfg - eps); with `taylor`, g = w(t) (e_cfg - eps - mu_T h), h = sigma_t J eps - eps
       the residual's first-order term (taylor.py)
    4. optional element clamp of g; non-finite entries are counted (base.finish)

Loss convention (base.py): the gradient of the loss w.r.t. z is g / B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.transfer import to_device
from renderers.types import RenderOutput

from ..priors.base import DiffusionPrior, ViewCond, add_noise
from .base import EstimatorResult, check_range, finish
from .common import (
    WEIGHTINGS, EstimatorBase, RandomStreams, check_choice, check_guidance, check_t_range, frac_to_step,
    check_taylor, render_to_z, timestep_weight,
)
from .taylor import jvp


@dataclass(frozen=True)
class SDSSettings:
    guidance_scale: float = 100.0
    """classifier-free guidance scale s in e_u + s (e_c - e_u) (DreamFusion: 100; as a LucidDreamer baseline: 7.5)"""
    t_range: tuple[float, float] = (0.02, 0.98)
    """(t_min, t_max) as fractions of T; t is drawn uniformly between them"""
    weighting: Literal["sds", "uniform", "fantasia", "lucid"] = "sds"
    """w(t): sds = 1 - ab_t, uniform = 1, fantasia = sqrt(ab_t)(1 - ab_t), lucid = sqrt((1 - ab_t) / ab_t)"""
    schedule: Literal["random", "sqrt"] = "random"
    """timesteps: random (uniform per camera) or sqrt (deterministic t_max -> t_min like sqrt(step / schedule_steps))"""
    schedule_steps: int = 1000
    """sqrt schedule: steps over which t falls from t_max to t_min"""
    t_max_final: float | None = None
    """anneal t_max to this fraction of T (none: no annealing)"""
    anneal_start: int = 0
    """annealing of t_max starts at this step (linear until anneal_end)"""
    anneal_end: int = 5000
    """t_max reaches t_max_final at this step (anneal_start = anneal_end: a jump at that step)"""
    grad_clamp: float = 0.0
    """clamp every element of g to [-grad_clamp, grad_clamp] (0: off)"""
    t_sampling: Literal["iid", "stratified"] = "iid"
    """random schedule: iid (each camera its own t) or stratified (one t from each of B equal strata of
    the range, in random order: each t still uniform, the batch spread evenly; variance reduction)"""
    antithetic: bool = False
    """pair the batch: cameras b and b + B/2 share t and get eps and -eps (each draw still as before);
    with stratified timesteps the B/2 pairs are stratified"""
    taylor: Literal["off", "fixed", "learned"] = "off"
    """first-order (Taylor) control variate h = sigma_t J_e eps - eps from one Jacobian-vector product
    (zero mean given z and t): off, fixed (weight 1) or learned (weight fitted from previous steps,
    starting at 0); costs one more prior call in forward mode"""

    def validate(self, owner: str = "sds") -> None:
        check_guidance(owner, self.guidance_scale)
        check_t_range(owner, "t_range", self.t_range)
        check_choice(owner, "weighting", self.weighting, WEIGHTINGS)
        check_choice(owner, "schedule", self.schedule, ("random", "sqrt"))
        check_range(owner, "schedule_steps", self.schedule_steps, 1, 10_000_000)
        if self.t_max_final is not None:
            check_range(owner, "t_max_final", self.t_max_final, self.t_range[0], 1.0)
        check_range(owner, "anneal_start", self.anneal_start, 0, 10_000_000)
        check_range(owner, "anneal_end", self.anneal_end, self.anneal_start, 10_000_000)
        check_range(owner, "grad_clamp", self.grad_clamp, 0.0, 1e9)
        check_choice(owner, "t_sampling", self.t_sampling, ("iid", "stratified"))
        check_taylor(owner, self.taylor)


def t_max_at(s: SDSSettings, step: int) -> float:
    """The (possibly annealed) upper end of the t range at `step`, as a fraction of T."""
    hi = float(s.t_range[1])
    if s.t_max_final is None or step < s.anneal_start:
        return hi
    if step >= s.anneal_end:
        return float(s.t_max_final)
    r = (step - s.anneal_start) / (s.anneal_end - s.anneal_start)
    return hi + r * (float(s.t_max_final) - hi)


def sds_timesteps(s: SDSSettings, step: int, batch: int, T: int, rng: RandomStreams) -> Tensor:
    """Step 1: t [B] long on the CPU.

    random: t ~ U{t_min, t_max} per item, t_min = int(t_range[0] T), t_max = int(t_max_at(step) T)
    (inclusive, as threestudio's randint(min_step, max_step + 1)); sqrt: one deterministic t for the
    batch, t_max - (t_max - t_min) sqrt(min(step / schedule_steps, 1)), rounded.
    """
    lo = frac_to_step(s.t_range[0], T)
    hi = max(frac_to_step(t_max_at(s, step), T), lo)
    if s.schedule == "random":
        pairs = batch // 2 if s.antithetic else 0  # antithetic pairs share their t: b + B/2 takes t_b
        n = batch - pairs
        t = rng.randint_stratified(lo, hi, n) if s.t_sampling == "stratified" else rng.randint(lo, hi, n)
        return torch.cat([t[:pairs], t]) if pairs else t
    frac = math.sqrt(min(step / s.schedule_steps, 1.0))
    return torch.full((batch,), int(round(hi - (hi - lo) * frac)), dtype=torch.long)


class SDSTerms(NamedTuple):
    """What steps 1-2 produce; SSD reuses them so that, with phi = 1 and mu = 1, it is SDS bit for bit."""

    t: Tensor  # [B] long, CPU
    eps: Tensor  # [B, C, h, w] float32
    x_t: Tensor  # [B, C, h, w] float32
    e_cfg: Tensor  # [B, C, h, w] float32
    w: Tensor  # [B, 1, 1, 1] float32


@torch.no_grad()
def sds_terms(prior: DiffusionPrior, z: Tensor, vc: ViewCond, s: SDSSettings, step: int,
              rng: RandomStreams) -> SDSTerms:
    """Steps 1-2 and the weight of step 3, for z [B, C, h, w] (its graph is not used)."""
    B = z.shape[0]
    # 1. Timesteps (CPU stream), then noise (device stream): this order is part of the contract.
    t = sds_timesteps(s, step, B, prior.num_train_timesteps, rng)
    eps = rng.randn_antithetic(tuple(z.shape), z.device) if s.antithetic else rng.randn(tuple(z.shape), z.device)
    # 2. Forward-noise z and ask the prior once for the guided prediction.
    t_dev = to_device(t, z.device)
    x_t = add_noise(prior.alphas_cumprod, z.detach().float(), eps, t_dev)
    e_cfg = prior.predict_noise(x_t, t_dev, vc, s.guidance_scale, branch="cfg").float()
    if e_cfg.shape != z.shape:
        raise ValueError(f"{prior.name}.predict_noise: expected {tuple(z.shape)}, got {tuple(e_cfg.shape)}")
    w = timestep_weight(s.weighting, prior.alphas_cumprod[t_dev])
    return SDSTerms(t, eps, x_t, e_cfg, w)


def sds_taylor_term(prior: DiffusionPrior, z: Tensor, vc: ViewCond, guidance_scale: float,
                    terms: SDSTerms) -> Tensor:
    """h = sigma_t J_e(sqrt(ab_t) z) eps - eps [B, C, h, w]: the first-order term in eps of SDS's
    residual e_cfg(sqrt(ab_t) z + sigma_t eps) - eps, at the step's t and eps."""
    t_dev = to_device(terms.t, z.device)
    ab = prior.alphas_cumprod[t_dev].float().view(-1, 1, 1, 1)
    x_bar = ab.sqrt() * z.detach().float()

    def e_cfg(x: Tensor) -> Tensor:
        return prior.predict_noise(x, t_dev, vc, guidance_scale, branch="cfg").float()

    return jvp(e_cfg, x_bar, (1 - ab).sqrt() * terms.eps) - terms.eps


def clamp_grad(g: Tensor, limit: float) -> Tensor:
    """Element clamp of g to [-limit, limit]; limit 0 is off. NaN stays NaN so finish() can count it."""
    return g.clamp(-limit, limit) if limit > 0 else g


class SDS(EstimatorBase):
    """The SDS estimator: `SDS(settings, seed)(prior, render, cameras, vc, step) -> EstimatorResult`."""

    name = "sds"
    settings_class = SDSSettings

    def __call__(self, prior: DiffusionPrior, render: RenderOutput, cameras: CameraBatch, vc: ViewCond,
                 step: int) -> EstimatorResult:
        """One SDS gradient for the B renders in `render` (rgb [B, H, W, 3]); see the module doc."""
        s = self.settings  # read once: the session may swap it between steps, never during one
        z = render_to_z(prior, render)
        terms = sds_terms(prior, z, vc, s, step, self.rng)
        # 3. g = w(t) (e_cfg - eps), less the Taylor term if asked
        r, extras = terms.e_cfg - terms.eps, {}
        if s.taylor != "off":
            h = sds_taylor_term(prior, z, vc, s.guidance_scale, terms)
            r, extras["taylor_mu"] = self.taylor.apply(s.taylor, r, h, terms.w)
        g = terms.w * r
        # 4. Optional clamp; finish() counts and zeroes non-finite entries and builds the loss.
        return finish(z, clamp_grad(g, s.grad_clamp), terms.t, extras or None)
