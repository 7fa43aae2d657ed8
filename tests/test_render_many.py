"""`render_many_forward` (forward-only, many scenes, shared geometry composited in one pass) against
`render_cpu` scene by scene, and through it against the dense reference: the awkward random scenes,
needles (where a too-narrow row span would drop pixels), long tile lists (early termination) and
view-dependent colours on a shared geometry."""

from __future__ import annotations

import pytest
import torch

from render_scenes import random_scene, scene_cameras
from renderers import GaussianParams, RenderInputError, orbit
from renderers.cpu import render_cpu, render_many_forward
from renderers.reference import render_reference


def recoloured(params: GaussianParams, seed: int, sh_degree: int | None = None) -> GaussianParams:
    """The same geometry tensors (shared, not copied) with other SH colours."""
    g = torch.Generator().manual_seed(seed)
    k = params.sh.shape[1] if sh_degree is None else (sh_degree + 1) ** 2
    sh = 0.5 * torch.randn(params.num_gaussians, k, 3, generator=g, dtype=params.dtype)
    return GaussianParams(params.means, params.quats, params.scales, params.opacities, sh)


def needles(n: int, seed: int) -> GaussianParams:
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    scales = torch.full((n, 3), 1e-3, dtype=dt)
    scales[:, 0] = 0.3 + 1.2 * torch.rand(n, generator=g, dtype=dt)
    return GaussianParams(0.5 * torch.randn(n, 3, generator=g, dtype=dt), torch.randn(n, 4, generator=g, dtype=dt),
                          scales, 0.2 + 0.8 * torch.rand(n, generator=g, dtype=dt),
                          0.5 * torch.randn(n, 1, 3, generator=g, dtype=dt))


def pile(n: int, seed: int) -> GaussianParams:
    """n small opaque Gaussians in one tile: every pixel terminates early (T <= 1e-4)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    return GaussianParams(0.05 * torch.randn(n, 3, generator=g, dtype=dt), torch.randn(n, 4, generator=g, dtype=dt),
                          torch.full((n, 3), 0.05, dtype=dt), torch.full((n,), 0.95, dtype=dt),
                          torch.randn(n, 1, 3, generator=g, dtype=dt))


def assert_matches_render_cpu(scenes: list[GaussianParams], cams, bg: torch.Tensor) -> None:
    rgb, alpha, depth = render_many_forward(scenes, cams, bg)
    B, H, W = len(cams), cams.height, cams.width
    assert rgb.shape == (len(scenes), B, H, W, 3) and alpha.shape == depth.shape == (len(scenes), B, H, W, 1)
    assert not rgb.requires_grad and rgb.dtype == scenes[0].dtype
    for s, scene in enumerate(scenes):
        want = render_cpu(scene, cams, bg)
        for name, got, ref in (("rgb", rgb[s], want.rgb), ("alpha", alpha[s], want.alpha),
                               ("depth", depth[s], want.depth)):
            torch.testing.assert_close(got, ref.detach(), rtol=0, atol=1e-12, msg=f"scene {s} {name}")


def test_shared_and_separate_geometries_equal_render_cpu_and_the_reference():
    base = random_scene(120, seed=4, sh_degree=1, requires_grad=False)  # awkward cases included
    other = random_scene(60, seed=5, sh_degree=0, requires_grad=False)
    # Three colourings of base (one pass, view-dependent colours), one of another SH degree (its own
    # pass), a separate geometry, and base's values in fresh tensors (not shared: its own pass too).
    copy = GaussianParams(*(t.clone() for t in (base.means, base.quats, base.scales, base.opacities, base.sh)))
    scenes = [base, other, recoloured(base, 1), recoloured(base, 2, sh_degree=0), recoloured(base, 3), copy]
    cams, bg = scene_cameras(40, 24), torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.9], [0.0, 0.0, 0.0]],
                                                   dtype=torch.float64)
    assert_matches_render_cpu(scenes, cams, bg)
    rgb, alpha, depth = render_many_forward(scenes, cams, bg)
    ref = render_reference(scenes[2], cams, bg)
    for got, want in ((rgb[2], ref.rgb), (alpha[2], ref.alpha), (depth[2], ref.depth)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert alpha[0].max() > 0.99 and alpha[0].min() < 0.1, "opaque and faint pixels"
    assert (rgb[0] - rgb[2]).abs().max() > 0.1, "colourings of one geometry must differ"


@pytest.mark.parametrize("make, size", [(needles, (48, 40)), (pile, (16, 16))])
def test_needles_and_long_tile_lists_equal_render_cpu(make, size):
    scene = make(80 if make is needles else 400, seed=11)
    cams = scene_cameras(*size) if make is needles else orbit(0.0, 0.0, 3.0, 40.0, 16, 16).to("cpu", torch.float64)
    assert_matches_render_cpu([scene, recoloured(scene, 7)], cams, torch.zeros(3, dtype=torch.float64))


def test_float32_and_empty_scenes_and_bad_input():
    scene = random_scene(50, seed=8, dtype=torch.float32, sh_degree=0, requires_grad=True)
    empty = GaussianParams(*(torch.zeros((0,) + s) for s in ((3,), (4,), (3,), (), (1, 3))))
    cams, bg = scene_cameras(32, 24, torch.float32), torch.tensor([0.3, 0.6, 0.9])
    assert_matches_render_cpu([scene, empty], cams, bg)
    rgb, alpha, _ = render_many_forward([empty], cams, bg)
    assert torch.equal(rgb[0], bg.expand(3, 24, 32, 3)) and alpha.max() == 0
    with pytest.raises(RenderInputError, match="at least one scene"):
        render_many_forward([], cams, bg)
    with pytest.raises(RenderInputError, match="one dtype"):
        render_many_forward([scene, random_scene(20, seed=9, requires_grad=False)], cams, bg)
    bad = recoloured(scene.detach(), 1)
    bad.sh[3, 0, 1] = float("nan")
    with pytest.raises(RenderInputError, match=r"scene 1: GaussianParams.sh: 1 non-finite"):
        render_many_forward([scene.detach(), bad], cams, bg)
