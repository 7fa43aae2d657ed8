"""SSD: it is SDS at phi = 1, its control variate has zero mean (Stein's identity, minus sign), its
learned mu lowers the gradient variance, and the baselines compute what they say."""

from __future__ import annotations

import pytest
import torch

from analytic_prior import (
    AnalyticPrior, CountingPrior, DepthOnlyPrior, fake_render, make_cameras, mode_depths, smooth_modes,
)
from guidance.baselines import (
    depth_similarity, masked_pearson, normal_similarity, normals_from_depth, prior_disparity, resize_masked,
)
from guidance.estimators import ISM, SDS, SSD, ISMSettings, SDSSettings, SSDSettings
from guidance.estimators.common import NOISE_SEED_OFFSET
from guidance.estimators.ssd import control_variate, phi_and_grad
from guidance.priors.base import PriorError, add_noise
from guidance.variance import z_space_variance
from renderers.camera import CameraBatch, Cameras
from renderers.types import RenderOutput


@pytest.fixture
def setup():
    prior = AnalyticPrior.default(size=16)
    cams = make_cameras(3, 16)
    return prior, cams, prior.view_cond(prior.embed("a thing"), cams)


# ----- SSD reduces to SDS / ISM ------------------------------------------------------------------------
@pytest.mark.parametrize("mu_mode", ["fixed", "learned"])
def test_phi_one_mu_one_is_sds_exactly(setup, mu_mode):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    sds = SDS(SDSSettings(guidance_scale=30.0, weighting="fantasia"), seed=4)
    ssd = SSD(SSDSettings(guidance_scale=30.0, weighting="fantasia", c0=1.0, lam=0.0, mu=1.0,
                          mu_mode=mu_mode), seed=4)
    a, b = sds(prior, render, cams, vc, 0), ssd(prior, render, cams, vc, 0)
    assert torch.equal(a.diagnostics["t"], b.diagnostics["t"])
    assert torch.equal(a.grad, b.grad)
    assert float(b.diagnostics["mu"]) == 1.0 and b.diagnostics["phi"].tolist() == [1.0] * 3


def test_on_ism_phi_one_mu_one_is_ism(setup):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    ism_settings = ISMSettings(warmup_steps=0)
    a = ISM(ism_settings, seed=2)(prior, render, cams, vc, 0)
    b = SSD(SSDSettings(base="ism", ism=ism_settings, lam=0.0, mu_mode="fixed"), seed=2)(prior, render, cams, vc, 0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert b.diagnostics["prior_calls"] == a.diagnostics["prior_calls"]


# ----- Stein's identity ----------------------------------------------------------------------------------
def close_modes_prior(size: int = 16) -> AnalyticPrior:
    """Two modes close enough (||r_0 - r_1|| = 3 in z units) that the posterior, and with it the depth
    estimate, moves with the noise at mid t; they differ in depth (a bump and a tilted plane)."""
    base = smooth_modes(1, size)
    delta = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    delta = delta / delta.norm() * 1.5  # z = 2 rgb - 1 doubles it
    return AnalyticPrior(torch.cat([base, base + delta]), mode_depths(2, size), {"a thing": [0, 1]}, s_d=0.3)


def repeat_render(render: RenderOutput, n: int) -> RenderOutput:
    return RenderOutput(*(x.expand(n, *x.shape[1:]) for x in (render.rgb, render.alpha, render.depth,
                                                                render.normal)))


def repeat_cameras(cams: CameraBatch, n: int) -> CameraBatch:
    c = cams.cameras
    return CameraBatch(Cameras(c.viewmats.expand(n, 4, 4), c.Ks.expand(n, 3, 3), c.width, c.height),
                       cams.azimuth_deg.expand(n), cams.elevation_deg.expand(n), cams.radius.expand(n),
                       cams.buckets * n)


def stein_means(similarity, n: int, t: int = 500, lam: float = 5.0, seed: int = 0):
    """Means over n noise draws of h = eps phi - sigma_t grad phi and of the wrong-sign h+ at a fixed
    render (z of mode 0) and camera; phi = lam (1 - similarity) (c0 = 0: any smooth phi will do)."""
    prior = close_modes_prior()
    cams = repeat_cameras(make_cameras(1, 16), n)
    vc = prior.view_cond(prior.embed("a thing"), n)
    render = repeat_render(fake_render(prior, 1, requires_grad=False), n)
    z = prior.encode(render.rgb.permute(0, 3, 1, 2))
    eps = torch.randn((n, 3, 16, 16), generator=torch.Generator().manual_seed(seed))
    tt = torch.full((n,), t)
    x_t = add_noise(prior.alphas_cumprod, z, eps, tt)
    phi, gphi = phi_and_grad(lambda x: lam * (1 - similarity(prior, x, tt, vc, render, cams)), x_t)
    sigma = (1 - prior.alphas_cumprod[t]).sqrt()
    h = control_variate(eps, phi, gphi, sigma.view(1, 1, 1, 1))
    return h.mean(0), (eps * phi.view(-1, 1, 1, 1) + sigma * gphi).mean(0), phi


@pytest.mark.parametrize("similarity", [depth_similarity, normal_similarity])
def test_control_variate_has_zero_mean(similarity):
    small_minus, small_plus, phi = stein_means(similarity, 256)
    big_minus, big_plus, _ = stein_means(similarity, 4096, seed=1)
    assert phi.std() > 0.05  # phi really moves with the noise
    ratio = float(small_minus.norm() / big_minus.norm())
    assert 3.3 < ratio < 4.8, ratio  # the mean shrinks like 1 / sqrt(n): zero mean
    if similarity is depth_similarity:  # large E[grad phi]: the plus sign's bias 2 sigma_t E[grad phi] shows
        assert float(small_plus.norm() / big_plus.norm()) < 2.3
        assert float(big_plus.norm()) > 2.5 * float(big_minus.norm())


def test_learned_mu_lowers_gradient_variance_below_sds():
    prior = AnalyticPrior.default(size=16, s_d=1.0)
    cams = make_cameras(2, 16)
    vc = prior.view_cond(prior.embed("a thing"), cams)
    render = fake_render(prior, 2, requires_grad=False)
    sds = SDS(SDSSettings(guidance_scale=7.5), seed=1)
    base = z_space_variance(sds, prior, render, cams, vc, n=256, seed=5).variance
    for lam in (0.0, 0.3):
        ssd = SSD(SSDSettings(guidance_scale=7.5, lam=lam, mu_mode="learned"), seed=2)
        for k in range(60):  # learn mu at this scene
            ssd(prior, render, cams, vc, k)
        var = z_space_variance(ssd, prior, render, cams, vc, n=256, seed=5).variance
        assert float(var) < 0.85 * float(base), (lam, float(var), float(base))


def test_learned_mu_uses_only_previous_steps(setup):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    ssd = SSD(SSDSettings(guidance_scale=7.5, lam=0.0, c0=1.0, mu_mode="learned", ema_beta=0.9), seed=7)
    r0 = ssd(prior, render, cams, vc, 0)
    assert float(r0.diagnostics["mu"]) == 1.0  # the start value, not this step's estimate
    # Recompute step 0's statistics independently (phi = 1: h = eps, a = e_cfg).
    t = torch.randint(20, 981, (3,), generator=torch.Generator().manual_seed(7))
    eps = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(7 + NOISE_SEED_OFFSET))
    z = 2 * render.rgb.permute(0, 3, 1, 2) - 1
    x_t = add_noise(prior.alphas_cumprod, z, eps, t)
    a = prior.predict_noise(x_t, t, vc, 7.5)
    w2 = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1) ** 2
    ah, hh = (w2 * a * eps).sum((2, 3)).mean(0), (w2 * eps * eps).sum((2, 3)).mean(0)
    torch.testing.assert_close(ssd.state_dict()["ema_ah"], ah)
    r1 = ssd(prior, render, cams, vc, 1)
    torch.testing.assert_close(r1.diagnostics["mu"], ah.sum() / hh.sum())
    ah_1 = ssd.state_dict()["ema_ah"]
    assert not torch.allclose(ah_1, ah) and not torch.allclose(ah_1, 0.1 * ah)  # a real EMA step
    per_channel = SSD(SSDSettings(guidance_scale=7.5, lam=0.0, mu_per_channel=True), seed=7)
    per_channel(prior, render, cams, vc, 0)
    torch.testing.assert_close(per_channel(prior, render, cams, vc, 1).diagnostics["mu"], ah / hh)
    ssd.reset()
    assert float(ssd(prior, render, cams, vc, 2).diagnostics["mu"]) == 1.0


def test_fixed_mu_and_phi_enter_as_written(setup):
    prior, cams, vc = setup
    render = fake_render(prior, 3, requires_grad=False)
    s = SSDSettings(guidance_scale=7.5, lam=2.0, c0=0.5, mu=0.7, mu_mode="fixed")
    counting = CountingPrior(prior)
    res = SSD(s, seed=9)(counting, render, cams, vc, 0)
    t = res.diagnostics["t"]
    eps = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(9 + NOISE_SEED_OFFSET))
    x_t = counting.calls[0].x
    sim = depth_similarity(prior, x_t, t, vc, render, cams)
    torch.testing.assert_close(res.diagnostics["phi"], 0.5 + 2.0 * (1 - sim))
    x = x_t.clone().requires_grad_(True)
    gphi, = torch.autograd.grad((0.5 + 2.0 * (1 - depth_similarity(prior, x, t, vc, render, cams))).sum(), x)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    h = eps * res.diagnostics["phi"].view(-1, 1, 1, 1) - (1 - ab).sqrt() * gphi
    torch.testing.assert_close(res.grad, (1 - ab) * (counting.calls[0].out - 0.7 * h), rtol=1e-5, atol=1e-6)


# ----- baselines -----------------------------------------------------------------------------------------
def test_masked_pearson_matches_numpy_and_is_scale_shift_but_not_sign_invariant():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    b = b + 0.5 * a
    mask = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    r = masked_pearson(a, b, mask)
    for i in range(2):
        ref = torch.corrcoef(torch.stack([a[i][mask[i]], b[i][mask[i]]]))[0, 1]
        torch.testing.assert_close(r[i], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_pearson(a, 3 * b + 7, mask), r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_pearson(a, -b, mask), -r, rtol=1e-5, atol=1e-6)
    assert masked_pearson(a, b, torch.zeros_like(mask)).abs().max() == 0  # nothing covered: no signal


def test_normals_of_a_plane_by_finite_differences():
    cams = make_cameras(1, 24).cameras
    K = cams.Ks
    v, u = torch.meshgrid(torch.arange(24.0) + 0.5, torch.arange(24.0) + 0.5, indexing="ij")
    rays = torch.stack([(u - K[0, 0, 2]) / K[0, 0, 0], (v - K[0, 1, 2]) / K[0, 1, 1], torch.ones_like(u)])
    n = torch.nn.functional.normalize(torch.tensor([0.3, -0.2, -1.0]), dim=0)  # faces the camera
    depth = (-2.5 / (n.view(3, 1, 1) * rays).sum(0))[None, None]  # the plane n . P = -2.5
    # Estimated at half the resolution the intrinsics refer to: K is rescaled inside.
    half = torch.nn.functional.interpolate(depth, size=(12, 12), mode="bilinear", align_corners=False)
    est = normals_from_depth(depth, K, (24, 24))
    torch.testing.assert_close(est[0], n.view(3, 1, 1).expand(3, 24, 24), rtol=0, atol=1e-4)
    assert (normals_from_depth(half, K, (24, 24))[0, :, 2:-2, 2:-2] * n.view(3, 1, 1)).sum(0).min() > 0.99


def test_render_maps_are_resized_to_the_estimate_and_fallbacks(setup):
    prior, cams16, vc = setup
    cams = make_cameras(3, 32)
    render = fake_render(prior, 3, size=32, requires_grad=False)  # render at 32 px, prior estimates at 16
    x_t = prior.encode(fake_render(prior, 3, requires_grad=False).rgb.permute(0, 3, 1, 2))
    t = torch.full((3,), 300)
    for sim in (depth_similarity, normal_similarity):
        assert torch.isfinite(sim(prior, x_t, t, vc, render, cams)).all()
    # z of mode 0 at small t: the prior's disparity is mode 0's, which the render's matches (resized).
    assert depth_similarity(prior, x_t, torch.full((3,), 20), vc, render, cams).min() > 0.97
    val, m = resize_masked(torch.full((1, 1, 32, 32), 2.0), torch.ones(1, 1, 32, 32, dtype=torch.bool), (16, 16))
    assert torch.allclose(val, torch.full_like(val, 2.0)) and bool(m.all())
    # A prior with depth only: disparity = 1 / depth.
    torch.testing.assert_close(prior_disparity(DepthOnlyPrior(prior), x_t, t, vc),
                               1 / prior.estimate_depth(x_t, t, vc))
    res = SSD(SSDSettings(guidance_scale=7.5), seed=0)(prior, fake_render(prior, 3, size=16), cams16, vc, 0)
    assert torch.isfinite(res.grad).all()


def test_prior_without_geometry_is_refused_clearly(setup):
    prior, cams, vc = setup

    class NoGeometry:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            if name in ("estimate_depth", "estimate_disparity"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    render = fake_render(prior, 3, requires_grad=False)
    with pytest.raises(PriorError, match="ssd.lam = 0"):
        SSD(SSDSettings(), seed=0)(NoGeometry(prior), render, cams, vc, 0)
    res = SSD(SSDSettings(lam=0.0), seed=0)(NoGeometry(prior), render, cams, vc, 0)
    assert torch.isfinite(res.grad).all()


def test_ssd_on_ism_refuses_offset_noise():
    from guidance.estimators import SettingsError

    with pytest.raises(SettingsError, match=r"ssd\.ism\.offset_noise"):
        SSDSettings(base="ism", ism=ISMSettings(offset_noise=0.1)).validate()
    SSDSettings(base="sds", ism=ISMSettings(offset_noise=0.1)).validate()  # unused there: allowed


def test_learned_mu_lowers_gradient_variance_on_the_procedural_prior():
    pytest.importorskip("guidance.priors.procedural", reason="the procedural prior is missing")
    pytest.importorskip("renderers.cpu", reason="the CPU renderer is missing")
    from guidance.priors import make_prior
    from renderers import make_renderer
    from renderers.camera import orbit

    renderer = make_renderer("cpu")
    prior = make_prior("procedural", s_d=1.0, renderer=renderer)
    az, el = torch.tensor([30.0, 150.0]), torch.tensor([20.0, 10.0])
    cams = CameraBatch(orbit(az, el, 3.2, 45.0, 32, 32), az, el, torch.full((2,), 3.2), ["front", "back"])
    bg = torch.ones(2, 3)
    vc = prior.view_cond(prior.embed("a red cube"), cams, bg)
    # A fixed scene: the reference object itself (the end of a successful run).
    render = renderer(prior.library.scene(prior.library.names.index("red_cube"), "cpu"), cams.cameras, bg)
    base = z_space_variance(SDS(SDSSettings(guidance_scale=7.5), seed=1), prior, render, cams, vc, n=128, seed=5)
    ssd = SSD(SSDSettings(guidance_scale=7.5, mu_mode="learned"), seed=2)
    for k in range(60):
        ssd(prior, render, cams, vc, k)
    var = z_space_variance(ssd, prior, render, cams, vc, n=128, seed=5)
    assert float(var.variance) < 0.9 * float(base.variance), (float(var.variance), float(base.variance))
