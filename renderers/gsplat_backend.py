"""gsplat on CUDA, behind the common renderer signature.

gsplat projects and rasterizes; we give it per-camera colours from our own SH (`renderers.sh`, so the
basis and the view direction are the same on every backend) with the camera-space normals as three more
channels, ask for "RGB+ED" (expected depth appended as the last channel, already divided by alpha), and
composite the background ourselves. Settings match the other backends: packed=False, eps2d=0.3,
near plane 0.01, classic (not antialiased) rasterization.

gsplat from PyPI compiles its CUDA kernels the first time they run (minutes; see README's GPU section).
`jit_build_settings` points that build at `build/torch_extensions` inside a source checkout (git-ignored,
kept between runs, so it happens once), for this machine's GPU architecture only, on every core; a value
the user set in the environment wins.

gsplat's kernels are float32 only: other dtypes are cast on the way in and the outputs cast back.
Its radii use an opacity-aware extent (tighter than 3.33 sigma for faint Gaussians, 0 for opacity
< 1/255); the images are the same, since everything outside that extent has alpha < 1/255.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .camera import Cameras
from .projection import shading_features, to_camera
from .reference import EPS2D, NEAR_PLANE, check_inputs, empty_output
from .types import GaussianParams, RenderInputError, RenderOutput


def render_gsplat(params: GaussianParams, cameras: Cameras, background: Tensor) -> RenderOutput:
    """Render B images of N Gaussians with `gsplat.rasterization` (CUDA tensors only).

    Args:
        params: activated Gaussians, N of them, on a CUDA device
        cameras: B cameras of size H x W (moved to the Gaussians' device)
        background: [3] or [B, 3] colour behind the scene
    """
    jit_build_settings()
    import gsplat  # here, not at module level: the package is optional on CPU-only machines

    bg = check_inputs(params, cameras, background)
    if params.device.type != "cuda":
        raise RenderInputError(
            f"renderer 'gsplat': the Gaussians are on {params.device}, gsplat needs CUDA tensors; "
            "move the scene to the GPU or use the 'cpu' renderer"
        )
    return render_with(gsplat.rasterization, params, cameras, bg)


def jit_build_settings(environ: dict | None = None) -> dict[str, str]:
    """Set (where unset) where and how gsplat's first-use CUDA build runs; returns the values in force.

    TORCH_EXTENSIONS_DIR: build/torch_extensions in a source checkout (else torch's default, ~/.cache);
    TORCH_CUDA_ARCH_LIST: the compute capability of the GPU in use (e.g. "9.0"), not every architecture;
    MAX_JOBS: every core (gsplat's own default is 10)."""
    env = os.environ if environ is None else environ
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "renderers").is_dir():
        env.setdefault("TORCH_EXTENSIONS_DIR", str(root / "build" / "torch_extensions"))
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return {k: env[k] for k in ("TORCH_EXTENSIONS_DIR", "TORCH_CUDA_ARCH_LIST", "MAX_JOBS") if k in env}


def render_with(rasterization: Callable[..., tuple[Tensor, Tensor, dict]], params: GaussianParams,
                cameras: Cameras, bg: Tensor) -> RenderOutput:
    """The gsplat backend with the rasterization function passed in (gsplat's, or a stand-in in tests).

    Args:
        rasterization: `gsplat.rasterization` or a function with its signature and outputs
        params: validated Gaussians
        cameras: B cameras of size H x W
        bg: [B, 3] background colours
    """
    B, H, W, N = len(cameras), cameras.height, cameras.width, params.num_gaussians
    assert bg.shape == (B, 3), f"bg: expected [{B}, 3], got {tuple(bg.shape)}"
    if N == 0:
        return empty_output(params, cameras, bg)
    out_dtype = params.dtype
    p32 = params.to(params.device, torch.float32)
    cams32 = cameras.to(params.device, torch.float32)
    colors, normals = shading_features(p32, cams32, *to_camera(p32, cams32))
    channels = torch.cat([colors, normals], dim=-1)  # [B, N, 6]
    image, alpha, meta = rasterization(
        p32.means, p32.quats, p32.scales, p32.opacities, channels,
        cams32.viewmats, cams32.Ks, W, H,
        near_plane=NEAR_PLANE, eps2d=EPS2D, sh_degree=None, packed=False, tile_size=16,
        backgrounds=None, render_mode="RGB+ED", rasterize_mode="classic",
    )  # image [B, H, W, 7]: rgb, normal (alpha-weighted sums), expected depth; alpha [B, H, W, 1]
    assert image.shape == (B, H, W, 7), f"gsplat image: expected [{B}, {H}, {W}, 7], got {tuple(image.shape)}"
    alpha_safe = alpha.clamp_min(1e-10)
    rgb = image[..., 0:3] + (1.0 - alpha) * bg.to(torch.float32)[:, None, None, :]
    normal = image[..., 3:6] / alpha_safe
    depth = image[..., 6:7]
    means2d = meta["means2d"]  # [B, N, 2], the tensor whose .grad the strategies read
    if means2d.requires_grad:
        means2d.retain_grad()
    info = dict(means2d=means2d, radii=meta["radii"], depths=meta["depths"], width=W, height=H,
                n_cameras=B, gaussian_ids=None)
    return RenderOutput(rgb.to(out_dtype), alpha.to(out_dtype), depth.to(out_dtype), normal.to(out_dtype), info)
