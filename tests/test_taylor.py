"""The first-order (Taylor) control variate (`sds/ism/ssd.taylor`, guidance/estimators/taylor.py).

h is the Jacobian-vector product of the estimator's residual at eps = 0 in the direction eps: checked
against central finite differences (an independent slow route), as odd and linear in eps (so its mean is
exactly zero under symmetric noise), for an unchanged expected gradient, for removing all the noise
where the prior is affine in x_t (one Gaussian mode), and for a learned weight that lowers the variance."""

from __future__ import annotations

import pytest
import torch

from analytic_prior import AnalyticPrior, fake_render, make_cameras
from guidance.estimators.base import SettingsError
from guidance.estimators.common import RandomStreams
from guidance.estimators.ism import ISM, ISMSettings, ism_path, ism_taylor_term, ism_terms
from guidance.estimators.sds import SDS, SDSSettings, sds_taylor_term, sds_terms
from guidance.estimators.ssd import SSD, SSDSettings
from guidance.estimators.taylor import jvp
from guidance.variance import z_space_variance
from renderers.transfer import to_device


def _setup(prompt: str = "a thing", B: int = 2, size: int = 8):
    prior = AnalyticPrior.default(size)
    cams = make_cameras(B, size)
    render = fake_render(prior, B, seed=3)
    return prior, cams, render, prior.view_cond(prior.embed(prompt), cams)


def _z(prior, render):
    return prior.encode(render.rgb.detach().permute(0, 3, 1, 2))


def test_jvp_matches_central_differences_of_the_guided_prediction():
    prior, cams, render, vc = _setup()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([400, 700])

    def f(y):
        return prior.predict_noise(y, t, vc, 7.5)

    d = 1e-3
    fd = (f(x + d * v) - f(x - d * v)) / (2 * d)
    out = jvp(f, x, v)
    assert float((out - fd).norm() / fd.norm()) < 1e-2  # float32 differences of a steep posterior
    assert float(out.abs().max()) > 0


def test_sds_taylor_term_is_the_residuals_first_order_term_odd_and_linear_in_eps():
    prior, cams, render, vc = _setup()
    z, s = _z(prior, render), SDSSettings(guidance_scale=7.5)
    terms = sds_terms(prior, z, vc, s, 0, RandomStreams(4))
    h = sds_taylor_term(prior, z, vc, 7.5, terms)
    ab = prior.alphas_cumprod[terms.t].view(-1, 1, 1, 1)

    def residual(eps):  # SDS's residual e_cfg(sqrt(ab) z + sigma eps) - eps, as a function of eps
        return prior.predict_noise(ab.sqrt() * z + (1 - ab).sqrt() * eps, terms.t, vc, 7.5) - eps

    d = 1e-3
    fd = (residual(d * terms.eps) - residual(-d * terms.eps)) / (2 * d)
    torch.testing.assert_close(h, fd, rtol=2e-2, atol=2e-3)
    flipped = terms._replace(eps=-terms.eps)
    torch.testing.assert_close(sds_taylor_term(prior, z, vc, 7.5, flipped), -h, rtol=0, atol=1e-6)
    doubled = terms._replace(eps=2 * terms.eps)
    torch.testing.assert_close(sds_taylor_term(prior, z, vc, 7.5, doubled), 2 * h, rtol=1e-5, atol=1e-5)


def test_ism_taylor_term_matches_differences_along_the_whole_inversion_path():
    prior, cams, render, vc = _setup()
    z = _z(prior, render)
    s = ISMSettings(warmup_steps=0, t_range=(0.45, 0.5), delta_s=60, inv_steps=4)
    terms = ism_terms(prior, z, vc, s, 0, RandomStreams(5))
    assert int(terms.s[0]) > s.delta_s, "the path must take several inversion steps"
    h = ism_taylor_term(prior, z, vc, s, terms)
    t_int, s_int = int(terms.t[0]), int(terms.s[0])

    def residual(eps):
        _, e_s, e_cfg, _ = ism_path(prior, z, eps, t_int, s_int, s, vc)
        return e_cfg - e_s

    d = 1e-3
    fd = (residual(d * terms.eps) - residual(-d * terms.eps)) / (2 * d)
    torch.testing.assert_close(h, fd, rtol=3e-2, atol=3e-3)
    torch.testing.assert_close(ism_taylor_term(prior, z, vc, s, terms._replace(eps=-terms.eps)), -h, rtol=0, atol=1e-6)
    assert float(h.norm()) > 0


def _grads(est, prior, render, cams, vc, n, step=50):
    return torch.stack([est(prior, render, cams, vc, step).grad.double() for _ in range(n)])


@pytest.mark.parametrize("make, n", [
    (lambda taylor: SDS(SDSSettings(guidance_scale=7.5, taylor=taylor), seed=0), 400),
    (lambda taylor: ISM(ISMSettings(warmup_steps=0, t_range=(0.3, 0.5), taylor=taylor), seed=0), 200),
    (lambda taylor: SSD(SSDSettings(guidance_scale=7.5, taylor=taylor, lam=0.5), seed=0), 300),
])
def test_a_fixed_taylor_term_keeps_the_expected_gradient(make, n):
    """Same seed, so both runs see the same t and eps: the difference of their gradients is w * h,
    whose mean over draws must vanish (within its standard error), while h itself is not small."""
    prior, cams, render, vc = _setup()
    plain, taylor = _grads(make("off"), prior, render, cams, vc, n), _grads(make("fixed"), prior, render, cams, vc, n)
    diff = plain - taylor  # = w h per draw
    assert float(diff.abs().mean()) > 1e-3 * float(plain.abs().mean())
    z_score = diff.mean(0) / (diff.std(0) / n**0.5 + 1e-12)
    assert float(z_score.abs().mean()) < 1.2, "the Taylor term moved the expected gradient"
    assert float(z_score.abs().max()) < 5.5


def test_on_one_gaussian_mode_the_fixed_term_removes_all_of_the_noise():
    """'a blob' is one mode and CFG 1 uses the conditional branch alone: e is affine in x_t, so SDS's
    residual minus its first-order term is its value at eps = 0. At one t the gradient no longer varies."""
    prior, cams, render, vc = _setup("a blob")
    s = dict(guidance_scale=1.0, schedule="sqrt", schedule_steps=100)  # one t for every draw
    plain = _grads(SDS(SDSSettings(**s), seed=1), prior, render, cams, vc, 50)
    taylor = _grads(SDS(SDSSettings(**s, taylor="fixed"), seed=1), prior, render, cams, vc, 50)
    assert float(plain.var(0).mean()) > 1e-4
    assert float(taylor.var(0).mean()) < 1e-9 * float(plain.var(0).mean()) + 1e-12
    torch.testing.assert_close(taylor.mean(0), plain.mean(0), rtol=0, atol=4 * float(plain.std(0).max()) / 50**0.5)


@pytest.mark.parametrize("make", [
    lambda taylor: SDS(SDSSettings(guidance_scale=7.5, taylor=taylor), seed=2),
    # one t range a few steps wide: ISM's t is one per batch and would otherwise hide the noise's share
    lambda taylor: ISM(ISMSettings(warmup_steps=0, t_range=(0.3, 0.31), taylor=taylor), seed=2),
])
def test_a_learned_weight_starts_at_zero_and_lowers_the_independent_variance(make):
    prior, cams, render, vc = _setup()
    est = make("learned")
    first = est(prior, render, cams, vc, 0).diagnostics["taylor_mu"]
    assert float(first) == 0.0, "before any step the learned weight is 0: the estimator without the term"
    for step in range(60):
        mu = est(prior, render, cams, vc, step).diagnostics["taylor_mu"]
    assert 0.2 < float(mu) < 1.5, float(mu)
    z = render
    plain = z_space_variance(make("off"), prior, z, cams, vc, n=200, step=60, seed=9)
    learned = z_space_variance(est, prior, z, cams, vc, n=200, step=60, seed=9)
    assert float(learned.variance) < 0.9 * float(plain.variance), (float(learned.variance), float(plain.variance))
    # the estimator's state carries the weight: a copy made from it gives the same draws
    copy = make("learned")
    copy.load_state_dict(est.state_dict())
    a, b = est(prior, render, cams, vc, 61), copy(prior, render, cams, vc, 61)
    torch.testing.assert_close(a.grad, b.grad)
    est.reset()
    assert float(est(prior, render, cams, vc, 0).diagnostics["taylor_mu"]) == 0.0


def test_the_settings_are_checked_by_name():
    with pytest.raises(SettingsError, match=r"sds.taylor: must be one of off, fixed, learned"):
        SDSSettings(taylor="on").validate()  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"ism.taylor"):
        ISMSettings(taylor=True).validate()  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"ssd.ism.taylor: SSD's Taylor term is ssd.taylor"):
        SSDSettings(base="ism", ism=ISMSettings(taylor="fixed")).validate()
    SSDSettings(base="ism", taylor="learned").validate()


def test_ssd_on_ism_with_the_taylor_term_runs_and_reports_its_weight():
    prior, cams, render, vc = _setup()
    est = SSD(SSDSettings(base="ism", taylor="learned", lam=0.5, ism=ISMSettings(warmup_steps=0)), seed=0)
    for step in range(5):
        out = est(prior, render, cams, vc, step)
    assert torch.isfinite(out.grad).all() and float(out.diagnostics["taylor_mu"]) != 0.0
    assert set(est.state_dict()) >= {"rng", "ema_ah", "ema_hh", "taylor_rh", "taylor_hh"}


def test_the_jvp_runs_through_a_stable_diffusion_unet(tmp_path):
    """Forward mode through diffusers' UNet needs the math attention kernel; the term must agree with
    central differences there too (tiny random SD from tests/tiny_models.py)."""
    from renderers.camera import CameraSampler
    from studio.config import default_config
    from tiny_models import save_tiny_sd

    from guidance.priors.stable_diffusion import StableDiffusionPrior

    prior = StableDiffusionPrior(model=str(save_tiny_sd(tmp_path / "sd")))
    cams = CameraSampler(default_config("sds").camera, 32, 32, seed=3).sample(2)
    vc = prior.view_cond(prior.embed("a cube"), cams, torch.ones(3))
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    terms = sds_terms(prior, z, vc, SDSSettings(guidance_scale=7.5), 0, RandomStreams(0))
    h = sds_taylor_term(prior, z, vc, 7.5, terms)
    t = to_device(terms.t, z.device)
    ab = prior.alphas_cumprod[t].float().view(-1, 1, 1, 1)

    def residual(eps):
        with torch.no_grad():
            return prior.predict_noise(ab.sqrt() * z + (1 - ab).sqrt() * eps, t, vc, 7.5).float() - eps

    d = 1e-3
    fd = (residual(d * terms.eps) - residual(-d * terms.eps)) / (2 * d)
    assert float((h - fd).norm() / fd.norm()) < 1e-2


def test_a_checkpointed_session_keeps_the_learned_weight():
    """The weight's averages travel in the estimator's state: a checkpoint's trainer state passes the
    studio's checks and a trainer restored from it takes the same next step."""
    from studio.config import default_config, with_values
    from studio.handlers import _trainer_problem
    from studio.trainer import Trainer

    cfg = with_values(default_config("ssd"), {"ssd.taylor": "learned", "ssd.coefficients": "two",
                                              "render.resolution": 16, "render.batch": 2, "init.num": 100})
    tr = Trainer(cfg)
    for _ in range(3):
        tr.step()
    state = tr.state_dict()
    assert _trainer_problem(state) is None
    assert state["estimators"]["ssd"]["taylor_rh"].shape == (3,)
    again = Trainer(cfg, state=state)
    a, b = tr.step(), again.step()
    assert float(a["taylor_mu"]) == float(b["taylor_mu"]) != 0.0
    torch.testing.assert_close(tr.scene.params["means"], again.scene.params["means"])
