"""Gaussians to screen space in vectorized PyTorch, shared by the CPU rasterizer and the gsplat backend.

Everything here is differentiable by autograd (cheap: O(B * N) elementwise work); only the per-pixel
compositing needs a hand-written backward. The semantics are gsplat's pinhole EWA projection (the
constants live with the dense reference in `reference.py`, which this module is tested against):

- camera-space mean m = R_c mu + t_c, and the 2x3 Jacobian of the pinhole at m with x/z, y/z clamped to
  1.3x the field of view, so that Gaussians far off-screen do not get enormous footprints;
- 2D covariance (J R_c R S)(J R_c R S)^T + eps2d I, conic = its inverse as (a, b, c) of [[a, b], [b, c]];
- radius = ceil(3.33 sqrt(diag)), zero (culled) when det <= 0, z <= near or the box misses the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .camera import Cameras
from .reference import EPS2D, NEAR_PLANE, RADIUS_SIGMAS
from .sh import sh_to_color
from .types import GaussianParams

# ceil() of a radius is stored as int32 in `info["radii"]`; a bound keeps near-plane monsters finite.
MAX_RADIUS = float(2**30)
# Fraction of the half field of view by which the Jacobian's x/z, y/z may leave the image (gsplat: 0.3).
FOV_MARGIN = 0.3


@dataclass
class Projection:
    """Per camera and Gaussian screen-space quantities.

    means2d:  [B, N, 2] pixel coordinates of the projected means (finite even when culled)
    conics:   [B, N, 3] inverse 2D covariance (a, b, c) of [[a, b], [b, c]]
    depths:   [B, N]    camera-space z
    radii:    [B, N, 2] float pixel half-extents of the 3.33-sigma box, 0 where culled
    means_c:  [B, N, 3] camera-space means
    rot_c:    [B, N, 3, 3] camera-space rotations (columns: each Gaussian's local axes)
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    means_c: Tensor
    rot_c: Tensor

    @property
    def radii_int(self) -> Tensor:
        """[B, N, 2] int32 radii as gsplat's strategies read them."""
        return self.radii.detach().to(torch.int32)


def rotation_matrices(quats: Tensor) -> Tensor:
    """Rotation matrices of quaternions.

    Args:
        quats: [N, 4] wxyz, any non-zero norm
    Returns:
        [N, 3, 3], R = (w^2 - |v|^2) I + 2 v v^T + 2 w [v]_x for the normalized q = (w, v)
    """
    assert quats.dim() == 2 and quats.shape[1] == 4, f"quats: expected [N, 4], got {tuple(quats.shape)}"
    q = F.normalize(quats, dim=-1)
    w, v = q[:, 0], q[:, 1:]  # [N], [N, 3]
    vx, vy, vz = v.unbind(-1)
    zero = torch.zeros_like(w)
    cross = torch.stack([zero, -vz, vy, vz, zero, -vx, -vy, vx, zero], dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=quats.dtype, device=quats.device)
    diag = (w * w - (v * v).sum(-1))[:, None, None] * eye
    return diag + 2.0 * v[:, :, None] * v[:, None, :] + 2.0 * w[:, None, None] * cross


def to_camera(params: GaussianParams, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Camera-space means [B, N, 3] and rotations [B, N, 3, 3] (columns: each Gaussian's local axes)."""
    viewmats = cameras.viewmats.to(params.device, params.dtype)  # [B, 4, 4]
    rot_w2c, trans = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [B, 1, 3, 3], [B, 1, 3]
    means_c = (rot_w2c @ params.means[None, :, :, None])[..., 0] + trans  # [B, N, 3]
    return means_c, rot_w2c @ rotation_matrices(params.quats)[None]


def project(params: GaussianParams, cameras: Cameras) -> Projection:
    """Project N Gaussians into B cameras (gsplat's pinhole EWA; see the module docstring).

    Args:
        params: activated Gaussians, already validated
        cameras: B cameras of size H x W
    """
    dev, dt = params.device, params.dtype
    W, H = cameras.width, cameras.height
    Ks = cameras.Ks.to(dev, dt)  # [B, 3, 3]
    means_c, rot_c = to_camera(params, cameras)

    x, y, z = means_c.unbind(-1)  # [B, N]
    in_front = z > NEAR_PLANE
    # Culled Gaussians behind the camera still get finite (meaningless) screen positions.
    z_safe = torch.where(in_front, z, torch.ones_like(z))
    fx, fy, cx, cy = (Ks[:, i, j, None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))  # each [B, 1]
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # [B, N, 2]

    # The Jacobian's rows are f/z (e_x - (x/z) e_z) and f/z (e_y - (y/z) e_z) with clamped x/z, y/z.
    margin_x, margin_y = 0.5 * FOV_MARGIN * W / fx, 0.5 * FOV_MARGIN * H / fy
    tx = torch.clamp(x / z_safe, min=-cx / fx - margin_x, max=(W - cx) / fx + margin_x)
    ty = torch.clamp(y / z_safe, min=-cy / fy - margin_y, max=(H - cy) / fy + margin_y)
    axes = rot_c * params.scales[None, :, None, :]  # [B, N, 3, 3]: columns R_c R S
    row_x = (fx / z_safe)[..., None] * (axes[..., 0, :] - tx[..., None] * axes[..., 2, :])  # [B, N, 3]
    row_y = (fy / z_safe)[..., None] * (axes[..., 1, :] - ty[..., None] * axes[..., 2, :])
    cov_a = (row_x * row_x).sum(-1) + EPS2D
    cov_b = (row_x * row_y).sum(-1)
    cov_c = (row_y * row_y).sum(-1) + EPS2D
    det = cov_a * cov_c - cov_b * cov_b
    inv_det = 1.0 / det.clamp_min(1e-10)
    conics = torch.stack([cov_c * inv_det, -cov_b * inv_det, cov_a * inv_det], dim=-1)  # [B, N, 3]

    with torch.no_grad():
        half = torch.stack([cov_a, cov_c], dim=-1).clamp_min(0).sqrt()  # [B, N, 2]
        radii = torch.ceil(RADIUS_SIGMAS * half).clamp_max(MAX_RADIUS)
        size = torch.tensor([W, H], dtype=dt, device=dev)
        on_screen = ((means2d + radii > 0) & (means2d - radii < size)).all(dim=-1)
        keep = (det > 0) & in_front & on_screen
        radii = radii * keep[..., None]
    return Projection(means2d, conics, z, radii, means_c, rot_c)


def shading_features(params: GaussianParams, cameras: Cameras, means_c: Tensor, rot_c: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """View-dependent colours and camera-facing normals of every Gaussian in every camera.

    Args:
        params:  N activated Gaussians
        cameras: B cameras
        means_c: [B, N, 3] camera-space means (from `to_camera`)
        rot_c:   [B, N, 3, 3] camera-space rotations (from `to_camera`)
    Returns:
        colors [B, N, 3] = max(SH(mu - camera centre) + 0.5, 0); normals [B, N, 3], the camera-space
        shortest local axis, turned to face the camera
    """
    B, N = means_c.shape[:2]
    assert rot_c.shape == (B, N, 3, 3), f"rot_c: expected [{B}, {N}, 3, 3], got {tuple(rot_c.shape)}"
    centers = cameras.centers.to(params.device, params.dtype)  # [B, 3]
    view_dirs = params.means[None] - centers[:, None, :]  # [B, N, 3]
    colors = sh_to_color(params.sh[None].expand(B, -1, -1, -1), view_dirs)
    shortest = params.scales.detach().argmin(dim=-1)  # [N]
    pick = shortest.view(1, N, 1, 1).expand(B, N, 3, 1)
    axis = torch.take_along_dim(rot_c, pick, dim=3)[..., 0]  # [B, N, 3]
    away = (axis * means_c).sum(-1, keepdim=True) > 0
    normals = torch.where(away, -axis, axis)
    return colors, normals
