"""The procedural prior against closed forms: the exact mixture score, one-step denoising, CFG, depth,
the prompt table and the texture modes. Reference objects are rendered by the dense reference renderer
at 8-24 px, so everything runs in seconds on a CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from guidance.priors import PriorError, ProceduralPrior, make_prior, mode_commitment
from guidance.priors.objects import ObjectLibrary, parse_library, prompt_words
from renderers import GaussianParams, make_renderer
from renderers.camera import CameraBatch, orbit, view_bucket
from renderers.cpu import render_cpu, render_many_forward


def camera_batch(size: int, azimuths=(30.0, 120.0), elevation: float = 25.0) -> CameraBatch:
    az = torch.tensor(azimuths)
    el = torch.full_like(az, elevation)
    cams = orbit(az, el, 3.0, 45.0, size, size)
    return CameraBatch(cams, az, el, torch.full_like(az, 3.0), [view_bucket(a, elevation) for a in az.tolist()])


@pytest.fixture(scope="module")
def renderer():
    return make_renderer("reference")


@pytest.fixture(scope="module")
def prior(renderer):
    return ProceduralPrior(s_d=0.3, renderer=renderer)


def mixture_log_density(x: torch.Tensor, refs: torch.Tensor, ab: torch.Tensor, s_d: float) -> torch.Tensor:
    """log p_t(x) [B] of x [B, D] under sum_k (1/K) N(sqrt(ab) r_k, (ab s_d^2 + 1 - ab) I), refs [K, B, D]."""
    K, D = refs.shape[0], x.shape[1]
    v = ab * s_d**2 + 1 - ab  # [B]
    d2 = ((x[None] - ab.sqrt()[None, :, None] * refs) ** 2).sum(-1)  # [K, B]
    log_n = -d2 / (2 * v) - 0.5 * D * torch.log(2 * math.pi * v)
    return torch.logsumexp(log_n - math.log(K), dim=0)


@pytest.fixture(scope="module")
def cube_view(prior):
    """"a cube" bound to two 8 px cameras on grey; the unconditional branch is every object."""
    return prior.view_cond(prior.embed("a cube"), camera_batch(8), torch.full((2, 3), 0.5))


@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_noise_prediction_is_minus_sigma_times_the_exact_score(prior, cube_view, branch):
    refs = prior.modes(cube_view, branch).refs.double()  # [K, B, 3, H, W]
    assert refs.shape[0] == (8 if branch == "cond" else len(prior.library.objects))
    t = torch.tensor([350, 900])
    ab = prior.alphas_cumprod[t].double()
    g = torch.Generator().manual_seed(0)
    # Between two modes, so that several posterior weights matter.
    x = (ab.sqrt().view(-1, 1, 1, 1) * 0.5 * (refs[0] + refs[-1])
         + (1 - ab).sqrt().view(-1, 1, 1, 1) * torch.randn(refs.shape[1:], generator=g, dtype=torch.float64))
    x.requires_grad_(True)
    logp = mixture_log_density(x.flatten(1), refs.flatten(2), ab, prior.s_d)
    (score,) = torch.autograd.grad(logp.sum(), x)
    eps = prior.predict_noise(x.detach(), t, cube_view, None, branch=branch)
    assert eps.dtype == torch.float64
    torch.testing.assert_close(eps, -(1 - ab).sqrt().view(-1, 1, 1, 1) * score, rtol=1e-9, atol=1e-10)
    w = prior.posterior(x.detach(), t, cube_view, branch)
    assert w.shape == (2, refs.shape[0]) and (w.max(1).values < 0.999).any(), "test point should mix modes"


class CountingRenderer:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)


def test_reference_images_are_the_modes_in_rgb_and_cached_per_camera_set(prior, cube_view):
    counting = CountingRenderer(prior.renderer)
    p = ProceduralPrior(s_d=0.3, renderer=counting)
    refs, names = p.reference_images("a cube", camera_batch(8), torch.full((2, 3), 0.5))
    assert refs.shape == (8, 2, 8, 8, 3) and names == prior.object_names(cube_view.cond)
    torch.testing.assert_close(2 * refs.permute(0, 1, 4, 2, 3) - 1, prior.modes(cube_view, "cond").refs)
    assert counting.calls == 8  # one render per object, all cameras at once
    again, _ = p.reference_images(p.embed("a cube"), camera_batch(8), torch.full((3,), 0.5))
    assert counting.calls == 8 and again is refs, "same cameras and background: served from the cache"
    p.reference_images("a cube", camera_batch(8, azimuths=(31.0, 120.0)), torch.full((2, 3), 0.5))
    assert counting.calls == 16


def test_one_object_and_tiny_s_d_denoises_to_the_reference_in_one_step(renderer):
    prior = ProceduralPrior(s_d=1e-4, renderer=renderer)
    cams, bg = camera_batch(12), torch.ones(2, 3)
    cond = prior.embed("a red cube")
    vc = prior.view_cond(cond, cams, bg)
    ref = prior.encode(prior.reference_images(cond, cams, bg)[0][0].permute(0, 3, 1, 2))  # [B, 3, H, W]
    assert ref.std() > 0.3, "the red cube should be visible on white"
    x_t = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))  # any x_t at all
    t = torch.tensor([100, 700])
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * prior.predict_noise(x_t, t, vc, None, branch="cond")) / ab.sqrt()
    torch.testing.assert_close(x0, ref, atol=1e-4, rtol=0)


def test_cfg_is_textbook_and_scale_one_is_the_conditional(prior):
    cams, bg = camera_batch(8), torch.ones(2, 3)
    vc = prior.view_cond(prior.embed("a ball", negative="a sphere"), cams, bg)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([400, 600])
    e_c = prior.predict_noise(x, t, vc, None, branch="cond")
    e_u = prior.predict_noise(x, t, vc, None, branch="uncond")
    torch.testing.assert_close(prior.predict_noise(x, t, vc, 1.0), e_c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(prior.predict_noise(x, t, vc, 7.5), e_u + 7.5 * (e_c - e_u), rtol=1e-5, atol=1e-5)
    # The negative prompt's mixture is the unconditional branch.
    vc_sphere = prior.view_cond(prior.embed("a sphere"), cams, bg)
    torch.testing.assert_close(e_u, prior.predict_noise(x, t, vc_sphere, None, branch="cond"))
    assert (e_u - e_c).abs().max() > 1e-3, "a ball and a sphere differ"
    with pytest.raises(ValueError, match="branch"):
        prior.predict_noise(x, t, vc, 7.5, branch="both")
    with pytest.raises(ValueError, match="guidance_scale"):
        prior.predict_noise(x, t, vc, None)


def test_unknown_prompt_lists_the_known_prompts(prior):
    for bad in [dict(prompt="a dragon"), dict(prompt="a cube", negative="a dragon")]:
        with pytest.raises(PriorError) as err:
            prior.embed(**bad)
        msg = str(err.value)
        assert "dragon" in msg and all(repr(p) in msg for p in prior.prompts), msg


def test_prompt_table_matches_by_tags():
    lib = ObjectLibrary()
    names = lambda prompt: [lib.names[i] for i in lib.match(prompt)]  # noqa: E731
    assert len(names("a cube")) == 8 and "red_cube" not in names("a cube")
    assert names("a red cube") == ["red_cube"] == names("A RED CUBE, front view")
    assert names("a ball") == ["red_ball", "blue_ball"]
    assert len(names("")) == len(lib.objects) >= 14
    assert prompt_words("The Red cube, side view!") == {"red", "cube"}
    for i, obj in enumerate(lib.objects):
        n = lib.scene(i, torch.device("cpu")).num_gaussians
        assert 300 <= n <= 2000, (obj.name, n)
    shapes = {p["shape"] for o in lib.objects for p in o.primitives}
    assert {"box", "sphere", "torus", "cone"} <= shapes
    assert any(len({tuple(p["texture"]["colors"][0]) for p in o.primitives}) == 2 for o in lib.objects)


def test_library_errors_name_the_entry():
    sphere = {"shape": "sphere", "center": [0, 0, 0], "radius": 1, "resolution": 10,
              "texture": {"kind": "plain", "colors": [[1, 0, 0]]}}
    good = {"name": "x", "tags": ["x"], "primitives": [sphere]}
    parse_library({"objects": [good], "prompts": ["an x"]}, "lib.json")
    bad_shape = {**good, "primitives": [{**sphere, "shape": "blob"}]}
    with pytest.raises(PriorError, match=r"objects\[0\] \(x\)\.primitives\[0\]\.shape"):
        parse_library({"objects": [bad_shape]}, "lib.json")
    bad_color = {**good, "primitives": [{**sphere, "texture": {"kind": "checker", "colors": [[1, 0, 0]]}}]}
    with pytest.raises(PriorError, match="texture.colors: need 2"):
        parse_library({"objects": [bad_color]}, "lib.json")
    with pytest.raises(PriorError, match="matches no object"):
        parse_library({"objects": [good], "prompts": ["a cube"]}, "lib.json")


def test_s_d_is_validated(renderer):
    with pytest.raises(PriorError, match=r"s_d: must lie in \[1e-4, 10\]"):
        make_prior("procedural", s_d=0.0, renderer=renderer)
    with pytest.raises(PriorError, match="unknown settings"):
        make_prior("procedural", sd=0.1)
    assert make_prior("procedural", s_d=2.5, renderer=renderer).s_d == 2.5
    assert ProceduralPrior().renderer.name == "cpu", "without a renderer, the fast CPU backend is used"


def _lowpass_fraction(d: torch.Tensor) -> float:
    """Share of the energy of differences d [B, H, W, 3] that survives a 4x4 box average."""
    low = F.avg_pool2d(d.permute(0, 3, 1, 2), 4)
    return float((low**2).sum() * 16 / (d**2).sum())


def test_texture_modes_differ_in_high_frequencies_and_average_out_at_large_t(prior):
    cams, bg = camera_batch(24), torch.ones(2, 3)
    vc = prior.view_cond(prior.embed("a cube"), cams, bg)
    modes = prior.modes(vc, "cond").refs  # [K, B, 3, H, W] in z units
    K = modes.shape[0]
    assert K == 8 and len(set(prior.object_names(vc.cond))) == 8
    refs = prior.decode(modes.flatten(0, 1)).view(K, 2, 3, 24, 24).permute(0, 1, 3, 4, 2)  # [K, B, H, W, 3]
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    assert min(float(((refs[i] - refs[j]) ** 2).mean()) for i, j in pairs) > 0.01, "modes must differ"
    cube_low = sum(_lowpass_fraction(refs[i] - refs[j]) for i, j in pairs) / len(pairs)
    balls = prior.reference_images("a ball", cams, bg)[0]
    assert cube_low < 0.35 < 0.8 < _lowpass_fraction(balls[0] - balls[1]), cube_low

    r_bar = modes.mean(0)
    g = torch.Generator().manual_seed(3)

    def posterior_mean_distances(t: int) -> tuple[float, float]:
        to_avg, to_mode = 0.0, 0.0
        for j in range(K):
            ab = prior.alphas_cumprod[t]
            x = ab.sqrt() * modes[j] + (1 - ab).sqrt() * torch.randn(modes[j].shape, generator=g)
            w = prior.posterior(x, torch.full((2,), t), vc)
            mean = torch.einsum("bk,kbchw->bchw", w, modes)
            spread = (modes[j] - r_bar).norm()
            to_avg += float((mean - r_bar).norm() / spread) / K
            to_mode += float((mean - modes[j]).norm() / spread) / K
        return to_avg, to_mode

    avg_late, _ = posterior_mean_distances(999)
    _, mode_early = posterior_mean_distances(100)
    assert avg_late < 0.4, f"at t = 999 the posterior mean should be near the average of the modes ({avg_late:.2f})"
    assert mode_early < 0.05, f"at t = 100 it should be the true mode ({mode_early:.2f})"


def test_depth_is_differentiable_and_exact_for_one_object(renderer):
    prior = ProceduralPrior(s_d=1e-4, renderer=renderer, far_depth=7.0)
    cams, bg = camera_batch(10), torch.ones(2, 3)
    vc = prior.view_cond(prior.embed("a cone"), cams, bg)
    out = renderer(prior.library.scene(prior.embed("a cone").data.cond[0], torch.device("cpu")), cams.cameras, bg)
    hit = out.alpha.permute(0, 3, 1, 2) > 0.5
    want = torch.where(hit, out.depth.permute(0, 3, 1, 2), torch.full_like(hit, 7.0, dtype=torch.float32))
    assert hit.any() and (~hit).any()
    x = torch.randn(2, 3, 10, 10)
    t = torch.tensor([300, 800])
    torch.testing.assert_close(prior.estimate_depth(x, t, vc), want)
    torch.testing.assert_close(prior.estimate_disparity(x, t, vc), 1 / want)

    many = ProceduralPrior(s_d=0.5, renderer=renderer)
    vc = many.view_cond(many.embed(""), camera_batch(6), torch.ones(2, 3))  # every object: depths differ
    x = (0.3 * torch.randn(2, 3, 6, 6, dtype=torch.float64)).requires_grad_(True)
    tt = torch.tensor([600, 850])
    assert torch.autograd.gradcheck(lambda x: many.estimate_depth(x, tt, vc), (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: many.estimate_disparity(x, tt, vc), (x,), eps=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(many.estimate_depth(x, tt, vc).sum(), x)
    assert g.abs().max() > 1e-6, "the depth estimate must depend on x_t"


def test_mode_commitment_separates_a_mode_from_the_average(prior):
    cams, bg = camera_batch(16), torch.ones(2, 3)
    refs, names = prior.reference_images("a cube", cams, bg)
    committed = mode_commitment(refs[1], refs, names)
    assert (committed.mode, committed.mode_name) == (1, names[1])
    assert float(committed.commitment) == pytest.approx(1.0, abs=1e-5)
    assert float(committed.sharpness) == pytest.approx(1.0, abs=1e-5)
    blurry = mode_commitment(refs.mean(0), refs, names)
    assert abs(float(blurry.commitment)) < 1e-5
    # The silhouette is shared by every mode, so the average keeps its edges; the texture goes.
    assert float(blurry.sharpness) < 0.7
    halfway = mode_commitment(0.5 * (refs[2] + refs.mean(0)), refs, names)
    assert halfway.mode == 2 and float(halfway.commitment) == pytest.approx(0.5, abs=1e-5)
    balls, _ = prior.reference_images("a ball", cams, bg)
    assert prior.commitment(balls[1], "a ball", cams, bg).mode_name == "blue_ball"
    assert float(mode_commitment(balls[0], balls[:1]).commitment) == 1.0


class AnonymousRenderer:
    """The cpu renderer without its name, so that the prior renders object by object through __call__."""

    def __init__(self):
        self.inner = make_renderer("cpu")

    def __call__(self, *args):
        return self.inner(*args)


def test_fast_reference_renders_equal_the_cpu_renderer_object_by_object():
    lib = ObjectLibrary()
    cpu = torch.device("cpu")
    cubes = lib.match("a cube") + lib.match("a red cube")
    assert all(lib.scene(k, cpu).means is lib.scene(cubes[0], cpu).means for k in cubes), (
        "objects that differ only in colour share their geometry tensors (one compositing pass)")
    cams = camera_batch(20, azimuths=(30.0, 120.0, -150.0))
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.5, 0.9], [0.0, 0.0, 0.0]])
    scenes = [lib.scene(k, cpu) for k in range(len(lib.objects))]
    rgb, alpha, depth = render_many_forward(scenes, cams.cameras, bg)  # [S, B, H, W, *]
    assert rgb.shape == (len(scenes), 3, 20, 20, 3) and not rgb.requires_grad
    for k, scene in enumerate(scenes):
        want = render_cpu(scene, cams.cameras, bg)
        for got, ref in ((rgb[k], want.rgb), (alpha[k], want.alpha), (depth[k], want.depth)):
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5, msg=lib.names[k])
    assert alpha.amax(dim=(1, 2, 3, 4)).min() > 0.99, "every object should be seen"

    # Through the prior: the batched path gives the modes that object-by-object renders give.
    fast, slow = ProceduralPrior(s_d=0.3), ProceduralPrior(s_d=0.3, renderer=AnonymousRenderer())
    assert fast.renderer.name == "cpu"
    cond = fast.embed("a red cube")
    modes = [p.modes(p.view_cond(cond, cams, bg), "uncond") for p in (fast, slow)]
    for f in ("refs", "depth", "disparity"):
        torch.testing.assert_close(getattr(modes[0], f), getattr(modes[1], f), rtol=0, atol=1e-5, msg=f)
    empty = GaussianParams(*(torch.zeros((0,) + s) for s in ((3,), (4,), (3,), (), (1, 3))))
    rgb, alpha, depth = render_many_forward([empty, scenes[0]], cams.cameras, bg)
    torch.testing.assert_close(rgb[0], bg[:, None, None, :].expand(3, 20, 20, 3))
    assert alpha[0].max() == 0 and depth[0].max() == 0
