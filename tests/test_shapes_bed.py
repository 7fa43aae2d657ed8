"""The geometry test bed (assets/objects/shapes.json): one prompt, one colour, modes that differ only in
shape, from a ball through superellipsoids to a cube. Neighbouring modes are close, so the posterior over
them stays soft for t >= 400 at 32 px, and the prior's depth estimate, hence SSD's baseline, depends on
x_t there. On the default library's "a red cube" (one mode) and "a ball" (two colours, one geometry) the
baseline's gradient is exactly zero: SSD cannot act, which is what this bed is for."""

from __future__ import annotations

import math

import pytest
import torch

from guidance.baselines import BASELINES
from guidance.estimators.ssd import phi_and_grad
from guidance.priors import PriorError, ProceduralPrior
from guidance.priors.objects import ObjectLibrary, parse_library
from renderers import make_renderer
from renderers.camera import CameraSampler
from studio.config import default_config

SHAPES = "assets/objects/shapes.json"
RES = 32


@pytest.fixture(scope="module")
def cams():
    return CameraSampler(default_config("sds").camera, RES, RES, seed=3).sample(2)


def _prior(path: str = "") -> ProceduralPrior:
    return ProceduralPrior(objects_path=path, renderer=make_renderer("cpu"))


def _mode_render(prior: ProceduralPrior, prompt: str, k: int, cams):
    """The render of the prompt's k-th mode from cams (rgb, alpha, depth as the renderer gives them)."""
    idx = prior.embed(prompt).data.cond[k]
    return prior.renderer(prior.library.scene(idx, prior.device), cams.cameras, torch.ones(len(cams), 3))


def _baseline_grad_norm(prior: ProceduralPrior, prompt: str, k: int, t: int, cams, draws: int = 4) -> float:
    """Mean |grad_x phi| of SSD's depth baseline at x_t noised from the k-th mode's render."""
    cond = prior.embed(prompt)
    vc = prior.view_cond(cond, cams, torch.ones(3))
    render = _mode_render(prior, prompt, k, cams)
    z = prior.encode(render.rgb.permute(0, 3, 1, 2))
    tt = torch.full((len(cams),), t)
    ab = prior.alphas_cumprod[t]
    gen = torch.Generator().manual_seed(t)
    total = 0.0
    for _ in range(draws):
        x = ab.sqrt() * z + (1 - ab).sqrt() * torch.randn(z.shape, generator=gen)
        _, g = phi_and_grad(lambda y: 1 - BASELINES["depth"](prior, y, tt, vc, render, cams), x)
        total += float(g.norm()) / draws
    return total


def test_the_library_is_one_colour_and_fifteen_geometries():
    lib = ObjectLibrary(SHAPES)
    idx = lib.match("a red shape")
    assert len(idx) == 15 and lib.match("a red blob") == idx[:6]
    colours = {tuple(p["texture"]["colors"][0]) for k in idx for p in lib.objects[k].primitives}
    assert len(colours) == 1
    scenes = [lib.scene(k, torch.device("cpu")) for k in idx]
    # from the ball (every point at radius 0.65) to the cube (corners at 0.6 sqrt(3))
    radii = [float(s.means.norm(dim=1).max()) for s in scenes]
    assert radii[0] == pytest.approx(0.65, abs=1e-4) and radii[-1] == pytest.approx(0.6 * math.sqrt(3), abs=0.08)
    assert all(b > a for a, b in zip(radii, radii[1:]))


def test_a_superellipsoid_of_exponent_two_is_the_sphere_and_its_surface_is_exact():
    from guidance.priors.objects import SHAPES as shapes

    sphere = shapes["sphere"]({"radius": 0.7, "resolution": 500})
    two = shapes["superellipsoid"]({"radius": 0.7, "exponent": 2, "resolution": 500})
    for a, b in zip(sphere, two):
        torch.testing.assert_close(a, b)
    pts, nrm, _, sp = shapes["superellipsoid"]({"radius": 0.6, "exponent": 6, "resolution": 2000})
    torch.testing.assert_close(pts.abs().pow(6).sum(-1), torch.full((2000,), 0.6**6, dtype=pts.dtype))
    # the normal is the gradient of |x|^p + |y|^p + |z|^p, so it is orthogonal to the surface: moving
    # along any tangent direction (orthogonal to the normal) keeps the surface function to second order
    tangent = torch.nn.functional.normalize(torch.linalg.cross(nrm, torch.randn_like(nrm)), dim=-1)
    moved = (pts + 1e-4 * tangent).abs().pow(6).sum(-1)
    assert float((moved - 0.6**6).abs().max()) < 1e-6
    assert float(sp.min()) > 0 and float(sp.max()) < 4 * float(sp.min())


def test_an_exponent_out_of_range_is_refused_by_name():
    doc = {"objects": [{"name": "x", "tags": ["x"], "primitives": [
        {"shape": "superellipsoid", "center": [0, 0, 0], "radius": 0.5, "exponent": 0.5, "resolution": 10,
         "texture": {"kind": "plain", "colors": [[1, 0, 0]]}}]}]}
    with pytest.raises(PriorError, match=r"primitives\[0\]\.exponent: must lie in \[1, 100\]"):
        parse_library(doc, "lib.json")


def test_the_posterior_over_neighbouring_shapes_is_soft_from_t_400(cams):
    prior = _prior(SHAPES)
    vc = prior.view_cond(prior.embed("a red shape"), cams, torch.ones(3))
    z = prior.modes(vc, "cond").refs[2]  # a rounded shape, neighbours on both sides
    gen = torch.Generator().manual_seed(0)
    entropy = {}
    for t in (100, 400, 600, 800):
        ab = prior.alphas_cumprod[t]
        x = ab.sqrt() * z + (1 - ab).sqrt() * torch.randn(z.shape, generator=gen)
        w = prior.posterior(x, torch.full((2,), t), vc)
        entropy[t] = float(-(w * w.clamp_min(1e-30).log()).sum(1).mean())
    assert entropy[100] < 0.01 and entropy[400] > 0.05 and entropy[600] > 0.4 and entropy[800] > 1.0, entropy


@pytest.mark.parametrize("t", [400, 600, 800])
def test_ssds_baseline_has_a_gradient_on_the_shapes_and_none_on_the_old_prompts(cams, t):
    shapes = _baseline_grad_norm(_prior(SHAPES), "a red shape", 2, t, cams)
    assert shapes > 1e-5, f"|grad phi| {shapes:.2e} at t {t}"
    old = _prior()
    for prompt in ("a red cube", "a ball"):
        assert _baseline_grad_norm(old, prompt, 0, t, cams, draws=2) < 1e-12 * max(shapes, 1.0), prompt


def test_a_session_trains_on_the_bed_chosen_by_prior_objects(tmp_path, monkeypatch):
    from studio.config import with_values
    from studio.trainer import Trainer

    monkeypatch.chdir(tmp_path)  # a relative library path is found in the checkout from anywhere
    cfg = with_values(default_config("sds"), {"prior.objects": SHAPES, "prompt.prompt": "a red shape",
                                              "render.resolution": 24, "render.batch": 2, "init.num": 200})
    tr = Trainer(cfg)
    tr.step()
    assert tr.score().mode_name.startswith("red_") and len(tr.prior.object_names(tr.cond)) == 15
    with pytest.raises(PriorError, match=r"^prior\.objects: .*cannot read the object library nope\.json"):
        tr.apply_config(with_values(cfg, {"prior.objects": "nope.json"}))
    assert tr.cfg.prior.objects == SHAPES, "a failed edit leaves the session's library as it was"
