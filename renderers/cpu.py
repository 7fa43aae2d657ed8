"""Fast CPU rasterizer: tiled, culled, multi-threaded, with a hand-written backward.

The split follows gsplat: projection, SH colours and normals are vectorized PyTorch (`projection.py`,
autograd differentiates them), and only the compositing of screen-space Gaussians into pixels is a
`torch.autograd.Function` over numba kernels (`cpu_kernels.py`):

    means2d [B, N, 2], conics [B, N, 3], features [B, N, D], opacities [B, N]
        -> feature image [B, H, W, D], alpha [B, H, W, 1]

with D = 7 (rgb, camera z, normal). Steps:

1. binning (serial, O(N + intersections)): every Gaussian that survived culling is listed, in stable
   depth order, in each 16 x 16 tile its 3.33-sigma box touches; outside that box alpha < 1/255, so
   nothing visible is lost;
2. forward (tiles in parallel): front to back per pixel with exactly the reference's rules; it keeps
   each pixel's final transmittance and the length of its list up to the last contributing Gaussian;
3. backward (tiles in parallel): back to front from the last contributor, recovering T_i by division
   by (1 - alpha_i), writing one gradient row per intersection (each tile owns its range of rows, so
   there are no races), then one scatter-add to per-Gaussian gradients.

Kernels run in float64 whatever the input dtype (scalar code: as fast as float32 here, and the
reconstruction of T by division stays accurate); results are cast back.

`render_many_forward` is the forward-only path for many scenes at once (the procedural prior's
reference objects): one projection for all of them, one compositing pass per distinct geometry with
every colouring of it as extra feature channels, no normals, no autograd, and `forward_only_kernel`,
which composites each pixel exactly as `forward_kernel` does with less bookkeeping around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor

from .camera import Cameras
from .cpu_kernels import GRAD_COLS, TILE, backward_kernel, bin_kernel, forward_kernel, forward_only_kernel
from .projection import Projection, project, shading_features
from .sh import sh_to_color
from .reference import check_inputs, empty_output
from .types import GaussianParams, RenderInputError, RenderOutput

N_FEATURES = 7  # rgb, camera z, normal


@dataclass
class Tiling:
    """Intersections of Gaussians with tiles, grouped by tile, each group in depth order.

    tile_start: [B * tiles_y * tiles_x + 1] int64 offsets into `flat_ids`
    flat_ids:   [n_isect] int64, b * N + Gaussian index
    """

    tile_start: np.ndarray
    flat_ids: np.ndarray
    n_img: int
    width: int
    height: int
    tiles_x: int
    tiles_y: int


def _f64(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())


def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int) -> Tiling:
    """List every visible Gaussian in the tiles its box touches, front to back.

    Args:
        means2d: [B, N, 2] pixel coordinates
        radii:   [B, N, 2] box half-extents in pixels, 0 for culled Gaussians
        depths:  [B, N] sort keys (camera z); ties keep index order
    """
    B, N = depths.shape
    assert means2d.shape == (B, N, 2), f"means2d: expected [{B}, {N}, 2], got {tuple(means2d.shape)}"
    assert radii.shape == (B, N, 2), f"radii: expected [{B}, {N}, 2], got {tuple(radii.shape)}"
    order = torch.sort(depths.detach(), dim=-1, stable=True).indices.cpu().numpy()
    tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
    starts, flat_ids = bin_kernel(_f64(means2d).reshape(B * N, 2), _f64(radii).reshape(B * N, 2),
                                  np.ascontiguousarray(order), B, N, tiles_x, tiles_y)
    return Tiling(starts, flat_ids, B, width, height, tiles_x, tiles_y)


def _flat_arrays(means2d: Tensor, conics: Tensor, feats: Tensor, opac: Tensor) -> tuple[np.ndarray, ...]:
    """float64 copies with (camera, Gaussian) flattened to b * N + g, as the kernels index them."""
    B, N, D = feats.shape
    return (_f64(means2d).reshape(B * N, 2), _f64(conics).reshape(B * N, 3), _f64(feats).reshape(B * N, D),
            _f64(opac).reshape(B * N))


def _forward(tiling: Tiling, means2d: np.ndarray, conics: np.ndarray, feats: np.ndarray, opac: np.ndarray):
    """Run the forward kernel: feature image [B, H, W, D], final T, list length to last contributor, pairs."""
    B, H, W = tiling.n_img, tiling.height, tiling.width
    out_feat = np.zeros((B, H, W, feats.shape[1]))
    out_T = np.empty((B, H, W))
    out_last = np.empty((B, H, W), np.int64)
    out_evals = np.empty((B, H, W), np.int64)
    with numba.parallel_chunksize(1):  # tiles differ in cost: hand them out one at a time
        forward_kernel(means2d, conics, feats, opac, tiling.tile_start, tiling.flat_ids, B, H, W,
                       tiling.tiles_x, tiling.tiles_y, out_feat, out_T, out_last, out_evals)
    return out_feat, out_T, out_last, out_evals


class _Rasterize(torch.autograd.Function):
    """(means2d, conics, features, opacities) -> (feature image, alpha), kernels in `cpu_kernels`."""

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, feats: Tensor, opac: Tensor, tiling: Tiling):
        arrays = _flat_arrays(means2d, conics, feats, opac)
        out_feat, out_T, out_last, _ = _forward(tiling, *arrays)
        ctx.tiling, ctx.arrays, ctx.out_T, ctx.out_last = tiling, arrays, out_T, out_last
        dt = feats.dtype
        alpha = torch.from_numpy(1.0 - out_T).to(dt)[..., None]
        return torch.from_numpy(out_feat).to(dt), alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_feat: Tensor, grad_alpha: Tensor):
        tiling, (means2d, conics, feats, opac) = ctx.tiling, ctx.arrays
        BN, D = feats.shape
        rows = np.zeros((tiling.flat_ids.shape[0], GRAD_COLS + D))
        with numba.parallel_chunksize(1):
            backward_kernel(means2d, conics, feats, opac, tiling.tile_start, tiling.flat_ids, tiling.n_img,
                            tiling.height, tiling.width, tiling.tiles_x, tiling.tiles_y, ctx.out_T,
                            ctx.out_last, _f64(grad_feat), _f64(grad_alpha)[..., 0], rows)
        per_gauss = torch.zeros(BN, GRAD_COLS + D, dtype=torch.float64)
        per_gauss.index_add_(0, torch.from_numpy(tiling.flat_ids), torch.from_numpy(rows))
        B = tiling.n_img
        per_gauss = per_gauss.to(grad_feat.dtype).view(B, BN // B, GRAD_COLS + D)
        return per_gauss[..., 0:2], per_gauss[..., 2:5], per_gauss[..., 6:], per_gauss[..., 5], None


def rasterize(means2d: Tensor, conics: Tensor, feats: Tensor, opacities: Tensor, tiling: Tiling
              ) -> tuple[Tensor, Tensor]:
    """Composite screen-space Gaussians front to back, differentiably.

    Args:
        means2d:   [B, N, 2] pixel coordinates
        conics:    [B, N, 3] inverse 2D covariances (a, b, c)
        feats:     [B, N, D] features to composite
        opacities: [B, N]
        tiling:    from `bin_gaussians` on the same Gaussians
    Returns:
        feature image [B, H, W, D] (sum of w_i f_i, no background) and alpha [B, H, W, 1]
    """
    B, N, D = feats.shape
    for name, t, shape in (("means2d", means2d, (B, N, 2)), ("conics", conics, (B, N, 3)),
                           ("opacities", opacities, (B, N))):
        assert t.shape == shape, f"{name}: expected {list(shape)}, got {list(t.shape)}"
    assert tiling.n_img == B, f"tiling is for {tiling.n_img} images, features for {B}"
    return _Rasterize.apply(means2d, conics, feats, opacities, tiling)


def _screen_space(params: GaussianParams, cameras: Cameras):
    """Projection, per-camera features [B, N, 7], opacities [B, N] and the tile lists."""
    B, N = len(cameras), params.num_gaussians
    proj = project(params, cameras)
    colors, normals = shading_features(params, cameras, proj.means_c, proj.rot_c)
    feats = torch.cat([colors, proj.depths[..., None], normals], dim=-1)
    assert feats.shape == (B, N, N_FEATURES), f"features: expected [{B}, {N}, 7], got {tuple(feats.shape)}"
    tiling = bin_gaussians(proj.means2d, proj.radii, proj.depths, cameras.width, cameras.height)
    return proj, feats, params.opacities[None].expand(B, N), tiling


def render_cpu(params: GaussianParams, cameras: Cameras, background: Tensor) -> RenderOutput:
    """Render B images of N Gaussians on the CPU (same semantics as `reference.render_reference`).

    Args:
        params: activated Gaussians, N of them (validated here: NaN or bad shapes raise RenderInputError)
        cameras: B cameras of size H x W
        background: [3] or [B, 3] colour behind the scene
    """
    bg = check_inputs(params, cameras, background)
    if params.device.type != "cpu":
        raise RenderInputError(f"renderer 'cpu': the Gaussians are on {params.device}; move them to the CPU "
                               "or use the 'gsplat' renderer")
    if params.num_gaussians == 0:
        return empty_output(params, cameras, bg)
    proj, feats, opac, tiling = _screen_space(params, cameras)
    feat_img, alpha = rasterize(proj.means2d, proj.conics, feats, opac, tiling)  # [B, H, W, 7], [B, H, W, 1]
    rgb = feat_img[..., :3] + (1.0 - alpha) * bg[:, None, None, :]
    alpha_safe = alpha.clamp_min(1e-10)
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    info = dict(means2d=proj.means2d, radii=proj.radii_int, depths=proj.depths, width=cameras.width,
                height=cameras.height, n_cameras=len(cameras), gaussian_ids=None)
    return RenderOutput(rgb, alpha, feat_img[..., 3:4] / alpha_safe, feat_img[..., 4:7] / alpha_safe, info)


def count_pairs(params: GaussianParams, cameras: Cameras) -> tuple[int, int]:
    """Work done by one forward pass: (Gaussian-pixel pairs evaluated, Gaussian-tile intersections)."""
    params.validate()
    if params.num_gaussians == 0:
        return 0, 0
    with torch.no_grad():
        proj, feats, opac, tiling = _screen_space(params, cameras)
        evals = _forward(tiling, *_flat_arrays(proj.means2d, proj.conics, feats, opac))[3]
    return int(evals.sum()), int(tiling.flat_ids.shape[0])


def _geometry_key(params: GaussianParams) -> tuple:
    """Identity of the geometry tensors (equal keys: the same memory, hence the same values) and the
    number of SH coefficients, so that a group's colours stack."""
    return tuple((t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
                 for t in (params.means, params.quats, params.scales, params.opacities)) + (params.sh.shape[1:],)


def _check_scenes(scenes: Sequence[GaussianParams], groups: list[list[int]]) -> None:
    """Validate each geometry once and every scene's colours (the rest is shared within a group)."""
    if any(s.device.type != "cpu" for s in scenes) or len({s.dtype for s in scenes}) != 1:
        raise RenderInputError(
            "render_many_forward: scenes must share one dtype and live on the CPU, got dtypes "
            f"{sorted({str(s.dtype) for s in scenes})}, devices {sorted({str(s.device) for s in scenes})}")
    for members in groups:
        scenes[members[0]].validate()
        for i in members[1:]:
            sh, n = scenes[i].sh, scenes[i].num_gaussians
            if sh.dim() != 3 or sh.shape[0] != n or sh.shape[2] != 3 or sh.shape[1] not in (1, 4, 9, 16, 25):
                raise RenderInputError(f"scene {i}: GaussianParams.sh: expected shape (N={n}, K, 3), "
                                       f"K in 1, 4, 9, 16, 25, got {tuple(sh.shape)}")
            if not torch.isfinite(sh).all():
                raise RenderInputError(f"scene {i}: GaussianParams.sh: {int((~torch.isfinite(sh)).sum())} "
                                       "non-finite values (NaN or inf); the scene is corrupt")


def _composite_group(sh: Tensor, opacities: Tensor, proj: Projection, view_dirs: Tensor, cameras: Cameras
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Composite M colourings of one geometry in one pass.

    Args:
        sh:        [M, N, K, 3] the colourings
        opacities: [N]
        proj:      the geometry's projection (tensors [B, N, ...])
        view_dirs: [B, N, 3] means minus camera centres
    Returns:
        colour images [M, B, H, W, 3] (no background), alpha [B, H, W, 1], depth [B, H, W, 1]
    """
    M, N = sh.shape[:2]
    B, H, W = len(cameras), cameras.height, cameras.width
    # as shading_features computes them; at SH degree 0 they do not depend on the view: one camera serves
    dirs = view_dirs[:1] if sh.shape[2] == 1 else view_dirs
    colors = sh_to_color(sh[:, None], dirs[None]).expand(M, B, N, 3)
    feats = torch.cat([colors.permute(1, 2, 0, 3).reshape(B, N, 3 * M), proj.depths[..., None]], dim=-1)
    tiling = bin_gaussians(proj.means2d, proj.radii, proj.depths, W, H)
    arrays = _flat_arrays(proj.means2d, proj.conics, feats, opacities[None].expand(B, N))
    out_feat, out_T = np.zeros((B, H, W, 3 * M + 1)), np.empty((B, H, W))
    with numba.parallel_chunksize(1):  # tiles differ in cost: hand them out one at a time
        forward_only_kernel(*arrays, tiling.tile_start, tiling.flat_ids, B, H, W, tiling.tiles_x,
                            tiling.tiles_y, out_feat, out_T)
    # the casts and operations of `rasterize` + `render_cpu`, so that the results are the same
    feat_img = torch.from_numpy(out_feat).to(sh.dtype)
    alpha = torch.from_numpy(1.0 - out_T).to(sh.dtype)[..., None]
    color_img = feat_img[..., :3 * M].view(B, H, W, M, 3).permute(3, 0, 1, 2, 4)
    return color_img, alpha, feat_img[..., 3 * M:] / alpha.clamp_min(1e-10)


def render_many_forward(scenes: Sequence[GaussianParams], cameras: Cameras, background: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-only renders of S scenes from the same B cameras: `render_cpu`'s rgb, alpha and depth
    for each scene (no normals, no autograd), in few passes.

    All geometries are projected in one call. Scenes that share their geometry tensors (the very same
    means, quats, scales and opacities, as guidance's ObjectLibrary builds for objects that differ only
    in colour) are composited together: a pixel's compositing weights depend on geometry alone, so each
    scene's colours ride along as three more feature channels. The per-pixel arithmetic and its order
    are `render_cpu`'s, so the results equal separate `render_cpu` calls.

    Args:
        scenes: S activated Gaussian sets on the CPU, one dtype (validated here)
        cameras: B cameras of size H x W
        background: [3] or [B, 3] colour behind the scenes
    Returns:
        rgb [S, B, H, W, 3], alpha [S, B, H, W, 1], depth [S, B, H, W, 1] (0 where alpha = 0)
    """
    if not scenes:
        raise RenderInputError("render_many_forward: expected at least one scene, got none")
    by_key: dict[tuple, list[int]] = {}
    for i, s in enumerate(scenes):
        by_key.setdefault(_geometry_key(s), []).append(i)
    _check_scenes(scenes, list(by_key.values()))
    bg = check_inputs(scenes[0], cameras, background)
    S, B, H, W = len(scenes), len(cameras), cameras.height, cameras.width
    rgb, alpha, depth = (torch.empty(S, B, H, W, c, dtype=bg.dtype) for c in (3, 1, 1))
    groups = []
    for members in by_key.values():
        if scenes[members[0]].num_gaussians > 0:
            groups.append(members)
            continue
        for i in members:  # empty scenes show the background
            rgb[i], alpha[i], depth[i] = bg[:, None, None, :], 0.0, 0.0
    if not groups:
        return rgb, alpha, depth
    with torch.no_grad():
        geos = [scenes[m[0]] for m in groups]
        means, quats, scales, opac = (torch.cat([getattr(g, f) for g in geos])
                                      for f in ("means", "quats", "scales", "opacities"))
        joint = GaussianParams(means, quats, scales, opac, means.new_zeros(means.shape[0], 1, 3))  # sh unused
        proj = project(joint, cameras)  # one call for every geometry: the per-call overhead dominates
        view_dirs = joint.means[None] - cameras.centers.to(joint.device, joint.dtype)[:, None, :]  # [B, N, 3]
        start = 0
        for members, geo in zip(groups, geos):
            sl = slice(start, start + geo.num_gaussians)
            start = sl.stop
            part = Projection(*(getattr(proj, f)[:, sl] for f in ("means2d", "conics", "depths", "radii",
                                                                   "means_c", "rot_c")))
            sh = torch.stack([scenes[i].sh for i in members])  # [M, N, K, 3]
            colors, a, d = _composite_group(sh, geo.opacities, part, view_dirs[:, sl], cameras)
            behind = (1.0 - a) * bg[:, None, None, :]  # [B, H, W, 3]
            for j, i in enumerate(members):  # per scene: an index_put of the whole group costs 6x more
                torch.add(colors[j], behind, out=rgb[i])
                alpha[i], depth[i] = a, d
    return rgb, alpha, depth
