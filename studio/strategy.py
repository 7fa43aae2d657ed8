"""Densification and pruning through gsplat's strategies (adaptive density control is not rewritten here).

`DensifySettings` is the user-facing dataclass; `Densifier` owns a gsplat strategy built from it plus the
strategy's running state dict, and is called by the scene around `loss.backward()`:

    render -> densifier.pre_backward -> loss.backward() -> optimizer steps -> densifier.post_backward

"default" is gsplat's `DefaultStrategy` (3DGS: clone small / split large Gaussians with large 2D
gradients, prune transparent ones, reset opacities periodically), with a hard cap on the count
(`CappedDefaultStrategy`: at `max_gaussians`, the largest gradients grow first and the rest wait). "mcmc" is gsplat's `MCMCStrategy`,
whose relocation kernel exists only in gsplat's CUDA extension: it is refused on other devices.

gsplat 1.5.3 never resets opacities: its test `step % reset_every == 0 & step > 0` parses as
`step % reset_every == (0 & step) > 0`, which is always false. The Densifier performs the reset itself
with gsplat's own `reset_opa` at the steps the 3DGS schedule names (a second reset in the same step, if a
later gsplat fixes this, is harmless: clamping twice to the same value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import duplicate, reset_opa, split
from torch import Tensor


@dataclass(frozen=True)
class DensifySettings:
    """When and how the Gaussians are grown and pruned (mapped onto gsplat's strategy fields)."""

    enabled: bool = True
    """grow and prune Gaussians during training"""
    strategy: Literal["default", "mcmc"] = "default"
    """gsplat strategy: default (3DGS clone / split / prune) or mcmc (needs CUDA)"""
    grow_grad2d: float = 2e-4
    """clone / split Gaussians whose mean 2D gradient (normalized screen units) exceeds this"""
    grow_scale3d: float = 0.01
    """largest scale (times the scene extent) below which a Gaussian is cloned, above which it is split"""
    prune_opa: float = 0.005
    """prune Gaussians whose opacity falls below this (mcmc: relocate them)"""
    prune_scale3d: float = 0.1
    """after the first opacity reset, prune Gaussians larger than this times the scene extent"""
    refine_start: int = 100
    """first step at which Gaussians are grown and pruned (exclusive, as in gsplat)"""
    refine_stop: int = 500
    """step at which growing, pruning and opacity resets stop (3DGS's densify_until_iter)"""
    max_gaussians: int = 20_000
    """hard cap of the default strategy: growth stops at this many Gaussians (the candidates with the
    largest 2D gradients grow first); pruning goes on"""
    refine_every: int = 100
    """grow and prune every this many steps"""
    reset_every: int = 3000
    """reset opacities to 2 * prune_opa every this many steps (0: never)"""
    pause_refine_after_reset: int = 0
    """steps after each opacity reset during which no growing happens"""
    revised_opacity: bool = False
    """split with the revised opacity of arXiv:2404.06109"""
    cap_max: int = 100_000
    """mcmc: largest number of Gaussians"""
    noise_lr: float = 5e5
    """mcmc: position noise scale (times the position learning rate)"""

    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed range."""
        if self.strategy not in ("default", "mcmc"):
            raise ValueError(f"densify.strategy: must be 'default' or 'mcmc', got {self.strategy!r}")
        _check("densify.grow_grad2d", self.grow_grad2d, 0.0, 1.0)
        _check("densify.grow_scale3d", self.grow_scale3d, 0.0, 10.0)
        _check("densify.prune_opa", self.prune_opa, 0.0, 0.5)
        _check("densify.prune_scale3d", self.prune_scale3d, 0.0, 100.0)
        _check("densify.refine_start", self.refine_start, 0, 10_000_000)
        _check("densify.refine_stop", self.refine_stop, 0, 10_000_000)
        _check("densify.refine_every", self.refine_every, 1, 1_000_000)
        _check("densify.max_gaussians", self.max_gaussians, 1, 100_000_000)
        _check("densify.reset_every", self.reset_every, 0, 10_000_000)
        _check("densify.pause_refine_after_reset", self.pause_refine_after_reset, 0, 10_000_000)
        _check("densify.cap_max", self.cap_max, 1, 100_000_000)
        _check("densify.noise_lr", self.noise_lr, 0.0, 1e9)


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not (lo <= value <= hi):
        raise ValueError(f"{name}: must lie in [{lo}, {hi}], got {value!r}")


_NEVER = 2**62  # gsplat takes `step % reset_every`; "never" becomes a period no run reaches


class CappedDefaultStrategy(DefaultStrategy):
    """gsplat's DefaultStrategy with a hard cap on the number of Gaussians (gsplat's has none)."""

    def __init__(self, *, max_gaussians: int, **kw: Any):
        super().__init__(**kw)
        self.max_gaussians = int(max_gaussians)

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state, step):
        """DefaultStrategy's clone / split, limited to the candidates that fit under the cap. Each clone
        or split adds one Gaussian net, so at most max_gaussians - N of them run: those with the largest
        mean 2D gradient."""
        grads = state["grad2d"] / state["count"].clamp_min(1)  # [N]
        n = grads.shape[0]
        high = grads > self.grow_grad2d
        small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_split = high & ~small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
        is_dupli = high & small
        wanted = is_dupli | is_split
        room = max(0, self.max_gaussians - n)
        if int(wanted.sum()) > room:
            keep = torch.zeros_like(wanted)
            if room > 0:
                score = torch.where(wanted, grads, torch.full_like(grads, -1.0))
                keep[torch.topk(score, room).indices] = True
            is_dupli, is_split = is_dupli & keep, is_split & keep
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=grads.device)])
        if n_split > 0:  # clones are never split in the same step
            split(params=params, optimizers=optimizers, state=state, mask=is_split,
                  revised_opacity=self.revised_opacity)
        return n_dupli, n_split


def _gsplat_strategy(s: DensifySettings):
    if s.strategy == "mcmc":
        return MCMCStrategy(cap_max=s.cap_max, noise_lr=s.noise_lr, refine_start_iter=s.refine_start,
                            refine_stop_iter=s.refine_stop, refine_every=s.refine_every,
                            min_opacity=s.prune_opa)
    return CappedDefaultStrategy(
        max_gaussians=s.max_gaussians, prune_opa=s.prune_opa, grow_grad2d=s.grow_grad2d, grow_scale3d=s.grow_scale3d,
        prune_scale3d=s.prune_scale3d, refine_start_iter=s.refine_start, refine_stop_iter=s.refine_stop,
        reset_every=s.reset_every or _NEVER, refine_every=s.refine_every,
        pause_refine_after_reset=s.pause_refine_after_reset, revised_opacity=s.revised_opacity,
        absgrad=False, verbose=False, key_for_gradient="means2d",
    )


def check_device(settings: DensifySettings, device: torch.device) -> None:
    """Refuse a strategy that cannot run on `device` (mcmc needs gsplat's CUDA extension)."""
    if settings.enabled and settings.strategy == "mcmc" and torch.device(device).type != "cuda":
        raise ValueError(
            f"densify.strategy: 'mcmc' needs a CUDA GPU (gsplat's relocation kernel is CUDA-only) and this "
            f"scene is on {torch.device(device).type}; use densify.strategy=default"
        )


class Densifier:
    """A gsplat strategy and its running state (the dict gsplat reads and writes).

    Args:
        settings: validated DensifySettings
        scene_scale: the scene extent that gsplat's scale thresholds are relative to
        device: where the scene lives (mcmc is refused off CUDA)
    """

    def __init__(self, settings: DensifySettings, scene_scale: float, device: torch.device | str):
        settings.validate()
        check_device(settings, device)
        self.settings = settings
        self.scene_scale = float(scene_scale)
        self.device = torch.device(device)
        self.strategy = _gsplat_strategy(settings)
        self.state = self._fresh_state()

    def _fresh_state(self) -> dict[str, Any]:
        if self.settings.strategy == "mcmc":
            return self.strategy.initialize_state()
        return self.strategy.initialize_state(scene_scale=self.scene_scale)

    def restart(self, scene_scale: float) -> None:
        """Forget the accumulated statistics (new parameters), with a possibly new scene scale."""
        self.scene_scale = float(scene_scale)
        self.state = self._fresh_state()

    def check_sanity(self, params: torch.nn.ParameterDict, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """gsplat's own check: one optimizer with one param group per trainable parameter."""
        self.strategy.check_sanity(params, optimizers)

    def replace_settings(self, settings: DensifySettings) -> None:
        """New (validated) thresholds keep the accumulated statistics; a new strategy kind starts afresh."""
        check_device(settings, self.device)
        kind_changed = settings.strategy != self.settings.strategy
        self.settings = settings
        self.strategy = _gsplat_strategy(settings)
        if kind_changed:
            self.state = self._fresh_state()

    def pre_backward(self, params, optimizers, step: int, info: dict[str, Any]) -> None:
        """Before loss.backward(): lets gsplat keep the gradient of info["means2d"]."""
        if self.settings.enabled and self.settings.strategy == "default":
            self.strategy.step_pre_backward(params, optimizers, self.state, step, info)

    def post_backward(self, params, optimizers, step: int, info: dict[str, Any], means_lr: float) -> None:
        """After the optimizer step: accumulate 2D gradients, and grow / prune / reset when due.

        Args:
            means_lr: the position learning rate of this step (mcmc scales its noise by it)
        """
        s = self.settings
        if not s.enabled:
            return
        if s.strategy == "mcmc":
            self.strategy.step_post_backward(params, optimizers, self.state, step, info, lr=means_lr)
            return
        if step < s.refine_stop:
            m2d: Tensor = info.get("means2d")
            if m2d is None or m2d.grad is None:
                raise RuntimeError(
                    "densify: info['means2d'] has no gradient; call pre_backward(step, info) before "
                    "loss.backward() and render with gradients enabled (or set densify.enabled=false)"
                )
        self.strategy.step_post_backward(params, optimizers, self.state, step, info, packed=False)
        if s.reset_every and 0 < step < s.refine_stop and step % s.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=self.state, value=s.prune_opa * 2.0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.settings.strategy,
            "state": {k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in self.state.items()},
        }

    def load_state_dict(self, sd: dict[str, Any], num_gaussians: int | None = None) -> None:
        """Restore statistics; with `num_gaussians`, per-Gaussian ones must have that length."""
        if sd["strategy"] != self.settings.strategy:
            # The statistics of another strategy mean nothing to this one.
            self.state = self._fresh_state()
            return
        state = {k: (v.to(self.device).clone() if isinstance(v, Tensor) else v) for k, v in sd["state"].items()}
        for key in ("grad2d", "count", "radii"):
            t = state.get(key)
            if num_gaussians is not None and isinstance(t, Tensor) and t.shape[:1] != (num_gaussians,):
                raise ValueError(f"densifier state: {key} holds {t.shape[0] if t.dim() else 0} entries for "
                                 f"{num_gaussians} Gaussians")
        self.state = state
