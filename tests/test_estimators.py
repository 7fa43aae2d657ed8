"""SDS against its equations, and the contract every estimator (SDS, ISM, SSD) keeps.

The oracle is tests/analytic_prior.py: a Gaussian-mixture prior with exact noise predictions.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from analytic_prior import AnalyticPrior, fake_render, make_cameras
from guidance.estimators import (
    ESTIMATORS, ISMSettings, SDSSettings, SSDSettings, SettingsError, make_estimator, settings_class,
)
from guidance.estimators.common import NOISE_SEED_OFFSET, timestep_weight
from guidance.estimators.sds import SDS, sds_timesteps, t_max_at

METHODS = tuple(ESTIMATORS)


@pytest.fixture
def setup():
    prior = AnalyticPrior.default(size=16)
    cams = make_cameras(3, 16)
    vc = prior.view_cond(prior.embed("a thing"), cams)
    return prior, cams, vc


# ----- SDS against its equations ---------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia", "lucid"])
def test_sds_gradient_is_weighted_noise_residual(setup, weighting):
    prior, cams, vc = setup
    seed, B = 11, 3
    est = SDS(SDSSettings(guidance_scale=7.5, weighting=weighting), seed=seed)
    render = fake_render(prior, B)
    res = est(prior, render, cams, vc, step=0)

    # Replay the documented streams independently: t from the CPU stream, then eps.
    t = torch.randint(20, 981, (B,), generator=torch.Generator().manual_seed(seed))
    eps = torch.randn((B, 3, 16, 16), generator=torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET))
    z = 2 * render.rgb.detach().permute(0, 3, 1, 2) - 1
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * z + (1 - ab).sqrt() * eps
    cond, uncond = vc.data
    e_u, e_c = prior.eps_of(x_t, t, uncond), prior.eps_of(x_t, t, cond)
    e_cfg = e_u + 7.5 * (e_c - e_u)
    w = {"sds": 1 - ab, "uniform": torch.ones_like(ab), "fantasia": ab.sqrt() * (1 - ab),
         "lucid": ((1 - ab) / ab).sqrt()}[weighting]
    assert torch.equal(res.diagnostics["t"], t)
    torch.testing.assert_close(res.grad, w * (e_cfg - eps), rtol=1e-5, atol=1e-6)


def test_loss_gradient_is_g_over_B(setup):
    prior, cams, vc = setup
    render = fake_render(prior, 3)
    res = SDS(seed=0)(prior, render, cams, vc, 0)
    gz, = torch.autograd.grad(res.loss, res.z, retain_graph=True)
    torch.testing.assert_close(gz, res.grad / 3)
    # ... and through encode (z = 2 rgb - 1) back to the render: 2 g / B, channels last.
    res.loss.backward()
    torch.testing.assert_close(render.rgb.grad, 2 * res.grad.permute(0, 2, 3, 1) / 3)


def test_sds_timesteps_cover_the_range_inclusive():
    from guidance.estimators.common import RandomStreams

    t = sds_timesteps(SDSSettings(), 0, 20000, 1000, RandomStreams(0))
    assert int(t.min()) == 20 and int(t.max()) == 980
    t = sds_timesteps(SDSSettings(t_range=(0.0, 1.0)), 0, 20000, 1000, RandomStreams(0))
    assert int(t.min()) == 0 and int(t.max()) == 999  # t_max = T clipped to the last timestep


def test_t_max_annealing_and_sqrt_schedule():
    from guidance.estimators.common import RandomStreams

    s = SDSSettings(t_max_final=0.5, anneal_start=100, anneal_end=300)
    assert t_max_at(s, 0) == 0.98 and t_max_at(s, 100) == 0.98
    assert t_max_at(s, 200) == pytest.approx(0.74) and t_max_at(s, 300) == 0.5 and t_max_at(s, 10**6) == 0.5
    jump = SDSSettings(t_max_final=0.5, anneal_start=500, anneal_end=500)
    assert t_max_at(jump, 499) == 0.98 and t_max_at(jump, 500) == 0.5
    t = sds_timesteps(SDSSettings(t_max_final=0.5, anneal_end=0), 10, 5000, 1000, RandomStreams(0))
    assert int(t.max()) == 500
    sq = SDSSettings(schedule="sqrt", schedule_steps=400)
    rng = RandomStreams(0)
    assert sds_timesteps(sq, 0, 2, 1000, rng).tolist() == [980, 980]
    assert sds_timesteps(sq, 100, 2, 1000, rng).tolist() == [500, 500]  # 980 - 960 * sqrt(1/4)
    assert sds_timesteps(sq, 400, 1, 1000, rng).tolist() == [20]
    assert sds_timesteps(sq, 9999, 1, 1000, rng).tolist() == [20]


def test_weighting_closed_forms():
    ab = torch.tensor([0.25, 0.64])
    torch.testing.assert_close(timestep_weight("sds", ab).flatten(), torch.tensor([0.75, 0.36]))
    torch.testing.assert_close(timestep_weight("fantasia", ab).flatten(), torch.tensor([0.375, 0.288]))
    torch.testing.assert_close(timestep_weight("lucid", ab).flatten(), torch.tensor([3**0.5, 0.75]))
    with pytest.raises(SettingsError, match="weighting"):
        timestep_weight("bogus", ab)


def test_grad_clamp_and_nonfinite_count(setup):
    prior, cams, vc = setup
    render = fake_render(prior, 3)
    res = SDS(SDSSettings(grad_clamp=0.01), seed=0)(prior, render, cams, vc, 0)
    assert float(res.grad.abs().max()) <= 0.01 + 1e-7

    class NaNPrior(AnalyticPrior):
        def predict_noise(self, x_t, t, vc, guidance_scale, *, branch="cfg"):
            e = super().predict_noise(x_t, t, vc, guidance_scale, branch=branch).clone()
            e[0, 0, 0, :2] = float("nan")
            return e

    bad = NaNPrior(prior.decode(prior.modes), prior.depths, prior.prompts)
    res = SDS(seed=0)(bad, render, cams, vc, 0)
    assert int(res.diagnostics["nonfinite"]) == 2
    assert torch.isfinite(res.grad).all() and torch.isfinite(res.loss)


def test_settings_validation_names_the_field():
    cases = [
        (SDSSettings(guidance_scale=-1.0), "sds.guidance_scale"),
        (SDSSettings(t_range=(0.6, 0.2)), "sds.t_range"),
        (SDSSettings(weighting="bogus"), "sds.weighting"),  # type: ignore[arg-type]
        (SDSSettings(t_max_final=0.01), "sds.t_max_final"),
        (SDSSettings(anneal_start=10, anneal_end=5), "sds.anneal_end"),
        (SDSSettings(grad_clamp=-1.0), "sds.grad_clamp"),
        (ISMSettings(delta_s=0), "ism.delta_s"),
        (ISMSettings(inv_steps=0), "ism.inv_steps"),
        (ISMSettings(t_max_start=0.3), "ism.t_max_start"),
        (SSDSettings(ema_beta=1.0), "ssd.ema_beta"),
        (SSDSettings(mu_mode="sometimes"), "ssd.mu_mode"),  # type: ignore[arg-type]
        (SSDSettings(ism=ISMSettings(delta_t=0)), "ssd.ism.delta_t"),
    ]
    for settings, field in cases:
        with pytest.raises(SettingsError, match=field.replace(".", r"\.")) as info:
            settings.validate()
        assert "must" in str(info.value) or "need" in str(info.value)


# ----- the contract of every estimator -----------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_finite_gradient_of_the_right_shape_and_diagnostics(setup, method):
    prior, cams, vc = setup
    render = fake_render(prior, 3)
    res = make_estimator(method, seed=0)(prior, render, cams, vc, 0)
    assert res.grad.shape == res.z.shape == (3, 3, 16, 16)
    assert res.loss.dim() == 0 and torch.isfinite(res.loss)
    res.loss.backward()
    assert torch.isfinite(render.rgb.grad).all() and render.rgb.grad.abs().sum() > 0
    need = {"t", "grad_norm", "grad_var", "nonfinite"} | {"ism": {"s", "delta_T", "prior_calls"},
                                                         "ssd": {"mu", "phi"}}.get(method, set())
    assert need <= set(res.diagnostics)
    assert all(isinstance(v, torch.Tensor) for v in res.diagnostics.values())
    assert res.diagnostics["t"].shape == (3,)
    torch.testing.assert_close(res.diagnostics["grad_norm"], res.grad.norm() / 3)


@pytest.mark.parametrize("method", METHODS)
def test_seeded_runs_repeat_and_state_round_trips(setup, method):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    a, b = make_estimator(method, seed=5), make_estimator(method, seed=5)
    ga = [a(prior, render, cams, vc, k).grad for k in range(3)]
    gb = [b(prior, render, cams, vc, k).grad for k in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    assert not torch.equal(ga[0], ga[1])  # fresh draws each step
    saved = a.state_dict()
    after = a(prior, render, cams, vc, 3).grad
    c = make_estimator(method, seed=99)
    c.load_state_dict(saved)
    assert torch.equal(c(prior, render, cams, vc, 3).grad, after)
    a.reseed(5)
    a.reset()
    assert torch.equal(a(prior, render, cams, vc, 0).grad, make_estimator(method, seed=5)(prior, render, cams, vc, 0).grad)


@pytest.mark.parametrize("method", METHODS)
def test_settings_are_replaced_whole_between_steps(setup, method):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    est = make_estimator(method, seed=0)
    before = est(prior, render, cams, vc, 0).diagnostics["t"]
    est.settings = replace(est.settings, t_range=(0.3, 0.3))
    assert est(prior, render, cams, vc, 10**6).diagnostics["t"].tolist() == [300] * 3
    assert before.tolist() != [300] * 3
    with pytest.raises(SettingsError, match="guidance_scale"):
        est.settings = replace(est.settings, guidance_scale=-5.0)
    with pytest.raises(SettingsError, match="settings must be"):
        est.settings = object()
    assert est.settings.guidance_scale > 0  # the refused settings left the old ones in place


def test_registry():
    assert set(ESTIMATORS) == {"sds", "ism", "ssd"}
    assert settings_class("ism") is ISMSettings and settings_class("ssd") is SSDSettings
    est = make_estimator("ism", ISMSettings(delta_t=80), seed=3)
    assert est.settings.delta_t == 80 and est.name == "ism"
    with pytest.raises(SettingsError, match="unknown estimator 'vsd'"):
        make_estimator("vsd")
    with pytest.raises(SettingsError, match="ISMSettings"):
        make_estimator("ism", SDSSettings())


# ----- Stable Diffusion smoke (tiny random pipeline, CPU) ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    tiny = pytest.importorskip("tiny_models", reason="tests/tiny_models.py (tiny SD stand-ins) is missing")
    pytest.importorskip("guidance.priors.stable_diffusion", reason="the Stable Diffusion prior is missing")
    from guidance.priors import make_prior

    root = tmp_path_factory.mktemp("tiny")
    sd, dpt = tiny.save_tiny_sd(root / "sd"), tiny.save_tiny_dpt(root / "dpt")
    return make_prior(str(sd), device="cpu", dtype="float32", image_size=32, depth_model=str(dpt))


@pytest.mark.parametrize("method,settings", [
    ("sds", SDSSettings()),
    ("ism", ISMSettings()),
    ("ssd", SSDSettings(guidance_scale=7.5)),
    ("ssd", SSDSettings(baseline="normal", base="ism")),
])
def test_one_step_with_tiny_stable_diffusion(tiny_sd, method, settings):
    from renderers.types import RenderOutput

    B, H = 2, 24  # renders at 24 px, the VAE sees 32 px, latents [B, 4, 16, 16], depth at the render size
    cams = make_cameras(B, H)
    vc = tiny_sd.view_cond(tiny_sd.embed("a cube"), cams, torch.ones(B, 3))
    rgb = torch.rand(B, H, H, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    alpha = torch.ones(B, H, H, 1)
    depth = 3.0 + torch.linspace(-0.5, 0.5, H).view(1, H, 1, 1).expand(B, H, H, 1)
    normal = torch.tensor([0.0, 0.0, -1.0]).expand(B, H, H, 3)
    res = make_estimator(method, settings, seed=0)(tiny_sd, RenderOutput(rgb, alpha, depth, normal), cams, vc, 0)
    assert res.grad.shape == res.z.shape == (B, 4, 16, 16)
    assert torch.isfinite(res.grad).all() and int(res.diagnostics["nonfinite"]) == 0
    res.loss.backward()
    assert rgb.grad.shape == rgb.shape and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
