"""Dense pure-PyTorch rasterizer: every pixel against every Gaussian, autograd for gradients.

Slow and memory-hungry (B * H * W * N floats several times over) and written to be obviously right:
it is the twin the fast backends are tested against. It implements gsplat's semantics step by step:

1. world -> camera; 3D covariance R S S^T R^T -> 2D by the perspective Jacobian (with gsplat's
   clamp of x/z, y/z to 1.3x the field of view), plus the EWA low-pass eps2d = 0.3 on the diagonal;
2. a Gaussian is dropped (radius 0) when det <= 0, z <= near (0.01), or its 3.33-sigma box misses the image;
3. at each pixel centre (i + 0.5, j + 0.5): sigma = 0.5 d^T Sigma2d^-1 d, alpha = min(0.999, o e^-sigma),
   skipped when sigma < 0 or alpha < 1/255;
4. front to back in depth order, stopping before the Gaussian that would take transmittance to <= 1e-4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .camera import Cameras
from .sh import sh_to_color
from .types import GaussianParams, RenderInputError, RenderOutput

EPS2D = 0.3
NEAR_PLANE = 0.01
ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
RADIUS_SIGMAS = 3.33


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] wxyz (any norm) -> [N, 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


def check_inputs(params: GaussianParams, cameras: Cameras, background: Tensor) -> Tensor:
    """Validate and return the background as [B, 3]."""
    params.validate()
    if not isinstance(cameras, Cameras):
        raise RenderInputError(f"cameras: expected renderers.Cameras, got {type(cameras).__name__}")
    if not torch.isfinite(cameras.viewmats).all() or not torch.isfinite(cameras.Ks).all():
        raise RenderInputError("cameras: viewmats / Ks contain NaN or inf")
    bg = torch.as_tensor(background, dtype=params.dtype, device=params.device)
    B = len(cameras)
    if bg.shape == (3,):
        bg = bg.expand(B, 3)
    if bg.shape != (B, 3):
        raise RenderInputError(f"background: expected [3] or [B={B}, 3], got {tuple(bg.shape)}")
    return bg


def empty_output(params: GaussianParams, cameras: Cameras, bg: Tensor) -> RenderOutput:
    """The image of an empty scene: the background, alpha 0, depth 0."""
    B, H, W = len(cameras), cameras.height, cameras.width
    dev, dt = params.device, params.dtype
    rgb = bg[:, None, None, :].expand(B, H, W, 3).clone()
    z1 = torch.zeros(B, H, W, 1, device=dev, dtype=dt)
    means2d = torch.zeros(B, 0, 2, device=dev, dtype=dt, requires_grad=True)
    info = dict(means2d=means2d, radii=torch.zeros(B, 0, 2, dtype=torch.int32, device=dev),
                depths=torch.zeros(B, 0, device=dev, dtype=dt), width=W, height=H, n_cameras=B,
                gaussian_ids=None)
    return RenderOutput(rgb, z1, z1.clone(), torch.zeros(B, H, W, 3, device=dev, dtype=dt), info)


def render_reference(params: GaussianParams, cameras: Cameras, background: Tensor) -> RenderOutput:
    """Render B images of N Gaussians densely. See the module docstring for the semantics.

    Args:
        params: activated Gaussians, N of them
        cameras: B cameras of size H x W
        background: [3] or [B, 3] colour behind the scene
    """
    bg = check_inputs(params, cameras, background)
    B, H, W, N = len(cameras), cameras.height, cameras.width, params.num_gaussians
    if N == 0:
        return empty_output(params, cameras, bg)
    dev, dt = params.device, params.dtype
    viewmats = cameras.viewmats.to(dev, dt)
    Ks = cameras.Ks.to(dev, dt)

    # 1. World to camera.
    R = quat_to_rotmat(params.quats)  # [N, 3, 3]
    M = R * params.scales[:, None, :]  # columns scaled: R S
    cov3d = M @ M.transpose(1, 2)  # [N, 3, 3]
    Rc, tc = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [B, 3, 3], [B, 3]
    mean_c = torch.einsum("bij,nj->bni", Rc, params.means) + tc[:, None, :]  # [B, N, 3]
    cov_c = Rc[:, None] @ cov3d[None] @ Rc.transpose(1, 2)[:, None]  # [B, N, 3, 3]

    # 2. Perspective projection of the mean and (EWA) of the covariance.
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    x, y, z = mean_c.unbind(-1)  # [B, N]
    u = fx * x / z + cx
    v = fy * y / z + cy
    means2d = torch.stack([u, v], dim=-1)  # [B, N, 2]
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    xz = torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(W - cx) / fx + 0.3 * tan_x)
    yz = torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(H - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * xz / z, zero, fy / z, -fy * yz / z], dim=-1
    ).reshape(B, N, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2) + EPS2D * torch.eye(2, device=dev, dtype=dt)  # [B, N, 2, 2]
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det = a * c - b * b
    det_safe = det.clamp_min(1e-10)
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [B, N, 3]

    with torch.no_grad():
        rx = torch.ceil(RADIUS_SIGMAS * a.clamp_min(0).sqrt())
        ry = torch.ceil(RADIUS_SIGMAS * c.clamp_min(0).sqrt())
        valid = (det > 0) & (z > NEAR_PLANE)
        valid &= (u + rx > 0) & (u - rx < W) & (v + ry > 0) & (v - ry < H)
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]

    # 3. Per-Gaussian features: view-dependent colour, camera depth, camera-facing shortest axis.
    centers = cameras.centers.to(dev, dt)  # [B, 3]
    dirs = params.means[None] - centers[:, None, :]  # [B, N, 3]
    colors = sh_to_color(params.sh[None].expand(B, -1, -1, -1), dirs)  # [B, N, 3]
    shortest = params.scales.argmin(dim=-1)  # [N]
    n_world = torch.gather(R, 2, shortest[:, None, None].expand(N, 3, 1))[..., 0]  # column of R
    n_cam = torch.einsum("bij,nj->bni", Rc, n_world)  # [B, N, 3]
    facing = torch.where((n_cam * mean_c).sum(-1, keepdim=True) > 0, -1.0, 1.0)
    feats = torch.cat([colors, z[..., None], n_cam * facing], dim=-1)  # [B, N, 7]

    # 4. Every pixel against every Gaussian.
    jj, ii = torch.meshgrid(
        torch.arange(H, device=dev, dtype=dt) + 0.5, torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij"
    )
    pix = torch.stack([ii, jj], dim=-1).reshape(1, H * W, 1, 2)  # [1, P, 1, 2]
    d = pix - means2d[:, None]  # [B, P, N, 2]
    sigma = 0.5 * (conic[:, None, :, 0] * d[..., 0] ** 2 + conic[:, None, :, 2] * d[..., 1] ** 2) + (
        conic[:, None, :, 1] * d[..., 0] * d[..., 1]
    )  # [B, P, N]
    alpha = torch.clamp_max(params.opacities[None, None] * torch.exp(-sigma), ALPHA_MAX)
    keep = valid[:, None, :] & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))

    # 5. Front to back: stable sort by depth, stop before transmittance would reach T_MIN.
    order = torch.sort(z.detach(), dim=-1, stable=True).indices  # [B, N]
    alpha = torch.gather(alpha, 2, order[:, None, :].expand(B, H * W, N))
    feats = torch.gather(feats, 1, order[..., None].expand(B, N, 7))
    t_after = torch.cumprod(1 - alpha, dim=-1)  # transmittance after each Gaussian
    alpha = alpha * (t_after > T_MIN).to(dt).detach()
    t_before = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha[..., :-1]], -1), -1)
    weights = alpha * t_before  # [B, P, N]
    acc = weights.sum(-1, keepdim=True)  # [B, P, 1]
    feat_img = weights @ feats  # [B, P, 7]

    rgb = feat_img[..., :3] + (1 - acc) * bg[:, None, :]
    depth = feat_img[..., 3:4] / acc.clamp_min(1e-10)
    normal = feat_img[..., 4:7] / acc.clamp_min(1e-10)
    if means2d.requires_grad:
        means2d.retain_grad()
    info = dict(means2d=means2d, radii=radii.to(torch.int32), depths=z, width=W, height=H,
                n_cameras=B, gaussian_ids=None)
    shape = (B, H, W)
    return RenderOutput(
        rgb.reshape(*shape, 3), acc.reshape(*shape, 1), depth.reshape(*shape, 1), normal.reshape(*shape, 3), info
    )
