"""ISM against diffusers' DDIMInverseScheduler, METHODS.md's call count and its edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler

from analytic_prior import AnalyticPrior, CountingPrior, fake_render, make_cameras
from guidance.estimators.common import NOISE_SEED_OFFSET
from guidance.estimators.ism import ISM, ISMSettings, expected_prior_calls, inversion_path, ism_schedule


def fixed_t(t: int, dT: int, **kw) -> ISMSettings:
    """Settings that force t (a one-point range after warm-up) and dT."""
    return ISMSettings(t_range=(t / 1000, t / 1000), t_max_start=t / 1000, delta_t=dT, warmup_steps=0, **kw)


def run(settings: ISMSettings, B: int = 2, seed: int = 3, size: int = 16):
    prior = CountingPrior(AnalyticPrior.default(size=size))
    cams = make_cameras(B, size)
    vc = prior.view_cond(prior.embed("a thing"), cams)
    render = fake_render(prior.inner, B)
    res = ISM(settings, seed=seed)(prior, render, cams, vc, step=0)
    return prior, render, res


def inverse_scheduler(stride: int, prior: AnalyticPrior) -> DDIMInverseScheduler:
    """diffusers' DDIM inversion with SD's betas, stepping `stride` timesteps per call."""
    sched = DDIMInverseScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", set_alpha_to_one=False, steps_offset=0,
                                 clip_sample=False, timestep_spacing="leading", prediction_type="epsilon")
    assert 1000 % stride == 0
    sched.set_timesteps(1000 // stride)
    # Same schedule up to float32 rounding (diffusers squares float32 roots, we float64 ones): use ours.
    torch.testing.assert_close(sched.alphas_cumprod, prior.alphas_cumprod, rtol=1e-5, atol=1e-6)
    sched.alphas_cumprod = prior.alphas_cumprod.clone()
    return sched


@pytest.mark.parametrize("t,dT,delta_s,strides", [
    (800, 200, 200, [200, 200, 200]),  # 0 -> 200 -> 400 -> 600, then 600 -> 800
    (750, 250, 200, [200, 200, 100]),  # 0 -> 200 -> 400 -> 500 (last step shortened), then 500 -> 750
])
def test_inversion_matches_diffusers_ddim_inverse(t, dT, delta_s, strides):
    prior, render, res = run(fixed_t(t, dT, delta_s=delta_s))
    s = t - dT
    calls = prior.calls
    assert [c.branch for c in calls] == ["empty"] * (len(strides) + 1) + ["cfg"]
    # The first input is z noised to timestep 0 with the documented noise stream.
    eps = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3 + NOISE_SEED_OFFSET))
    z = 2 * render.rgb.detach().permute(0, 3, 1, 2) - 1
    ab0 = prior.alphas_cumprod[0]
    torch.testing.assert_close(calls[0].x, ab0.sqrt() * z + (1 - ab0).sqrt() * eps)
    # Each inversion step, fed the same predictions, lands where diffusers' DDIMInverseScheduler does.
    x, cur = calls[0].x, 0
    for k, stride in enumerate(strides):
        assert int(calls[k].t[0]) == cur
        x = inverse_scheduler(stride, prior.inner).step(calls[k].out, cur + stride, x).prev_sample
        cur += stride
        torch.testing.assert_close(calls[k + 1].x, x, rtol=1e-5, atol=1e-5)
    assert cur == s and int(calls[-2].t[0]) == s
    # One more step s -> t with e_s gives the x_t of the guided call.
    e_s = calls[-2].out
    x_t = inverse_scheduler(t - s, prior.inner).step(e_s, t, x).prev_sample
    torch.testing.assert_close(calls[-1].x, x_t, rtol=1e-5, atol=1e-5)
    assert calls[-1].t.tolist() == [t, t]
    # g = lam sqrt((1 - ab_t) / ab_t) (e_cfg - e_s)
    ab_t = prior.alphas_cumprod[t]
    torch.testing.assert_close(res.grad, 0.1 * ((1 - ab_t) / ab_t).sqrt() * (calls[-1].out - e_s))
    assert res.diagnostics["s"].tolist() == [s, s] and int(res.diagnostics["delta_T"]) == dT


@pytest.mark.parametrize("t,dT,delta_s,inv_steps,n_inv", [
    (800, 200, 1000, 5, 1),  # dS >= s: a single inversion step 0 -> 600
    (800, 200, 600, 5, 1),  # dS == s
    (20, 50, 200, 5, 0),  # t < dT: s = 0, no inversion step (not a zero-length one)
    (20, 20, 200, 5, 0),  # t = dT: s = 0
    (980, 50, 200, 5, 5),  # t at the top of the warm-up range: s = 930, ceil(930 / 200) = 5
    (999, 50, 200, 5, 5),  # the last timestep
    (500, 50, 200, 5, 3),  # t at the top of the range after warm-up: s = 450
    (800, 50, 100, 2, 2),  # s = 750 > dS * inv_steps: start at 550, two steps (LucidDreamer's starting_ind)
])
def test_prior_calls_and_edge_cases(t, dT, delta_s, inv_steps, n_inv):
    prior, _, res = run(fixed_t(t, dT, delta_s=delta_s, inv_steps=inv_steps))
    s = max(t - dT, 0)
    branches = [c.branch for c in prior.calls]
    assert branches == ["empty"] * (n_inv + 1) + ["cfg"]
    assert int(res.diagnostics["prior_calls"]) == len(prior.calls) == expected_prior_calls(s, delta_s, inv_steps)
    if math.ceil(s / delta_s) <= inv_steps:
        assert len(prior.calls) == math.ceil(s / delta_s) + 1 + 1  # METHODS.md's count
    visited = [int(c.t[0]) for c in prior.calls[:-1]]
    assert visited == inversion_path(max(s - delta_s * inv_steps, 0), s, delta_s)
    assert torch.isfinite(res.grad).all()
    if s == 0:  # x_s is z noised to the first timestep; x_t one DDIM step from there
        ab0 = prior.alphas_cumprod[0]
        assert int(prior.calls[0].t[0]) == 0
        assert prior.calls[0].x.sub(ab0.sqrt() * res.z.detach()).div((1 - ab0).sqrt()).std() == pytest.approx(1, abs=0.1)


def test_t_at_t_min_and_one_t_per_batch():
    prior, _, res = run(ISMSettings(t_range=(0.02, 0.02), t_max_start=0.02, warmup_steps=0), B=4)
    assert res.diagnostics["t"].tolist() == [20] * 4 and res.diagnostics["s"].tolist() == [0] * 4
    _, _, res = run(ISMSettings(), B=4, seed=8)
    assert len(set(res.diagnostics["t"].tolist())) == 1


def test_warmup_anneals_delta_t_and_t_range():
    s = ISMSettings()  # delta_t 50 from 100, t range [0.02, 0.5] with t_max from 0.98, over 1500 steps
    assert ism_schedule(s, 0, 1000) == (100, 20, 980)
    assert ism_schedule(s, 750, 1000) == (75, 20, 740)
    assert ism_schedule(s, 1500, 1000) == (50, 20, 500)
    assert ism_schedule(s, 10**6, 1000) == (50, 20, 500)
    assert ism_schedule(ISMSettings(warmup_steps=0), 0, 1000) == (50, 20, 500)


def test_inversion_path():
    assert inversion_path(0, 600, 200) == [0, 200, 400, 600]
    assert inversion_path(0, 500, 200) == [0, 200, 400, 500]
    assert inversion_path(0, 0, 200) == [0]
    assert inversion_path(0, 450, 1000) == [0, 450]


def test_offset_noise_adds_a_per_channel_constant():
    _, _, plain = run(fixed_t(20, 50))
    prior, _, off = run(fixed_t(20, 50, offset_noise=0.1))
    # s = 0: the first input is sqrt(ab_0) z + sqrt(1 - ab_0) eps; eps differs by a constant per (item, channel).
    ab0 = prior.alphas_cumprod[0]
    diff = (prior.calls[0].x - (ab0.sqrt() * off.z.detach() + (1 - ab0).sqrt() * torch.randn(
        (2, 3, 16, 16), generator=torch.Generator().manual_seed(3 + NOISE_SEED_OFFSET)))) / (1 - ab0).sqrt()
    assert diff.std(dim=(2, 3)).max() < 1e-3 and 0.005 < diff.mean(dim=(2, 3)).abs().max() < 0.5
    assert not torch.equal(plain.grad, off.grad)
