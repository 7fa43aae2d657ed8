"""What SDS, ISM and SSD share besides base.py: the render -> z step, the timestep weights, the
validation of a timestep range, the random streams, and the settings / state plumbing.

Random streams (documented because tests replay them): an estimator built with `seed` draws its
timesteps from `torch.Generator().manual_seed(seed)` on the CPU (the number of ISM inversion steps
depends on t, so t must be known on the host without a device sync) and its noise from
`torch.Generator(device).manual_seed(seed + NOISE_SEED_OFFSET)` on the prior's device, as
`torch.randn(z.shape, generator=..., device=z.device)` in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from renderers.types import RenderOutput

from ..priors.base import DiffusionPrior
from .base import SettingsError, check_range
from .taylor import TAYLOR_MODES, TaylorWeight

NOISE_SEED_OFFSET = 7919  # keeps the noise stream distinct from the timestep stream of the same seed
WEIGHTINGS = ("sds", "uniform", "fantasia", "lucid")


def render_to_z(prior: DiffusionPrior, render: RenderOutput) -> Tensor:
    """z = prior.encode(rgb), differentiable w.r.t. render.rgb [B, H, W, 3] -> z [B, C, h, w]."""
    rgb = render.rgb
    if rgb.dim() != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"render.rgb: expected [B, H, W, 3], got {tuple(rgb.shape)}")
    z = prior.encode(rgb.permute(0, 3, 1, 2))
    if z.dim() != 4 or z.shape[0] != rgb.shape[0]:
        raise ValueError(f"{prior.name}.encode: expected z [B={rgb.shape[0]}, C, h, w], got {tuple(z.shape)}")
    return z


def timestep_weight(kind: str, ab_t: Tensor) -> Tensor:
    """w(t) for ab_t = alphas_cumprod[t] [B] -> [B, 1, 1, 1] (METHODS.md, SDS step 3).

    "sds": 1 - ab_t (DreamFusion / threestudio default); "uniform": 1; "fantasia": sqrt(ab_t) (1 - ab_t);
    "lucid": sqrt((1 - ab_t) / ab_t) (LucidDreamer's).
    """
    ab = ab_t.float().view(-1, 1, 1, 1)
    if kind == "sds":
        return 1 - ab
    if kind == "uniform":
        return torch.ones_like(ab)
    if kind == "fantasia":
        return ab.sqrt() * (1 - ab)
    if kind == "lucid":
        return ((1 - ab) / ab).sqrt()
    raise SettingsError(f"weighting: must be one of {', '.join(WEIGHTINGS)}, got {kind!r}")


def frac_to_step(frac: float, T: int) -> int:
    """A fraction of T as a timestep index in [0, T - 1]; the small epsilon keeps 0.98 * 1000 at 980."""
    return min(max(int(frac * T + 1e-6), 0), T - 1)


def check_t_range(owner: str, name: str, value: Any) -> None:
    """A (lo, hi) pair of fractions of T with 0 <= lo <= hi <= 1."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if not ok or not (0.0 <= float(value[0]) <= float(value[1]) <= 1.0):
        raise SettingsError(f"{owner}.{name}: need 0 <= lo <= hi <= 1 (fractions of T), got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{owner}.{name}: must be one of {', '.join(choices)}, got {value!r}")


def check_guidance(owner: str, value: float) -> None:
    check_range(owner, "guidance_scale", value, 0.0, 1000.0)


def check_taylor(owner: str, value: str) -> None:
    check_choice(owner, "taylor", value, TAYLOR_MODES)


class RandomStreams:
    """The estimator's own generators: timesteps on the CPU, noise on the prior's device (see module doc)."""

    def __init__(self, seed: int = 0):
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)
        self.timesteps = torch.Generator().manual_seed(self.seed)
        self._noise: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}

    def noise_generator(self, device: torch.device) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self._noise:
            gen = torch.Generator(device=device).manual_seed(self.seed + NOISE_SEED_OFFSET)
            if key in self._pending:
                gen.set_state(self._pending.pop(key))
            self._noise[key] = gen
        return self._noise[key]

    def randn(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Standard normal noise [shape], float32, on `device`."""
        return torch.randn(shape, generator=self.noise_generator(device), device=device, dtype=torch.float32)

    def randint(self, lo: int, hi_inclusive: int, n: int) -> Tensor:
        """n timesteps uniform on {lo, ..., hi_inclusive}, long, on the CPU."""
        return torch.randint(lo, hi_inclusive + 1, (n,), generator=self.timesteps)

    def randint_stratified(self, lo: int, hi_inclusive: int, n: int) -> Tensor:
        """n timesteps, one from each of n equal strata of [lo, hi_inclusive + 1), in random order: each
        is still uniform on {lo, ..., hi_inclusive} (the strata's mixture is the whole range), but the
        batch covers the range evenly. long, on the CPU."""
        width = hi_inclusive + 1 - lo
        u = torch.rand(n, generator=self.timesteps, dtype=torch.float64)
        order = torch.randperm(n, generator=self.timesteps)
        v = (torch.arange(n, dtype=torch.float64)[order] + u) * (width / n)  # [n] in [0, width)
        return (lo + v.floor().long()).clamp_max(hi_inclusive)

    def randn_antithetic(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Standard normal noise [shape] whose second half along dim 0 is minus its first half (item b +
        B/2 gets -eps_b; an odd last item its own draw): each item is still N(0, I), the batch's noise
        sums to zero."""
        B = shape[0]
        half = self.randn((B // 2, *shape[1:]), device)
        parts = [half, -half] + ([self.randn((1, *shape[1:]), device)] if B % 2 else [])
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        noise = {k: g.get_state() for k, g in self._noise.items()}
        noise.update({k: s for k, s in self._pending.items() if k not in noise})
        return {"seed": self.seed, "timesteps": self.timesteps.get_state(), "noise": noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reseed(state["seed"])
        self.timesteps.set_state(state["timesteps"])
        # Applied when the device's generator is first made (the device may not exist yet here).
        self._pending = dict(state.get("noise", {}))


class EstimatorBase:
    """Settings handling, random streams, the Taylor control variate's learned weight (taylor.py) and
    state plumbing; subclasses implement __call__."""

    name = "base"
    settings_class: type = object

    def __init__(self, settings: Any = None, seed: int = 0):
        self.settings = settings if settings is not None else self.settings_class()
        self.rng = RandomStreams(seed)
        self.taylor = TaylorWeight()

    @property
    def settings(self) -> Any:
        return self._settings

    @settings.setter
    def settings(self, new: Any) -> None:
        """Replace the settings whole (between steps); refused with SettingsError if invalid."""
        if not isinstance(new, self.settings_class):
            raise SettingsError(
                f"{self.name}: settings must be a {self.settings_class.__name__}, got {type(new).__name__}"
            )
        new.validate()
        self._settings = new

    def reseed(self, seed: int) -> None:
        """Future timestep and noise draws follow `seed`; learned state is kept."""
        self.rng.reseed(seed)

    def reset(self) -> None:
        """Forget learned state (the Taylor weight; SSD extends this)."""
        self.taylor = TaylorWeight()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.state_dict(), **self.taylor.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.load_state_dict(state["rng"])
        self.taylor.load(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r}, seed={self.rng.seed})"
