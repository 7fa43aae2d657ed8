"""Real spherical harmonics up to degree 4 (the 3DGS / gsplat basis and sign convention)."""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
C4 = (
    2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892,
    0.10578554691520431, -0.6690465435572892, 0.47308734787878004, -1.7701307697799304,
    0.6258357354491761,
)


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values [..., (degree + 1)^2] at unit directions dirs [..., 3]."""
    if not 0 <= degree <= 4:
        raise ValueError(f"sh degree must lie in 0..4, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    if degree >= 4:
        out += [
            C4[0] * xy * (xx - yy),
            C4[1] * yz * (3 * xx - yy),
            C4[2] * xy * (7 * zz - 1),
            C4[3] * yz * (7 * zz - 3),
            C4[4] * (zz * (35 * zz - 30) + 3),
            C4[5] * xz * (7 * zz - 3),
            C4[6] * (xx - yy) * (7 * zz - 1),
            C4[7] * xz * (xx - 3 * yy),
            C4[8] * (xx * (xx - 3 * yy) - yy * (3 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def sh_to_color(sh: Tensor, dirs: Tensor) -> Tensor:
    """Colour max(SH(dir) + 0.5, 0).

    Args:
        sh:   [..., K, 3] coefficients, K = (degree + 1)^2
        dirs: [..., 3] view directions (normalized here)
    Returns:
        [..., 3]
    """
    k = sh.shape[-2]
    degree = int(round(k**0.5)) - 1
    basis = sh_basis(degree, torch.nn.functional.normalize(dirs, dim=-1))  # [..., K]
    return torch.clamp_min((basis[..., None] * sh).sum(dim=-2) + 0.5, 0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as `rgb` (inverse of the degree-0 colour)."""
    return (rgb - 0.5) / C0
