"""Renderer contracts: the CPU rasterizer against the dense reference (images and every gradient), the
reference against finite differences, closed-form scenes, bad input, and the gsplat backend (on CUDA
against the CPU renderer; here, its glue code against a stand-in with gsplat's signature)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import renderers
from render_scenes import random_scene, scene_cameras, weighted_loss
from renderers import Cameras, GaussianParams, RenderInputError, orbit
from renderers.cpu import bin_gaussians, rasterize, render_cpu
from renderers.projection import project
from renderers.reference import render_reference
from renderers.sh import rgb_to_sh0

FIELDS = ("means", "quats", "scales", "opacities", "sh")


def _grads(params: GaussianParams, out) -> list[torch.Tensor]:
    """Gradients of `weighted_loss` for every parameter, then the screen-space means2d gradient."""
    weighted_loss(out).backward()
    grads = [getattr(params, f).grad.clone() for f in FIELDS] + [out.info["means2d"].grad.clone()]
    for f in FIELDS:
        getattr(params, f).grad = None
    return grads


def _assert_outputs_close(a, b, rtol: float, atol: float) -> None:
    for name in ("rgb", "alpha", "depth", "normal"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol, msg=name)


# ----- CPU rasterizer == dense reference --------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpu_matches_reference_images_and_gradients(seed):
    params = random_scene(150, seed, sh_degree=seed % 3)
    cams = scene_cameras()
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    ref, cpu = render_reference(params, cams, bg), render_cpu(params, cams, bg)
    _assert_outputs_close(cpu, ref, rtol=1e-5, atol=1e-5)
    assert cpu.alpha.max() > 0.99 and cpu.alpha.min() < 0.1, "the scene should have opaque and faint pixels"
    for key in ("radii", "depths"):
        torch.testing.assert_close(cpu.info[key], ref.info[key], rtol=1e-6, atol=1e-6, msg=key)
    assert cpu.info["radii"].dtype == torch.int32
    seen = (cpu.info["radii"] > 0).all(-1)  # culled Gaussians behind the camera have arbitrary means2d
    torch.testing.assert_close(cpu.info["means2d"][seen], ref.info["means2d"][seen], rtol=1e-6, atol=1e-6)
    assert {k: v for k, v in cpu.info.items() if not torch.is_tensor(v)} == {
        k: v for k, v in ref.info.items() if not torch.is_tensor(v)}
    culled = (cpu.info["radii"] == 0).all(-1)
    assert culled.any() and not culled.all(), "the scene should have culled and visible Gaussians"

    names = FIELDS + ("means2d",)
    for name, g_cpu, g_ref in zip(names, _grads(params, cpu), _grads(params, ref)):
        assert g_ref.abs().max() > 0, name
        torch.testing.assert_close(g_cpu, g_ref, rtol=1e-4, atol=1e-7 * g_ref.abs().max().item(), msg=name)


def test_cpu_matches_reference_in_float32():
    # float32 inputs: the kernels compute in float64, the reference in float32, so the two differ by the
    # reference's rounding: ~2e-6 on the images; on gradients, its float32 cumprods and sums over N
    # reach ~2.5e-4 relative (measured over 6 seeds), hence rtol 1e-3 there (1e-4 holds in float64).
    params = random_scene(120, 7, dtype=torch.float32)
    cams = scene_cameras(dtype=torch.float32)
    bg = torch.tensor([1.0, 1.0, 1.0])
    ref, cpu = render_reference(params, cams, bg), render_cpu(params, cams, bg)
    assert cpu.rgb.dtype == torch.float32
    torch.testing.assert_close(cpu.rgb, ref.rgb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu.alpha, ref.alpha, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cpu.depth, ref.depth, rtol=1e-5, atol=1e-5)
    for name, g_cpu, g_ref in zip(FIELDS, _grads(params, cpu), _grads(params, ref)):
        torch.testing.assert_close(g_cpu, g_ref, rtol=1e-3, atol=1e-4 * g_ref.abs().max().item(), msg=name)


def test_rasterize_matches_reference_when_a_tile_list_is_long():
    # 400 small opaque Gaussians piled into one tile: early termination (T <= 1e-4) everywhere.
    g = torch.Generator().manual_seed(3)
    n = 400
    params = GaussianParams(
        means=0.05 * torch.randn(n, 3, generator=g, dtype=torch.float64),
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=torch.full((n, 3), 0.05, dtype=torch.float64),
        opacities=torch.full((n,), 0.95, dtype=torch.float64),
        sh=torch.randn(n, 1, 3, generator=g, dtype=torch.float64),
    )
    params.means.requires_grad_(True)
    cams = orbit(0.0, 0.0, 3.0, 40.0, 16, 16).to("cpu", torch.float64)
    ref, cpu = render_reference(params, cams, torch.zeros(3)), render_cpu(params, cams, torch.zeros(3))
    _assert_outputs_close(cpu, ref, rtol=1e-5, atol=1e-5)
    assert ref.alpha.max() > 1 - 2e-4
    (g_cpu,), (g_ref,) = (torch.autograd.grad(weighted_loss(o), params.means) for o in (cpu, ref))
    torch.testing.assert_close(g_cpu, g_ref, rtol=1e-4, atol=1e-7 * g_ref.abs().max().item())


def test_cpu_matches_reference_on_needles():
    # Long thin Gaussians at every angle: the rasterizer visits only the part of each pixel row where
    # sigma can reach the alpha cut-off; a wrong span would drop pixels along the needles.
    g = torch.Generator().manual_seed(11)
    dt, n = torch.float64, 60
    scales = torch.full((n, 3), 1e-3, dtype=dt)
    scales[:, 0] = 0.3 + 1.2 * torch.rand(n, generator=g, dtype=dt)
    params = GaussianParams(
        means=0.5 * torch.randn(n, 3, generator=g, dtype=dt), quats=torch.randn(n, 4, generator=g, dtype=dt),
        scales=scales, opacities=0.2 + 0.8 * torch.rand(n, generator=g, dtype=dt),
        sh=0.5 * torch.randn(n, 1, 3, generator=g, dtype=dt),
    )
    params.means.requires_grad_(True)
    cams = scene_cameras(48, 40)
    ref, cpu = render_reference(params, cams, torch.zeros(3)), render_cpu(params, cams, torch.zeros(3))
    _assert_outputs_close(cpu, ref, rtol=1e-5, atol=1e-5)
    (g_cpu,), (g_ref,) = (torch.autograd.grad(weighted_loss(o), params.means) for o in (cpu, ref))
    torch.testing.assert_close(g_cpu, g_ref, rtol=1e-4, atol=1e-7 * g_ref.abs().max().item())


def test_cpu_matches_reference_where_alpha_clamps():
    # An opaque Gaussian 22 px wide in front: at the four centre pixels o exp(-sigma) > 0.999, where the
    # clamp holds alpha and passes no gradient; a half-transparent one behind it.
    dt = torch.float64
    f, z, s = 16 / math.tan(math.radians(20.0)), 2.0, 1.0
    assert math.exp(-0.25 / ((f * s / z) ** 2 + 0.3)) > 0.999, "the scene must reach the clamp"
    params = GaussianParams(
        means=torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.3, 0.1]], dtype=dt),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.3, 0.0]], dtype=dt),
        scales=torch.tensor([[0.2, s, s], [0.3, 0.5, 0.4]], dtype=dt), opacities=torch.tensor([1.0, 0.5], dtype=dt),
        sh=torch.tensor([[[0.5, -0.2, 0.1]], [[-0.3, 0.4, 0.2]]], dtype=dt),
    )
    for t in (params.means, params.quats, params.scales, params.opacities, params.sh):
        t.requires_grad_(True)
    cams = orbit(0.0, 0.0, 3.0, 40.0, 32, 32).to("cpu", dt)
    ref, cpu = render_reference(params, cams, torch.ones(3)), render_cpu(params, cams, torch.ones(3))
    _assert_outputs_close(cpu, ref, rtol=1e-5, atol=1e-5)
    for name, g_cpu, g_ref in zip(FIELDS + ("means2d",), _grads(params, cpu), _grads(params, ref)):
        torch.testing.assert_close(g_cpu, g_ref, rtol=1e-4, atol=1e-7 * g_ref.abs().max().item(), msg=name)


def test_reference_gradients_match_finite_differences():
    # Three Gaussians well inside an 8x8 image, opacities <= 0.6 (no clamp, T never near 1e-4), distinct
    # scales (no argmin ties): the only kinks left are pixels at alpha = 1/255, which the step misses.
    dt = torch.float64
    params = GaussianParams(
        means=torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.15, -0.1], [-0.2, -0.1, 0.1]], dtype=dt),
        quats=torch.tensor([[1.0, 0.1, -0.2, 0.3], [0.5, 0.5, 0.1, 0.0], [0.2, -0.3, 0.9, 0.1]], dtype=dt),
        scales=torch.tensor([[0.3, 0.2, 0.1], [0.15, 0.25, 0.35], [0.2, 0.12, 0.3]], dtype=dt),
        opacities=torch.tensor([0.6, 0.45, 0.5], dtype=dt),
        sh=0.3 * torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0), dtype=dt),
    )
    cams = orbit([10.0, 200.0], [20.0, -30.0], 3.0, 40.0, 8, 8).to("cpu", dt)
    bg = torch.tensor([0.3, 0.6, 0.1], dtype=dt)

    def images(*tensors):
        out = render_reference(GaussianParams(*tensors), cams, bg)
        return torch.cat([out.rgb, out.alpha, out.depth, out.normal], dim=-1)

    inputs = tuple(getattr(params, f).clone().requires_grad_(True) for f in FIELDS)
    # fast_mode compares v^T J u for random u, v (one backward instead of one per output pixel).
    assert torch.autograd.gradcheck(images, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# ----- closed-form scenes -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_single_gaussian_on_axis_has_the_closed_form_footprint(backend):
    size, fovy, dist, s, opacity = 32, 40.0, 3.0, 0.1, 0.9
    f = 0.5 * size / math.tan(math.radians(fovy) / 2)
    # What orbit(0, 0, dist, fovy) builds, written out in float64: at (dist, 0, 0) looking down -x.
    viewmat = torch.tensor([[0.0, 1, 0, 0], [0, 0, -1, 0], [-1, 0, 0, dist], [0, 0, 0, 1]], dtype=torch.float64)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    cams = Cameras(viewmat, K, size, size)
    torch.testing.assert_close(orbit(0.0, 0.0, dist, fovy, size, size).viewmats[0].double(), viewmat, atol=1e-6, rtol=0)
    dt = torch.float64
    params = GaussianParams(
        means=torch.zeros(1, 3, dtype=dt), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dt),
        scales=torch.tensor([[0.5 * s, s, s]], dtype=dt), opacities=torch.tensor([opacity], dtype=dt),
        sh=rgb_to_sh0(torch.tensor([[[0.8, 0.4, 0.2]]], dtype=dt)),
    )
    out = renderers.make_renderer(backend)(params, cams, torch.zeros(3))
    var = (f * s / dist) ** 2 + 0.3  # the camera sees the y and z axes: both scale s; plus the low-pass
    torch.testing.assert_close(out.info["means2d"][0, 0], torch.tensor([size / 2, size / 2], dtype=torch.float64))
    r = math.ceil(3.33 * math.sqrt(var))
    assert out.info["radii"][0, 0].tolist() == [r, r]
    centres = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    d2 = centres[None, :] ** 2 + centres[:, None] ** 2  # [H, W]
    expected = opacity * torch.exp(-0.5 * d2 / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    torch.testing.assert_close(out.alpha[0, ..., 0], expected, rtol=1e-9, atol=1e-12)
    lit = expected > 0
    torch.testing.assert_close(out.depth[0, ..., 0][lit], torch.full_like(expected[lit], dist))
    # The shortest axis is world x, which points at the camera: camera-space normal (0, 0, -1).
    toward_camera = torch.tensor([0.0, 0.0, -1.0], dtype=dt).expand(int(lit.sum()), 3)
    torch.testing.assert_close(out.normal[0][lit], toward_camera)
    colour = torch.tensor([0.8, 0.4, 0.2], dtype=dt)
    torch.testing.assert_close(out.rgb[0][lit], expected[lit][:, None] * colour)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_front_gaussian_hides_the_one_behind(backend):
    dt = torch.float64
    red = rgb_to_sh0(torch.tensor([1.0, 0.0, 0.0], dtype=dt))
    blue = rgb_to_sh0(torch.tensor([0.0, 0.0, 1.0], dtype=dt))
    params = GaussianParams(
        means=torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]], dtype=dt),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2, dtype=dt), scales=torch.full((2, 3), 0.6, dtype=dt),
        opacities=torch.tensor([0.999, 0.999], dtype=dt), sh=torch.stack([red, blue])[:, None, :],
    )
    cams = orbit([0.0, 180.0], 0.0, 4.0, 40.0, 16, 16).to("cpu", dt)  # from +x (red side), from -x
    out = renderers.make_renderer(backend)(params, cams, torch.zeros(3))
    front, back = out.rgb[0, 7:9, 7:9].mean((0, 1)), out.rgb[1, 7:9, 7:9].mean((0, 1))
    assert front[0] > 0.95 and front[2] < 0.05, front
    assert back[2] > 0.95 and back[0] < 0.05, back
    assert abs(out.depth[0, 8, 8, 0] - 3.5) < 0.05 and abs(out.depth[1, 8, 8, 0] - 3.5) < 0.05


# ----- bad input and degenerate scenes ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("field", FIELDS)
def test_nan_parameters_are_refused_naming_the_field(backend, field):
    params = random_scene(20, 0, requires_grad=False)
    getattr(params, field).view(-1)[3] = float("nan")
    with pytest.raises(RenderInputError, match=f"GaussianParams.{field}:.*non-finite"):
        renderers.make_renderer(backend)(params, scene_cameras(), torch.zeros(3))


def test_zero_size_image_is_refused():
    with pytest.raises(ValueError, match="at least 1x1"):
        orbit(0.0, 0.0, 3.0, 40.0, 0, 16)
    with pytest.raises(ValueError, match="height=0"):
        Cameras(torch.eye(4), torch.eye(3), 16, 0)


def test_empty_scene_renders_the_background():
    params = random_scene(10, 0, requires_grad=False)
    empty = GaussianParams(*(getattr(params, f)[:0] for f in FIELDS))
    cams = scene_cameras()
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]], dtype=torch.float64)
    out = render_cpu(empty, cams, bg)
    assert out.rgb.shape == (3, 24, 32, 3)
    torch.testing.assert_close(out.rgb, bg[:, None, None, :].expand(3, 24, 32, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all() and (out.normal == 0).all()
    assert out.info["means2d"].shape == (3, 0, 2) and out.info["radii"].shape == (3, 0, 2)


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_degenerate_scenes_stay_finite(dt):
    n = 6
    params = GaussianParams(
        means=torch.tensor([[5.0, 0, 0], [3.0 - 0.0100001, 0, 0], [2.9, 0, 0], [0, 0, 0], [0, 50, 0], [0, 0, 0]],
                           dtype=dt),  # behind, at the near plane, 10 cm away, centre, far off-screen, centre
        quats=torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=dt),
        scales=torch.tensor([[1.0] * 3, [0.5] * 3, [1e-7] * 3, [1e3] * 3, [1.0] * 3, [1e-9, 1e-9, 2.0]], dtype=dt),
        opacities=torch.tensor([1.0, 1.0, 1.0, 0.5, 1.0, 1.0], dtype=dt), sh=torch.zeros(n, 1, 3, dtype=dt),
    )
    for t in (params.means, params.scales, params.opacities):
        t.requires_grad_(True)
    cams = orbit(0.0, 0.0, 3.0, 40.0, 20, 20).to("cpu", dt)
    out = render_cpu(params, cams, torch.ones(3))
    for name in ("rgb", "alpha", "depth", "normal"):
        assert torch.isfinite(getattr(out, name)).all(), name
    weighted_loss(out).backward()
    for t in (params.means, params.scales, params.opacities):
        assert torch.isfinite(t.grad).all()
    ref = render_reference(params.detach(), cams, torch.ones(3))
    torch.testing.assert_close(out.rgb.detach(), ref.rgb, rtol=1e-5, atol=1e-5)


# ----- gsplat backend ---------------------------------------------------------------------------------


def _gsplat_stand_in(*args, **kwargs):
    """`gsplat.rasterization` for the arguments render_gsplat passes, built from the CPU pieces."""
    import gsplat

    a = inspect.signature(gsplat.rasterization).bind(*args, **kwargs).arguments  # wrong names raise
    modes = (a["packed"], a["render_mode"], a["rasterize_mode"], a["sh_degree"])
    assert modes == (False, "RGB+ED", "classic", None), modes
    assert (a["eps2d"], a["near_plane"], a.get("backgrounds")) == (0.3, 0.01, None)
    colors, viewmats = a["colors"], a["viewmats"]
    C, N, D = colors.shape
    assert viewmats.shape == (C, 4, 4) and a["means"].shape == (N, 3) and colors.dtype == torch.float32
    params = GaussianParams(a["means"], a["quats"], a["scales"], a["opacities"], torch.zeros(N, 1, 3))
    cams = Cameras(viewmats, a["Ks"], a["width"], a["height"])
    proj = project(params, cams)
    feats = torch.cat([colors, proj.depths[..., None]], dim=-1)
    tiling = bin_gaussians(proj.means2d, proj.radii, proj.depths, cams.width, cams.height)
    image, alpha = rasterize(proj.means2d, proj.conics, feats, a["opacities"][None].expand(C, N), tiling)
    image = torch.cat([image[..., :D], image[..., D:] / alpha.clamp_min(1e-10)], dim=-1)  # "ED"
    return image, alpha, dict(means2d=proj.means2d, radii=proj.radii_int, depths=proj.depths)


def test_gsplat_glue_matches_cpu_with_a_stand_in_rasterizer():
    from renderers.gsplat_backend import render_with

    params = random_scene(80, 4, dtype=torch.float32)
    cams = scene_cameras(dtype=torch.float32)
    bg = torch.tensor([0.3, 0.2, 0.1]).expand(3, 3)
    out, cpu = render_with(_gsplat_stand_in, params, cams, bg), render_cpu(params, cams, bg)
    _assert_outputs_close(out, cpu, rtol=1e-5, atol=1e-5)
    for name, g_out, g_cpu in zip(FIELDS + ("means2d",), _grads(params, out), _grads(params, cpu)):
        torch.testing.assert_close(g_out, g_cpu, rtol=1e-4, atol=1e-6 * g_cpu.abs().max().item(), msg=name)


def test_gsplat_refuses_cpu_tensors_or_a_machine_without_cuda():
    from renderers.gsplat_backend import render_gsplat

    if torch.cuda.is_available():
        with pytest.raises(RenderInputError, match="CUDA"):
            render_gsplat(random_scene(10, 0, requires_grad=False), scene_cameras(), torch.zeros(3))
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            renderers.make_renderer("gsplat")


def test_gsplat_builds_its_kernels_inside_the_checkout_unless_told_otherwise():
    from pathlib import Path

    from renderers.gsplat_backend import jit_build_settings

    root = Path(renderers.__file__).resolve().parents[1]
    env: dict[str, str] = {}
    got = jit_build_settings(env)
    assert got["TORCH_EXTENSIONS_DIR"] == str(root / "build" / "torch_extensions")
    assert int(got["MAX_JOBS"]) >= 1
    assert ("TORCH_CUDA_ARCH_LIST" in got) == torch.cuda.is_available()
    assert "/build/" in (root / ".gitignore").read_text().split()  # the build stays out of git
    mine = {"TORCH_EXTENSIONS_DIR": "/somewhere", "TORCH_CUDA_ARCH_LIST": "8.6", "MAX_JOBS": "2"}
    assert jit_build_settings(dict(mine)) == mine  # what the user set wins


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's rasterizer needs CUDA; this machine has none")
def test_gsplat_matches_cpu_on_cuda():
    params = random_scene(200, 5, dtype=torch.float32)
    cams = scene_cameras(64, 48, dtype=torch.float32)
    bg = torch.tensor([0.3, 0.2, 0.1])
    cpu = render_cpu(params, cams, bg)
    g_cpu = _grads(params, cpu)
    params_gpu = GaussianParams(*(getattr(params, f).detach().cuda().requires_grad_(True) for f in FIELDS))
    gpu = renderers.make_renderer("gsplat")(params_gpu, cams.to("cuda"), bg.cuda())
    for name in ("rgb", "alpha", "depth", "normal"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=1e-4, atol=1e-4, msg=name)
    # gsplat evaluates exp in fast float32 (__expf): gradients agree to float32 accumulation accuracy.
    for name, g_gpu, g_ref in zip(FIELDS + ("means2d",), _grads(params_gpu, gpu), g_cpu):
        torch.testing.assert_close(g_gpu.cpu(), g_ref, rtol=1e-3, atol=1e-3 * g_ref.abs().max().item(), msg=name)
