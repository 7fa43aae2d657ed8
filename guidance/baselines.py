"""SSD baseline functions (METHODS.md, "SSD"): how well the prior's geometry of x_t agrees with the render's.

A baseline returns a similarity sim [B] in [-1, 1] that is an exact differentiable function of x_t (the
render side is detached); SSD sets phi = c0 + lam (1 - sim).

- "depth": Pearson correlation of disparities (1 / depth, larger = nearer) over the pixels the render
  covers (alpha > 0.5). Pearson is scale / shift invariant but not sign invariant, so disparity is
  compared with disparity: the prior's `estimate_disparity(x_t, t, vc)` if it has one, else
  1 / `estimate_depth(x_t, t, vc)`.
- "normal": mean cosine similarity over the covered pixels of the render's camera-space normals and
  normals of the prior's depth estimate, taken by finite differences of the back-projected points.

The render's maps are resized to the resolution of the prior's estimate (SD's comes at the decoded size).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.camera import CameraBatch
from renderers.types import RenderOutput

from .priors.base import DiffusionPrior, PriorError, ViewCond

MIN_DEPTH = 1e-6


def _needs_geometry(prior: DiffusionPrior, what: str) -> PriorError:
    return PriorError(
        f"SSD's baseline needs the prior's {what} of x_t, and prior {prior.name!r} has none: "
        "set ssd.lam = 0 (phi = c0, plain SDS) or use a prior that estimates depth"
    )


def prior_disparity(prior: DiffusionPrior, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
    """The prior's disparity estimate [B, 1, h, w] of x_t [B, C, h', w'], differentiable w.r.t. x_t."""
    if hasattr(prior, "estimate_disparity"):
        try:
            return prior.estimate_disparity(x_t, t, vc)
        except NotImplementedError:
            pass  # fall back to depth below; the prior said it has no disparity of its own
    try:
        return 1.0 / prior.estimate_depth(x_t, t, vc).clamp_min(MIN_DEPTH)
    except (NotImplementedError, AttributeError):
        raise _needs_geometry(prior, "disparity or depth") from None


def prior_depth(prior: DiffusionPrior, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
    """The prior's depth estimate [B, 1, h, w] of x_t, differentiable w.r.t. x_t."""
    try:
        return prior.estimate_depth(x_t, t, vc)
    except (NotImplementedError, AttributeError):
        pass  # fall back to disparity below
    if hasattr(prior, "estimate_disparity"):
        return 1.0 / prior.estimate_disparity(x_t, t, vc).clamp_min(MIN_DEPTH)
    raise _needs_geometry(prior, "depth or disparity")


def resize_masked(value: Tensor, mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize value [B, D, H, W] known where mask [B, 1, H, W] (bool) to `size` without bleeding the
    unknown pixels in: (value [B, D, h, w], mask [B, 1, h, w] bool, covered by more than half)."""
    if tuple(value.shape[-2:]) == tuple(size):
        return value, mask
    m = mask.to(value.dtype)
    kw = dict(size=size, mode="bilinear", align_corners=False, antialias=True)
    num = F.interpolate(value * m, **kw)
    den = F.interpolate(m, **kw)
    return num / den.clamp_min(1e-6), den > 0.5


def render_disparity(render: RenderOutput) -> tuple[Tensor, Tensor]:
    """(disparity [B, 1, H, W], mask [B, 1, H, W] bool) of a render, detached; disparity is 1 / depth
    where alpha > 0.5 (and depth > 0), 0 elsewhere."""
    depth = render.depth.detach().permute(0, 3, 1, 2).float()
    mask = (render.alpha.detach().permute(0, 3, 1, 2) > 0.5) & (depth > MIN_DEPTH)
    disp = torch.where(mask, 1.0 / depth.clamp_min(MIN_DEPTH), torch.zeros_like(depth))
    return disp, mask


def masked_pearson(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Pearson correlation per item of a, b [B, 1, h, w] over mask [B, 1, h, w] -> [B]; 0 where either
    side has no spread (empty mask, constant map)."""
    assert a.shape == b.shape == mask.shape, (a.shape, b.shape, mask.shape)
    m = mask.to(b.dtype)
    n = m.sum(dim=(1, 2, 3)).clamp_min(1.0)
    da = (a - (a * m).sum(dim=(1, 2, 3), keepdim=True) / n.view(-1, 1, 1, 1)) * m
    db = (b - (b * m).sum(dim=(1, 2, 3), keepdim=True) / n.view(-1, 1, 1, 1)) * m
    cov = (da * db).sum(dim=(1, 2, 3))
    var = (da * da).sum(dim=(1, 2, 3)) * (db * db).sum(dim=(1, 2, 3))
    return cov / var.clamp_min(1e-20).sqrt()


def depth_similarity(prior: DiffusionPrior, x_t: Tensor, t: Tensor, vc: ViewCond, render: RenderOutput,
                     cameras: CameraBatch) -> Tensor:
    """Pearson correlation [B] of the render's disparity with the prior's disparity of x_t."""
    disp_hat = prior_disparity(prior, x_t, t, vc)  # [B, 1, h, w]
    disp, mask = render_disparity(render)
    disp, mask = resize_masked(disp, mask, tuple(disp_hat.shape[-2:]))
    return masked_pearson(disp.to(disp_hat.dtype), disp_hat, mask)


def normals_from_depth(depth: Tensor, Ks: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Camera-space unit normals [B, 3, h, w] of a depth map [B, 1, h, w] (camera z), facing the camera.

    Args:
        depth: [B, 1, h, w] camera z, differentiable
        Ks: [B, 3, 3] intrinsics of the cameras at `image_size` (W, H); rescaled to (w, h) here
        image_size: (W, H) the intrinsics refer to
    """
    B, _, h, w = depth.shape
    assert Ks.shape == (B, 3, 3), f"Ks: expected [B={B}, 3, 3], got {tuple(Ks.shape)}"
    sx, sy = w / image_size[0], h / image_size[1]
    fx, fy = (Ks[:, 0, 0] * sx).view(B, 1, 1), (Ks[:, 1, 1] * sy).view(B, 1, 1)
    cx, cy = (Ks[:, 0, 2] * sx).view(B, 1, 1), (Ks[:, 1, 2] * sy).view(B, 1, 1)
    v, u = torch.meshgrid(torch.arange(h, device=depth.device, dtype=depth.dtype) + 0.5,
                          torch.arange(w, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    d = depth[:, 0]
    pts = torch.stack([d * (u - cx) / fx, d * (v - cy) / fy, d], dim=1)  # [B, 3, h, w]
    # Central differences; replicate padding makes them one-sided (half the step) at the border, which
    # leaves the direction of the normalized cross product, all that is used, unchanged.
    padded = F.pad(pts, (1, 1, 1, 1), mode="replicate")
    du = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
    dv = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
    n = F.normalize(torch.linalg.cross(du, dv, dim=1), dim=1)
    facing = torch.where((n * pts).sum(dim=1, keepdim=True) > 0, -1.0, 1.0)
    return n * facing


def normal_similarity(prior: DiffusionPrior, x_t: Tensor, t: Tensor, vc: ViewCond, render: RenderOutput,
                      cameras: CameraBatch) -> Tensor:
    """Mean cosine similarity [B] of the render's normals and the normals of the prior's depth of x_t."""
    depth_hat = prior_depth(prior, x_t, t, vc)  # [B, 1, h, w]
    size = tuple(depth_hat.shape[-2:])
    cams = cameras.cameras
    n_hat = normals_from_depth(depth_hat, cams.Ks.to(depth_hat), (cams.width, cams.height))
    normal = render.normal.detach().permute(0, 3, 1, 2).float()
    mask = render.alpha.detach().permute(0, 3, 1, 2) > 0.5
    normal, mask = resize_masked(normal, mask, size)
    cos = (F.normalize(normal, dim=1).to(n_hat.dtype) * n_hat).sum(dim=1, keepdim=True)  # [B, 1, h, w]
    m = mask.to(cos.dtype)
    return (cos * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1.0)


Baseline = Callable[[DiffusionPrior, Tensor, Tensor, ViewCond, RenderOutput, CameraBatch], Tensor]
BASELINES: dict[str, Baseline] = {"depth": depth_similarity, "normal": normal_similarity}
