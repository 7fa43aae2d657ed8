"""Checks on scene tensors and saved scene states, before anything is built from them.

`checked_raw` is the shape contract of raw Gaussians (gsplat layout); `check_state` reads a saved
`GaussianScene.state_dict` (a checkpoint's) and raises SceneError, naming the part, unless loading it can
neither fail nor leave a scene that renders to NaN: shapes, dtypes and values of the parameters
(`initializers.raw_value_problem`), Adam's moments and the densifier's statistics.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor

from .initializers import RAW_KEYS, raw_value_problem

__all__ = ["SceneError", "check_state", "checked_raw"]

PER_GAUSSIAN_STATS = ("grad2d", "count", "radii")  # densifier statistics with one entry per Gaussian
REQUIRED_STATS = {"default": ("grad2d", "count", "scene_scale"), "mcmc": ("binoms",)}  # gsplat's initialize_state


class SceneError(ValueError):
    """A scene that cannot be built or restored; the message says what to do."""


def checked_raw(raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`raw` as a dict once every key of RAW_KEYS is there with consistent shapes; SceneError otherwise."""
    missing = [k for k in RAW_KEYS if k not in raw]
    if missing:
        raise SceneError(f"scene tensors lack {', '.join(missing)} (expected {', '.join(RAW_KEYS)})")
    n = raw["means"].shape[0]
    k1 = raw["shN"].shape[1] if raw["shN"].dim() == 3 else -1
    expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3),
                "shN": (n, k1, 3)}
    for k, shape in expected.items():
        if tuple(raw[k].shape) != shape:
            raise SceneError(f"scene tensor {k}: expected shape {shape} (N = {n} from means), "
                             f"got {tuple(raw[k].shape)}")
    if k1 not in (0, 3, 8, 15):
        raise SceneError(f"scene tensor shN: K - 1 must be 0, 3, 8 or 15 (SH degree 0..3), got {k1}")
    return dict(raw)


def check_state(state: Any) -> None:
    """Raise SceneError unless `state` is a scene state `GaussianScene.load_state_dict` can restore.
    Reads only; nothing is built."""
    if not isinstance(state, Mapping) or state.get("version") != 1 or not isinstance(state.get("params"), Mapping):
        raise SceneError("scene state: unknown format (expected the dict GaussianScene.state_dict writes)")
    extent = state.get("extent")
    if not _positive_number(extent):
        raise SceneError(f"scene state: extent must be a positive number of world units, got {str(extent)[:40]!r}")
    params = state["params"]
    bad = [k for k in RAW_KEYS if k in params and not (isinstance(params[k], Tensor) and params[k].is_floating_point())]
    if bad:
        raise SceneError(f"scene state: params {', '.join(bad)} must be float tensors")
    params = checked_raw(params)
    problem = raw_value_problem(params, lambda k, c: f"params.{k}" + (f"[:, {c}]" if c is not None else ""))
    if problem is not None:
        raise SceneError(f"scene state: {problem}")
    optimizers = state.get("optimizers")
    if not isinstance(optimizers, Mapping):
        raise SceneError("scene state: no optimizer states")
    for k, p in params.items():
        _check_adam(k, p, optimizers.get(k))
    _check_densifier(state.get("densifier"), params["means"].shape[0])


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and math.isfinite(x)


def _finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def _check_adam(name: str, param: Tensor, saved: Any) -> None:
    """One Adam's saved state: a slot for parameter 0 (or none yet) with step, exp_avg and exp_avg_sq
    float32, finite, the moments of the parameter's shape (torch's load_state_dict checks none of it)."""
    slots = saved.get("state") if isinstance(saved, Mapping) else None
    if not isinstance(slots, Mapping) or any(key != 0 for key in slots):
        raise SceneError(f"scene state: no Adam state for {name} (expected a state for its one parameter)")
    for slot in slots.values():
        if not isinstance(slot, Mapping):
            raise SceneError(f"scene state: Adam's state of {name} is a {type(slot).__name__}, not a dict")
        for key, shape in (("step", ()), ("exp_avg", tuple(param.shape)), ("exp_avg_sq", tuple(param.shape))):
            t = slot.get(key)
            if not isinstance(t, Tensor) or t.dtype != torch.float32:
                kind = t.dtype if isinstance(t, Tensor) else type(t).__name__
                raise SceneError(f"scene state: Adam's {key} of {name} is {kind}, "
                                 "not a float32 tensor")
            if tuple(t.shape) != shape:
                raise SceneError(f"scene state: Adam's {key} of {name} has shape {tuple(t.shape)}, the parameter "
                                 f"{tuple(param.shape)}")
            if not _finite(t) or (key != "exp_avg" and bool((t < 0).any())):
                raise SceneError(f"scene state: Adam's {key} of {name} holds {int((~torch.isfinite(t)).sum())} "
                                 f"NaN or inf values{'' if key == 'exp_avg' else ' or negative ones'}")


def _check_densifier(densifier: Any, n: int) -> None:
    if not isinstance(densifier, Mapping) or "strategy" not in densifier or \
            not isinstance(densifier.get("state"), Mapping):
        raise SceneError("scene state: no densifier state (expected strategy and state)")
    missing = [k for k in REQUIRED_STATS.get(densifier["strategy"], ()) if k not in densifier["state"]]
    if missing:
        raise SceneError(f"scene state: the {densifier['strategy']} densifier's state lacks {', '.join(missing)}")
    for key, value in densifier["state"].items():
        if key == "scene_scale" and not _positive_number(value):
            raise SceneError(f"scene state: densifier scene_scale must be a positive number, got {str(value)[:40]!r}")
        if key in PER_GAUSSIAN_STATS and value is not None and not (
                isinstance(value, Tensor) and value.dtype == torch.float32 and tuple(value.shape[:1]) == (n,)):
            got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise SceneError(f"scene state: densifier {key} must be float32 with one entry for each of the {n} "
                             f"Gaussians, got {got}")
        if key == "binoms" and not (isinstance(value, Tensor) and value.dtype == torch.float32 and value.dim() == 2):
            raise SceneError("scene state: the mcmc densifier's binoms must be a float32 table")
        if isinstance(value, Tensor) and value.is_floating_point() and not _finite(value):
            raise SceneError(f"scene state: densifier {key} holds {int((~torch.isfinite(value)).sum())} NaN or inf "
                             "values")
