"""GaussianScene: the raw parameters, their optimizers and the densifier.

Parameters keep gsplat's layout in a `torch.nn.ParameterDict` (`scene.params`):
    means [N, 3], scales [N, 3] (log), quats [N, 4] (wxyz, unnormalized), opacities [N] (logit),
    sh0 [N, 1, 3], shN [N, K-1, 3] (K = (sh_degree + 1)^2; K - 1 = 0 rows at degree 0)
with one Adam per parameter (`scene.optimizers[name]`), so gsplat's strategies can resize them.

One step, as the session runs it:

    params = scene.to_params()                  # activated renderers.GaussianParams
    out = renderer(params, cameras, bg)
    scene.pre_backward(step, out.info)
    loss.backward()
    scene.optimizer_step(step)                  # learning rates of `step`, then Adam
    scene.post_backward(step, out.info)         # densify / prune / reset when due
    scene.zero_grad()

Learning rates are a pure function of the step (`lr_at`), so a resumed run gets the same ones.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from renderers.types import GaussianParams

from . import initializers as init_mod
from .initializers import RAW_KEYS
from .scene_checks import SceneError, check_state, checked_raw as _checked
from .strategy import Densifier, DensifySettings

__all__ = ["DensifySettings", "GaussianScene", "OptimSettings", "SceneError", "check_state", "lr_at"]


@dataclass(frozen=True)
class OptimSettings:
    """Adam learning rates per parameter group, decayed exponentially from *_lr to *_lr_final."""

    means_lr: float = 1e-3
    """position learning rate at step 0, times the scene extent"""
    means_lr_final: float = 1e-5
    """position learning rate at max_steps, times the scene extent"""
    scales_lr: float = 5e-3
    """log-scale learning rate at step 0"""
    scales_lr_final: float = 1e-3
    """log-scale learning rate at max_steps"""
    quats_lr: float = 1e-3
    """rotation learning rate at step 0"""
    quats_lr_final: float = 2e-4
    """rotation learning rate at max_steps"""
    opacities_lr: float = 5e-2
    """opacity-logit learning rate at step 0"""
    opacities_lr_final: float = 5e-2
    """opacity-logit learning rate at max_steps"""
    sh0_lr: float = 5e-3
    """base colour (degree-0 SH) learning rate at step 0"""
    sh0_lr_final: float = 3e-3
    """base colour learning rate at max_steps"""
    shN_lr_ratio: float = 0.05
    """higher SH coefficients learn at this fraction of the colour rate (3DGS: 1/20)"""
    max_steps: int = 1000
    """steps over which every rate decays from its initial to its final value (held there after)"""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's moment decay rates"""
    eps: float = 1e-15
    """Adam's epsilon (3DGS and gsplat use 1e-15)"""

    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed range."""
        for name in ("means", "scales", "quats", "opacities", "sh0"):
            for f in (f"{name}_lr", f"{name}_lr_final"):
                _check(f"optim.{f}", getattr(self, f), 0.0, 10.0)
        _check("optim.shN_lr_ratio", self.shN_lr_ratio, 0.0, 10.0)
        _check("optim.max_steps", self.max_steps, 1, 100_000_000)
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas: two values, got {self.betas!r}")
        for i, b in enumerate(self.betas):
            _check(f"optim.betas[{i}]", b, 0.0, 0.999999)
        _check("optim.eps", self.eps, 0.0, 1.0)


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not (lo <= value <= hi):
        raise ValueError(f"{name}: must lie in [{lo}, {hi}], got {value!r}")


def lr_at(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """Log-linear decay: lr_init at step 0, lr_final at max_steps and after (3DGS's expon_lr_func)."""
    if lr_init == lr_final:
        return lr_init
    if lr_init <= 0.0 or lr_final <= 0.0:  # a zero end point: linear, since log(0) is undefined
        t = min(max(step / max_steps, 0.0), 1.0)
        return (1.0 - t) * lr_init + t * lr_final
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp((1.0 - t) * math.log(lr_init) + t * math.log(lr_final))


def group_lr(settings: OptimSettings, name: str, step: int, extent: float) -> float:
    """The learning rate of parameter group `name` at `step`."""
    s = settings
    if name == "shN":
        return s.shN_lr_ratio * lr_at(step, s.sh0_lr, s.sh0_lr_final, s.max_steps)
    lr = lr_at(step, getattr(s, f"{name}_lr"), getattr(s, f"{name}_lr_final"), s.max_steps)
    return lr * extent if name == "means" else lr


class GaussianScene:
    """Raw Gaussian parameters, one Adam per group, and a Densifier (gsplat strategy + state).

    Args:
        raw: tensors in gsplat's layout (RAW_KEYS), any device; copied
        extent: scene size in world units (position lr scale and gsplat's scene_scale)
        optim: learning rates and Adam settings
        densify: growth and pruning settings
        device: where the parameters live
    """

    def __init__(self, raw: Mapping[str, Tensor], *, extent: float, optim: OptimSettings = OptimSettings(),
                 densify: DensifySettings = DensifySettings(), device: torch.device | str = "cpu"):
        optim.validate()
        densify.validate()
        if not (extent > 0 and math.isfinite(extent)):
            raise SceneError(f"scene extent must be a positive number of world units, got {extent!r}")
        self.device = torch.device(device)
        self.optim_settings = optim
        self.extent = float(extent)
        self.densifier = Densifier(densify, self.extent, self.device)
        self._initial = {k: v.detach().to("cpu", torch.float32).clone() for k, v in _checked(raw).items()}
        self._install(self._initial)

    # ----- construction -----------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, init: Any, optim: OptimSettings = OptimSettings(),
                      densify: DensifySettings = DensifySettings(), *, seed: int = 0,
                      device: torch.device | str = "cpu", prompt: str = "") -> "GaussianScene":
        """Build from an InitSettings-like object (kind ball | shell | box | ply | mesh | shap-e, num, radius,
        opacity, sh_degree, path, ...). A PLY keeps its own SH degree; a plain point-cloud PLY gets one
        Gaussian per point; shap-e makes its mesh from init.prompt, or `prompt` when that is empty."""
        raw, extent = raw_from_settings(init, seed, prompt)
        return cls(raw, extent=extent, optim=optim, densify=densify, device=device)

    @classmethod
    def ball(cls, n: int = 2000, radius: float = 0.6, *, seed: int = 0, opacity: float = 0.1,
             scale: float | None = None, sh_degree: int = 0, colors: str = "random", **kw) -> "GaussianScene":
        """n Gaussians uniform in a ball (see studio.initializers.ball); kw: optim, densify, device."""
        raw, extent = init_mod.ball(n, radius, seed=seed, opacity=opacity, scale=scale, sh_degree=sh_degree,
                                    colors=colors)
        return cls(raw, extent=extent, **kw)

    @classmethod
    def shell(cls, n: int = 2000, radius: float = 0.6, *, seed: int = 0, opacity: float = 0.1,
              scale: float | None = None, sh_degree: int = 0, colors: str = "random", **kw) -> "GaussianScene":
        """n Gaussians on a sphere shell (see studio.initializers.shell); kw: optim, densify, device."""
        raw, extent = init_mod.shell(n, radius, seed=seed, opacity=opacity, scale=scale, sh_degree=sh_degree,
                                     colors=colors)
        return cls(raw, extent=extent, **kw)

    @classmethod
    def box(cls, n: int = 2000, half_size: float = 0.5, *, seed: int = 0, opacity: float = 0.1,
            scale: float | None = None, sh_degree: int = 0, colors: str = "random", **kw) -> "GaussianScene":
        """n Gaussians uniform in a cube (see studio.initializers.box); kw: optim, densify, device."""
        raw, extent = init_mod.box(n, half_size, seed=seed, opacity=opacity, scale=scale, sh_degree=sh_degree,
                                   colors=colors)
        return cls(raw, extent=extent, **kw)

    @classmethod
    def from_points(cls, xyz: Tensor, rgb: Tensor | None = None, *, seed: int = 0, opacity: float = 0.1,
                    scale: float | None = None, sh_degree: int = 0, **kw) -> "GaussianScene":
        """One Gaussian per point: xyz [N, 3], rgb [N, 3] in [0, 1] or uint8; kw: optim, densify, device."""
        raw, extent = init_mod.points(xyz, rgb, opacity=opacity, scale=scale, sh_degree=sh_degree, seed=seed)
        return cls(raw, extent=extent, **kw)

    @classmethod
    def from_ply(cls, path: str | os.PathLike, *, opacity: float = 0.1, sh_degree: int = 0,
                 **kw) -> "GaussianScene":
        """A 3DGS PLY exactly as stored, or a plain point-cloud PLY (opacity, sh_degree apply to the latter).
        kw: optim, densify, device."""
        raw, extent = _raw_from_ply(path, opacity, sh_degree)
        return cls(raw, extent=extent, **kw)

    def _install(self, raw: Mapping[str, Tensor]) -> None:
        """Replace every parameter with `raw` and start fresh optimizers and densifier statistics."""
        self.params = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(raw[k].detach().to(self.device, torch.float32).clone()) for k in RAW_KEYS}
        )
        s = self.optim_settings
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            k: torch.optim.Adam([{"params": [p], "lr": group_lr(s, k, 0, self.extent), "name": k}],
                                betas=s.betas, eps=s.eps)
            for k, p in self.params.items()
        }
        self.densifier.restart(self.extent)
        self.densifier.check_sanity(self.params, self.optimizers)

    def reset(self, init: Any = None, *, seed: int = 0, prompt: str = "") -> None:
        """Re-initialize: from `init` (InitSettings-like) with `seed` (and `prompt`, for shap-e), or, with
        init=None, to the exact tensors this scene started from. Optimizer moments and densifier
        statistics start afresh."""
        if init is not None:
            raw, extent = raw_from_settings(init, seed, prompt)
            self._initial = {k: v.detach().to("cpu", torch.float32).clone() for k, v in _checked(raw).items()}
            self.extent = float(extent)
        self._install(self._initial)

    # ----- views --------------------------------------------------------------------------------------
    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.params["shN"].shape[1] + 1))) - 1

    @property
    def densify_settings(self) -> DensifySettings:
        return self.densifier.settings

    def to_params(self) -> GaussianParams:
        """Activated tensors for the renderers (differentiable w.r.t. the raw parameters):
        means, quats as stored, exp(scales), sigmoid(opacities), sh = cat(sh0, shN) [N, K, 3]."""
        p = self.params
        return GaussianParams(means=p["means"], quats=p["quats"], scales=torch.exp(p["scales"]),
                              opacities=torch.sigmoid(p["opacities"]), sh=torch.cat([p["sh0"], p["shN"]], dim=1))

    def raw(self) -> dict[str, Tensor]:
        """Detached raw tensors (gsplat layout), e.g. for export_splats."""
        return {k: v.detach() for k, v in self.params.items()}

    def lrs(self, step: int) -> dict[str, float]:
        """Learning rate of each group at `step`."""
        return {k: group_lr(self.optim_settings, k, step, self.extent) for k in RAW_KEYS}

    # ----- the step -------------------------------------------------------------------------------------
    def pre_backward(self, step: int, info: dict[str, Any]) -> None:
        """Call between rendering and loss.backward() with the renderer's out.info."""
        self.densifier.pre_backward(self.params, self.optimizers, step, info)

    def optimizer_step(self, step: int) -> None:
        """Set each group's learning rate for `step`, then step every Adam."""
        for k, opt in self.optimizers.items():
            opt.param_groups[0]["lr"] = group_lr(self.optim_settings, k, step, self.extent)
            opt.step()

    def post_backward(self, step: int, info: dict[str, Any]) -> None:
        """Call after optimizer_step: gsplat's strategy grows / prunes / resets when due."""
        self.densifier.post_backward(self.params, self.optimizers, step, info,
                                     means_lr=group_lr(self.optim_settings, "means", step, self.extent))

    strategy_pre_backward = pre_backward
    strategy_post_backward = post_backward

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def nonfinite_grads(self) -> int:
        """Number of NaN / inf gradient entries over all groups (one host sync)."""
        counts = [(~torch.isfinite(p.grad)).sum() for p in self.params.values() if p.grad is not None]
        return int(torch.stack(counts).sum()) if counts else 0

    def clip_grads(self, max_norm: float) -> None:
        """Clip the gradient norm of each parameter group separately to `max_norm`."""
        for p in self.params.values():
            if p.grad is not None:
                torch.nn.utils.clip_grad_norm_([p], max_norm)

    # ----- settings -------------------------------------------------------------------------------------
    def set_optim_settings(self, optim: OptimSettings) -> None:
        """New (validated) rates apply from the next optimizer_step; Adam's moments are kept."""
        self.optim_settings = optim
        for opt in self.optimizers.values():
            opt.param_groups[0]["betas"] = optim.betas
            opt.param_groups[0]["eps"] = optim.eps

    def set_densify_settings(self, densify: DensifySettings) -> None:
        """New (validated) thresholds keep the accumulated statistics (a new strategy kind starts afresh)."""
        self.densifier.replace_settings(densify)

    def set_sh_degree(self, degree: int) -> None:
        """Grow (new coefficients zero) or truncate shN to `degree` (0..3); its Adam moments follow."""
        k1 = init_mod.num_sh_rest(degree)
        old = self.params["shN"]
        if old.shape[1] == k1:
            return

        def fit(t: Tensor) -> Tensor:  # [N, K_old - 1, 3] -> [N, k1, 3]
            if t.shape[1] >= k1:
                return t[:, :k1].clone()
            return torch.cat([t, t.new_zeros(t.shape[0], k1 - t.shape[1], 3)], dim=1)

        new = torch.nn.Parameter(fit(old.detach()))
        opt = self.optimizers["shN"]
        state = opt.state.pop(old, {})
        opt.state[new] = {key: (fit(v) if key != "step" else v) for key, v in state.items()}
        opt.param_groups[0]["params"] = [new]
        self.params["shN"] = new

    # ----- state ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters, Adam states, densifier state and extent (copies: later steps do not change them).
        Settings are not included: they belong to the config."""
        return {
            "version": 1,
            "extent": self.extent,
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "optimizers": {k: copy.deepcopy(opt.state_dict()) for k, opt in self.optimizers.items()},
            "densifier": self.densifier.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what state_dict saved; the current settings stay (betas / eps re-applied).
        Raises SceneError (see `check_state`) before anything changes."""
        check_state(state)
        params = _checked(state["params"])
        self.extent = float(state["extent"])
        self._install(params)
        for k, opt in self.optimizers.items():
            # Adam's moments from the file, its hyperparameters from this scene's settings (betas and eps
            # below; the rest are torch's defaults, as the studio never changes them), except the saved lr:
            # the schedule set it for the saved step, and a restored scene must equal the one saved.
            saved = copy.deepcopy(state["optimizers"][k]["state"])  # Adam may alias loaded tensors
            groups = opt.state_dict()["param_groups"]
            lr = _saved_lr(state["optimizers"][k])
            if lr is not None:
                groups[0]["lr"] = lr
            opt.load_state_dict({"state": saved, "param_groups": groups})
        self.set_optim_settings(self.optim_settings)
        self.densifier.load_state_dict(state["densifier"], self.num_gaussians)

    def is_finite(self) -> bool:
        """Whether every parameter is finite (one host sync per group)."""
        return all(bool(torch.isfinite(p).all()) for p in self.params.values())


def _saved_lr(saved: Mapping[str, Any]) -> float | None:
    """The learning rate in a saved Adam state, when it is a usable one."""
    groups = saved.get("param_groups")
    lr = groups[0].get("lr") if isinstance(groups, list) and groups and isinstance(groups[0], Mapping) else None
    usable = isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0
    return float(lr) if usable else None


def to_host(obj: Any) -> Any:
    """Nested dicts / lists of tensors with every tensor in host memory (a copy only where it moves)."""
    if isinstance(obj, Tensor):
        return obj.to("cpu")
    if isinstance(obj, dict):
        return {k: to_host(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_host(v) for v in obj]
    return obj


def _raw_from_ply(path: str | os.PathLike, opacity: float, sh_degree: int) -> tuple[dict[str, Tensor], float]:
    """A splat file (3DGS or compressed PLY, .splat) as stored, or one Gaussian per point of a point cloud."""
    from .readers import is_gaussian_file, read_gaussians, read_point_ply

    if is_gaussian_file(path):
        raw = read_gaussians(path)
        return raw, init_mod.extent_of(raw["means"])
    xyz, rgb = read_point_ply(path)
    return init_mod.points(xyz, rgb, opacity=opacity, sh_degree=sh_degree)


def raw_from_settings(init: Any, seed: int, prompt: str = "") -> tuple[dict[str, Tensor], float]:
    """Raw tensors and extent from an InitSettings-like object (kind, num, radius, opacity, sh_degree, path;
    mesh and shap-e read more, see studio.mesh_init). `prompt`: what shap-e makes when init.prompt is empty."""
    kind = init.kind
    common = dict(seed=seed, opacity=init.opacity, sh_degree=init.sh_degree)
    if kind == "ball":
        return init_mod.ball(init.num, init.radius, **common)
    if kind == "shell":
        return init_mod.shell(init.num, init.radius, **common)
    if kind == "box":
        return init_mod.box(init.num, init.radius, **common)
    if kind == "ply":
        return _raw_from_ply(init.path, init.opacity, init.sh_degree)
    if kind in ("mesh", "shap-e"):
        from . import mesh_init

        if kind == "mesh":
            return mesh_init.raw_from_mesh_file(init, seed)
        return mesh_init.raw_from_shap_e(init, prompt, seed)
    raise SceneError(f"init.kind: must be ball, shell, box, ply, mesh or shap-e, got {kind!r}")
