"""Random Gaussian scenes for the renderer tests: a cloud around the origin plus the awkward cases
(behind the camera, just past the near plane, off-screen, tiny, huge, nearly opaque)."""

from __future__ import annotations

import torch

from renderers import GaussianParams, orbit
from renderers.camera import Cameras


def random_scene(n: int, seed: int, dtype: torch.dtype = torch.float64, sh_degree: int = 1,
                 requires_grad: bool = True) -> GaussianParams:
    """n Gaussians (n >= 10) in a cloud around the origin; indices i with i % 10 in 4..9 are awkward:
    nearly opaque, huge, behind camera 0, off-screen, behind its near plane, tiny."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.4
    scales = torch.exp(torch.empty(n, 3, dtype=dtype).uniform_(-4.5, -2.0, generator=g))  # 0.01 .. 0.14
    opacities = 0.05 + 0.9 * rand(n)
    kinds = torch.arange(n) % 10
    # Camera 0 sits at distance 3 on the +x side (see scene_cameras): x in 3.5..5 is behind it.
    means[kinds == 6, 0] = 3.5 + 1.5 * rand(int((kinds == 6).sum()))
    means[kinds == 7, 1] = torch.where(rand(int((kinds == 7).sum())) > 0.5, 6.0, -6.0).to(dtype)  # off-screen
    means[kinds == 8, 0] = 2.995  # 5 mm in front of camera 0: behind its near plane
    scales[kinds == 9] = 1e-4 * (1 + rand(int((kinds == 9).sum()), 3))  # far below a pixel
    huge = kinds == 5  # larger than the view, pushed aside so that part of the image stays empty
    scales[huge] = 0.6 + 0.6 * rand(int(huge.sum()), 3)
    means[huge, 2] = torch.where(rand(int(huge.sum())) > 0.5, 2.5, -2.5).to(dtype)
    opacities[kinds == 4] = 0.9995  # above the 0.999 alpha clamp at the centre
    sh = 0.4 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    params = GaussianParams(means=means, quats=quats, scales=scales, opacities=opacities, sh=sh)
    if requires_grad:
        for t in (params.means, params.quats, params.scales, params.opacities, params.sh):
            t.requires_grad_(True)
    return params


def scene_cameras(width: int = 32, height: int = 24, dtype: torch.dtype = torch.float64) -> Cameras:
    """Three cameras around the origin (non-square, sizes not multiples of the 16 px tile)."""
    cams = orbit([0.0, 130.0, 250.0], [0.0, 35.0, -15.0], [3.0, 2.5, 3.5], 50.0, width, height)
    return cams.to("cpu", dtype)


def weighted_loss(out) -> torch.Tensor:
    """A scalar that weighs every output channel and pixel differently (so no gradient cancels)."""
    total = 0.0
    for i, t in enumerate((out.rgb, out.alpha, out.depth, out.normal)):
        w = torch.linspace(-1.0, 1.0, t.numel(), dtype=t.dtype).reshape(t.shape).sin() + 0.3 * i
        total = total + (w * t).sum()
    return total
