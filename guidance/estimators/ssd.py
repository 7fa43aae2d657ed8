"""Stein Score Distillation (SteinDreamer), as METHODS.md's section "SSD".

Stein's identity for eps ~ N(0, I), x_t = sqrt(ab_t) z + sigma_t eps with z and the camera fixed:
E[eps phi(x_t) - sigma_t grad_{x_t} phi(x_t)] = 0 for any smooth scalar phi, so
h = eps phi - sigma_t grad phi is a zero-mean control variate (MINUS sign; the project page's plus sign
would bias the gradient by 2 sigma_t E[grad phi]).

Symbols: a the score term, phi the baseline function, h the control variate, mu its weight, w(t) the
weighting, sigma_t = sqrt(1 - ab_t).

    1. a = e_cfg(x_t, t, y) as in SDS (base "sds"); on ISM (base "ism") a = e_cfg - e_s + eps, so that
       a - h = e_cfg - e_s (ISM) at phi = 1, mu = 1
    2. phi = c0 + lam (1 - sim(x_t)), sim a baseline of guidance/baselines.py ("depth": Pearson of the
       render's disparity (detached, alpha > 0.5) with the prior's disparity of x_t; "normal": cosine
       of normals); phi is [B], one per camera
    3. gphi = autograd.grad(phi, x_t)
    4. h = eps phi - sigma_t gphi
    5. g = w(t) (a - mu h); with `taylor`, less mu_T times the score term's first-order term in eps
       (taylor.py), mu_T fitted on this residual
    6. learned mu: update the EMAs with this step's a and h (after g, so mu never sees its own sample)

With phi = 1 (c0 = 1, lam = 0) and mu = 1, base "sds" is SDS bit for bit (same seed: same t and eps);
its - eps term is the constant-baseline control variate. The paper's own phi is c0 = 0, lam = 1.

Two coefficients (`coefficients = "two"`): SDS's eps baseline and the Stein term get a weight each,

    h0 = eps,   psi = 1 - sim(x_t),   h1 = eps (psi - c) - sigma_t grad psi,   g = w (a - mu0 h0 - mu1 h1)

with c_b the mean of psi over the other cameras whose noise is independent of camera b's (leave-one-out,
an antithetic partner left out too), so that c_b does not depend on x_t[b] and h1 stays exactly
zero-mean while it carries no share of h0. Learned, (mu0, mu1) solve the 2 x 2 normal equations of
E[w^2 (a - mu0 h0 - mu1 h1)^2] from EMAs over previous steps and start at (mu, 0), i.e. at SDS; they
are fitted on other steps' draws, so in expectation they can only lower SDS's variance (up to the EMAs'
error). Fixed, mu0 = `mu` and mu1 = `lam`. c0 is not used.

On ISM the x_t that a is evaluated at is reached by DDIM inversion and is not Gaussian in eps, so phi is
evaluated at the forward-noised x_t = sqrt(ab_t) z + sigma_t eps with the same eps: h stays exactly
zero-mean and SSD keeps ISM's expected gradient for every mu (ISM's offset noise must then be off).

mu ("learned"): the variance-optimal weight of g = w (a - mu h) is mu* = E[w^2 a.h] / E[w^2 h.h]
(METHODS.md's E[a.h] / E[h.h] when w is the same for every sample, e.g. ISM's one t per batch), per
channel or summed over channels; both expectations are EMAs (beta, default 0.99) over previous steps,
and mu starts at the `mu` setting (1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.transfer import to_device
from renderers.types import RenderOutput

from ..baselines import BASELINES
from ..priors.base import DiffusionPrior, ViewCond, add_noise
from .base import EstimatorResult, SettingsError, check_range, finish
from .common import (
    WEIGHTINGS, EstimatorBase, check_choice, check_guidance, check_t_range, check_taylor, render_to_z,
)
from .ism import ISMSettings, ism_taylor_term, ism_terms
from .sds import SDSSettings, clamp_grad, sds_taylor_term, sds_terms
from .taylor import RatioEMA


TWO_STATS = ("a0", "a1", "h00", "h01", "h11")  # coefficients "two": the EMAs behind (mu0, mu1)


@dataclass(frozen=True)
class SSDSettings:
    base: Literal["sds", "ism"] = "sds"
    """what the control variate is added to: SDS's x_t and score, or ISM's (then ssd.ism.* applies)"""
    guidance_scale: float = 100.0
    """base sds: classifier-free guidance scale s in e_u + s (e_c - e_u)"""
    t_range: tuple[float, float] = (0.02, 0.98)
    """base sds: (t_min, t_max) as fractions of T"""
    weighting: Literal["sds", "uniform", "fantasia", "lucid"] = "sds"
    """base sds: w(t), as for SDS"""
    baseline: Literal["depth", "normal"] = "depth"
    """phi's geometry term: depth (Pearson of disparities) or normal (cosine of normals)"""
    c0: float = 1.0
    """constant part of phi (1 keeps SDS's eps baseline inside)"""
    lam: float = 0.1
    """λ: weight of the geometry term in phi = c0 + λ (1 - similarity); 0 gives SDS's baseline alone
    (large λ makes phi, and with it h = eps phi, vary; on the analytic test prior λ = 1 raised the variance)"""
    mu_mode: Literal["fixed", "learned"] = "learned"
    """μ: fixed (the mu setting) or learned (variance-optimal, from EMAs over previous steps)"""
    mu: float = 1.0
    """μ when fixed, and the learned μ's starting value"""
    mu_per_channel: bool = False
    """learn one μ per latent channel instead of one scalar"""
    ema_beta: float = 0.99
    """decay of the EMAs behind the learned μ"""
    grad_clamp: float = 0.0
    """clamp every element of g to [-grad_clamp, grad_clamp] (0: off)"""
    t_sampling: Literal["iid", "stratified"] = "iid"
    """base sds: iid or stratified timesteps across the batch, as for SDS"""
    antithetic: bool = False
    """base sds: antithetic noise pairs across the batch, as for SDS (base ism: ssd.ism.antithetic)"""
    coefficients: Literal["one", "two"] = "one"
    """one: h = eps phi - sigma grad phi with one mu; two: SDS's eps baseline and the centred Stein term
    each with its own weight (mu0, mu1), learned jointly (see the module doc)"""
    taylor: Literal["off", "fixed", "learned"] = "off"
    """first-order (Taylor) control variate of the score term (SDS's or ISM's h, taylor.py) on top of the
    Stein term, its weight fitted on SSD's own residual when learned; off, fixed (1) or learned"""
    ism: ISMSettings = field(default_factory=ISMSettings)
    """base ism: the ISM settings the score term uses (its offset noise must be 0; its taylor is ssd.taylor)"""

    def validate(self, owner: str = "ssd") -> None:
        check_choice(owner, "base", self.base, ("sds", "ism"))
        check_guidance(owner, self.guidance_scale)
        check_t_range(owner, "t_range", self.t_range)
        check_choice(owner, "weighting", self.weighting, WEIGHTINGS)
        check_choice(owner, "baseline", self.baseline, tuple(BASELINES))
        check_range(owner, "c0", self.c0, -1e3, 1e3)
        check_range(owner, "lam", self.lam, 0.0, 1e3)
        check_choice(owner, "mu_mode", self.mu_mode, ("fixed", "learned"))
        check_range(owner, "mu", self.mu, -10.0, 10.0)
        check_range(owner, "ema_beta", self.ema_beta, 0.0, 0.99999)
        check_range(owner, "grad_clamp", self.grad_clamp, 0.0, 1e9)
        check_choice(owner, "t_sampling", self.t_sampling, ("iid", "stratified"))
        check_choice(owner, "coefficients", self.coefficients, ("one", "two"))
        check_taylor(owner, self.taylor)
        self.ism.validate(owner=f"{owner}.ism")
        if self.ism.taylor != "off":
            raise SettingsError(f"{owner}.ism.taylor: SSD's Taylor term is {owner}.taylor (it applies to either "
                                f"base); leave {owner}.ism.taylor off, got {self.ism.taylor!r}")
        if self.base == "ism" and self.ism.offset_noise > 0:
            raise SettingsError(
                f"{owner}.ism.offset_noise: must be 0 when SSD builds on ISM (Stein's identity needs "
                f"isotropic noise), got {self.ism.offset_noise}"
            )

    def sds_part(self) -> SDSSettings:
        """The SDS settings of the score term for base "sds"."""
        return SDSSettings(guidance_scale=self.guidance_scale, t_range=self.t_range, weighting=self.weighting,
                           t_sampling=self.t_sampling, antithetic=self.antithetic)


def phi_and_grad(phi_fn: Callable[[Tensor], Tensor], x_t: Tensor) -> tuple[Tensor, Tensor]:
    """Steps 2-3: phi [B] = phi_fn(x_t) and gphi = d sum(phi) / d x_t [B, C, h, w] (phi_b depends on
    x_t[b] alone, so the sum's gradient holds each item's own). Runs with grad even under no_grad."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        phi = phi_fn(x)
        assert phi.shape == (x.shape[0],), f"phi: expected [B={x.shape[0]}], got {tuple(phi.shape)}"
        gphi = None
        if phi.requires_grad:
            gphi = torch.autograd.grad(phi.sum(), x, allow_unused=True)[0]
    if gphi is None:  # phi does not depend on x_t (lam = 0, or nothing rendered)
        gphi = torch.zeros_like(x_t)
    return phi.detach(), gphi.detach()


def control_variate(eps: Tensor, phi: Tensor, gphi: Tensor, sigma_t: Tensor) -> Tensor:
    """Step 4: h = eps phi - sigma_t gphi, for eps, gphi [B, C, h, w], phi [B], sigma_t [B, 1, 1, 1]."""
    return eps * phi.view(-1, 1, 1, 1) - sigma_t * gphi


def leave_one_out_mean(psi: Tensor, antithetic: bool) -> Tensor:
    """c [B]: for each camera the mean of psi over the cameras whose noise is independent of its own (all
    others; with antithetic pairs, b and b + B/2 share their noise up to sign, so the partner is left out
    too); 0 where there is none. c_b is then a function of the other cameras' x_t alone."""
    B = psi.shape[0]
    keep = ~torch.eye(B, dtype=torch.bool, device=psi.device)
    if antithetic:
        pairs = torch.arange(B // 2, device=psi.device)
        keep[pairs, pairs + B // 2] = False
        keep[pairs + B // 2, pairs] = False
    n = keep.sum(1)
    total = (keep.to(psi.dtype) * psi[None, :]).sum(1)
    return torch.where(n > 0, total / n.clamp_min(1), torch.zeros_like(total))


def solve_two(stats: Tensor, start: float) -> tuple[Tensor, Tensor]:
    """(mu0, mu1) [...] minimizing E[(a - mu0 h0 - mu1 h1)^2] from stats [5, ...] = E[a.h0], E[a.h1],
    E[h0.h0], E[h0.h1], E[h1.h1]; where h1 carries nothing (or the system is singular) mu1 = 0 and mu0
    is h0's own fit; where h0 carries nothing either, (start, 0)."""
    a0, a1, s00, s01, s11 = stats.double()
    det = s00 * s11 - s01 * s01
    ok = det > 1e-9 * (s00 * s11).clamp_min(1e-300)
    mu0 = torch.where(ok, (a0 * s11 - a1 * s01) / torch.where(ok, det, torch.ones_like(det)),
                      torch.where(s00 > 0, a0 / s00.clamp_min(1e-300), torch.full_like(a0, start)))
    mu1 = torch.where(ok, (a1 * s00 - a0 * s01) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(a1))
    return mu0.float(), mu1.float()


class SSD(EstimatorBase):
    """The SSD estimator: `SSD(settings, seed)(prior, render, cameras, vc, step) -> EstimatorResult`.

    Extra diagnostics: "mu" (scalar, or [C] per channel) the μ used this step, "phi" [B]; on base ism
    also ISM's "s", "delta_T", "prior_calls". Learned state: the μ EMAs (state_dict, reset)."""

    name = "ssd"
    settings_class = SSDSettings

    def __init__(self, settings: SSDSettings | None = None, seed: int = 0):
        super().__init__(settings, seed)
        self.reset()

    # ----- learned state ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the learned μ (EMAs of E[w^2 a.h] and E[w^2 h.h] per channel) and the Taylor weight."""
        super().reset()
        self.mu_ema = RatioEMA(("ema_ah", "ema_hh"))  # coefficients "one": E[w^2 a.h], E[w^2 h.h], each [C]
        self.ema_two: dict[str, Tensor] | None = None  # coefficients "two": TWO_STATS, each [C]

    def state_dict(self) -> dict[str, Any]:
        two = {f"ema_{k}": v for k, v in (self.ema_two or {}).items()}
        return {**super().state_dict(), **self.mu_ema.state(), **two}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu_ema.load(state)
        two = {k: state.get(f"ema_{k}") for k in TWO_STATS}
        self.ema_two = two if all(isinstance(v, Tensor) for v in two.values()) else None

    def current_mu(self, channels: int, device: torch.device) -> Tensor:
        """The μ to use now, [1, C, 1, 1] or [1, 1, 1, 1]; the setting until the EMAs have a step."""
        s = self.settings
        if s.mu_mode == "fixed":
            return torch.tensor(float(s.mu), device=device).view(1, 1, 1, 1)
        return self.mu_ema.ratio(s.mu, channels, device, s.mu_per_channel)

    def update_mu(self, a: Tensor, h: Tensor, w: Tensor) -> None:
        """Step 6: fold this step's E[w^2 a.h], E[w^2 h.h] per channel into the EMAs."""
        self.mu_ema.update(a, h, w, self.settings.ema_beta)

    def current_mus(self, channels: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """coefficients "two": (mu0, mu1), each [1, C, 1, 1] or [1, 1, 1, 1]."""
        s = self.settings
        if s.mu_mode == "fixed" or self.ema_two is None or self.ema_two["a0"].shape != (channels,):
            start = (float(s.mu), float(s.lam) if s.mu_mode == "fixed" else 0.0)
            return tuple(torch.tensor(v, device=device).view(1, 1, 1, 1) for v in start)
        stats = torch.stack([self.ema_two[k].to(device) for k in TWO_STATS])  # [5, C]
        shape = (1, channels, 1, 1) if s.mu_per_channel else (1, 1, 1, 1)
        mu0, mu1 = solve_two(stats if s.mu_per_channel else stats.sum(1), float(s.mu))
        return mu0.view(shape), mu1.view(shape)

    def update_two(self, a: Tensor, h0: Tensor, h1: Tensor, w: Tensor) -> None:
        """Fold this step's E[w^2 a.h0], E[w^2 a.h1], E[w^2 h0.h0], E[w^2 h0.h1], E[w^2 h1.h1] per channel
        into the EMAs."""
        w2 = w.float() ** 2

        def avg(x: Tensor, y: Tensor) -> Tensor:
            return (w2 * x * y).sum(dim=(2, 3)).mean(dim=0)  # [C]

        now = dict(zip(TWO_STATS, (avg(a, h0), avg(a, h1), avg(h0, h0), avg(h0, h1), avg(h1, h1))))
        if self.ema_two is None or self.ema_two["a0"].shape != now["a0"].shape:
            self.ema_two = now
            return
        beta = self.settings.ema_beta
        self.ema_two = {k: beta * self.ema_two[k].to(v.device) + (1 - beta) * v for k, v in now.items()}

    # ----- the step -----------------------------------------------------------------------------------
    def __call__(self, prior: DiffusionPrior, render: RenderOutput, cameras: CameraBatch, vc: ViewCond,
                 step: int) -> EstimatorResult:
        s = self.settings
        z = render_to_z(prior, render)
        extras: dict[str, Tensor] = {}
        # 1. The score term a, at x_t (base sds) or on ISM's path (base ism).
        if s.base == "sds":
            terms = sds_terms(prior, z, vc, s.sds_part(), step, self.rng)
            t, eps, w, a, x_phi = terms.t, terms.eps, terms.w, terms.e_cfg, terms.x_t
            taylor_term = lambda: sds_taylor_term(prior, z, vc, s.guidance_scale, terms)  # noqa: E731
        else:
            it = ism_terms(prior, z, vc, s.ism, step, self.rng)
            taylor_term = lambda: ism_taylor_term(prior, z, vc, s.ism, it)  # noqa: E731
            t, eps, w = it.t, it.eps, it.w
            a = it.e_cfg - it.e_s + eps
            x_phi = add_noise(prior.alphas_cumprod, z.detach().float(), eps, to_device(t, z.device))
            extras = {"s": it.s, "delta_T": torch.tensor(it.delta_T), "prior_calls": torch.tensor(it.prior_calls)}
        t_dev = to_device(t, z.device)
        sigma_t = (1 - prior.alphas_cumprod[t_dev].float()).sqrt().view(-1, 1, 1, 1)
        if s.coefficients == "two":
            r = self._two(prior, render, cameras, vc, z, t_dev, eps, w, a, x_phi, sigma_t, extras)
            return self._finish(z, t, w, r, taylor_term, extras)
        # 2-3. phi and its gradient w.r.t. x_t.
        phi, gphi = phi_and_grad(self._phi_fn(prior, t_dev, vc, render, cameras), x_phi)
        # 4. The control variate (minus sign: zero mean by Stein's identity).
        h = control_variate(eps, phi, gphi, sigma_t)
        # 5. g = w(t) (a - mu h)
        mu = self.current_mu(z.shape[1], z.device)
        r = a - mu * h
        # 6. Learn mu from this step for the next ones.
        if s.mu_mode == "learned":
            self.update_mu(a, h, w)
        extras.update(mu=mu.reshape(-1) if mu.numel() > 1 else mu.reshape(()), phi=phi)
        return self._finish(z, t, w, r, taylor_term, extras)

    def _finish(self, z: Tensor, t: Tensor, w: Tensor, r: Tensor, taylor_term: Callable[[], Tensor],
                extras: dict[str, Tensor]) -> EstimatorResult:
        """g = w (r - mu_T h_T) (the Taylor term only when asked), clamped and finished."""
        s = self.settings
        if s.taylor != "off":
            r, extras["taylor_mu"] = self.taylor.apply(s.taylor, r, taylor_term(), w)
        return finish(z, clamp_grad(w * r, s.grad_clamp), t, extras)

    def _two(self, prior, render, cameras, vc, z, t_dev, eps, w, a, x_phi, sigma_t, extras) -> Tensor:
        """Steps 2-6 with two coefficients (module doc): h0 = eps, h1 the centred Stein term; returns the
        residual a - mu0 h0 - mu1 h1."""
        s = self.settings
        similarity = BASELINES[s.baseline]
        psi, gpsi = phi_and_grad(lambda x: 1 - similarity(prior, x, t_dev, vc, render, cameras), x_phi)
        antithetic = s.antithetic if s.base == "sds" else s.ism.antithetic
        h0 = eps
        h1 = control_variate(eps, psi - leave_one_out_mean(psi, antithetic), gpsi, sigma_t)
        mu0, mu1 = self.current_mus(z.shape[1], z.device)
        r = a - mu0 * h0 - mu1 * h1
        if s.mu_mode == "learned":
            self.update_two(a, h0, h1, w)
        flat = (lambda m: m.reshape(-1) if m.numel() > 1 else m.reshape(()))
        extras.update(mu=flat(mu0), mu1=flat(mu1), phi=psi)
        return r

    def _phi_fn(self, prior: DiffusionPrior, t: Tensor, vc: ViewCond, render: RenderOutput,
                cameras: CameraBatch) -> Callable[[Tensor], Tensor]:
        """phi(x_t) = c0 + lam (1 - sim(x_t)) [B]; the constant c0 when lam = 0 (no prior call)."""
        s = self.settings
        if s.lam == 0:
            return lambda x: torch.full((x.shape[0],), float(s.c0), device=x.device)
        similarity = BASELINES[s.baseline]
        return lambda x: s.c0 + s.lam * (1 - similarity(prior, x, t, vc, render, cameras))
