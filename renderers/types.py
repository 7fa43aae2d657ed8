"""The tensors every renderer takes and returns.

`GaussianParams` holds *activated* values (world-unit scales, opacities in (0, 1)), which is what the
rasterizers consume; the optimizer's raw parameters (log-scales, logits) live in `studio.scene`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class RenderInputError(ValueError):
    """Bad input to a renderer: the message names the field, the shape or value, and what to do."""


@dataclass
class GaussianParams:
    """Activated Gaussian parameters (gsplat's layout).

    means:     [N, 3] world positions
    quats:     [N, 4] rotations, wxyz, need not be normalized
    scales:    [N, 3] standard deviations along the local axes, world units (> 0)
    opacities: [N]    in (0, 1)
    sh:        [N, K, 3] spherical-harmonic colour coefficients, K = (degree + 1)^2;
               colour = max(SH(view dir) + 0.5, 0)
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(self.sh.shape[1] ** 0.5)) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def validate(self) -> None:
        """Check shapes and values; raise RenderInputError naming the offending field."""
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "scales": (n, 3),
            "opacities": (n,),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape or n < 0:
                raise RenderInputError(
                    f"GaussianParams.{name}: expected shape {shape} with N = {n} from means, "
                    f"got {tuple(t.shape)}"
                )
        k = self.sh.shape[1] if self.sh.dim() == 3 else 0
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3 or k not in (1, 4, 9, 16, 25):
            raise RenderInputError(
                f"GaussianParams.sh: expected shape (N={n}, K, 3) with K in 1, 4, 9, 16, 25 "
                f"(SH degree 0..4), got {tuple(self.sh.shape)}"
            )
        for name in ("means", "quats", "scales", "opacities", "sh"):
            t = getattr(self, name)
            bad = (~torch.isfinite(t.detach())).sum()
            if bad.item():
                raise RenderInputError(
                    f"GaussianParams.{name}: {int(bad.item())} non-finite values (NaN or inf) out of "
                    f"{t.numel()}; the scene is corrupt: reload the last checkpoint or reset it"
                )
        if n and (self.scales.detach() <= 0).any():
            raise RenderInputError("GaussianParams.scales: every scale must be > 0 (activated, world units)")
        if n and ((self.opacities.detach() < 0) | (self.opacities.detach() > 1)).any():
            raise RenderInputError("GaussianParams.opacities: every opacity must lie in [0, 1] (activated)")
        if n and (self.quats.detach().norm(dim=-1) == 0).any():
            raise RenderInputError("GaussianParams.quats: a quaternion of norm 0 has no rotation")

    def detach(self) -> "GaussianParams":
        return GaussianParams(*(t.detach() for t in (self.means, self.quats, self.scales, self.opacities, self.sh)))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "GaussianParams":
        return GaussianParams(
            *(t.to(device=device, dtype=dtype) for t in (self.means, self.quats, self.scales, self.opacities, self.sh))
        )


@dataclass
class RenderOutput:
    """What every backend returns.

    rgb:    [B, H, W, 3] composited over the background, in [0, 1] for colours in [0, 1]
    alpha:  [B, H, W, 1] accumulated opacity, 1 - final transmittance
    depth:  [B, H, W, 1] expected camera-space z: alpha-weighted z divided by alpha (0 where alpha = 0)
    normal: [B, H, W, 3] camera-space normals, composited from each Gaussian's shortest axis (turned to
            face the camera), divided by alpha like depth (0 where alpha = 0)
    info:   what gsplat's densification strategies read: means2d [B, N, 2] (retains grad), radii
            [B, N, 2] int, width, height, n_cameras, gaussian_ids (None: not packed), depths [B, N]
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor
    info: dict[str, Any] = field(default_factory=dict)
