"""Variance reduction that leaves every estimator unbiased: stratified timesteps across the batch and
antithetic noise pairs. Each keeps the marginal law of every draw (checked exactly or against closed
forms), so the expected gradient is unchanged; and each lowers the spread it is meant to lower."""

from __future__ import annotations

import pytest
import torch

from analytic_prior import AnalyticPrior, fake_render, make_cameras
from guidance.estimators.common import RandomStreams, timestep_weight
from guidance.estimators.ism import ISM, ISMSettings
from guidance.estimators.sds import SDS, SDSSettings, sds_timesteps
from guidance.estimators.ssd import SSDSettings


def test_stratified_timesteps_cover_each_stratum_once_and_stay_uniform():
    rng = RandomStreams(0)
    lo, hi, B, draws = 20, 979, 4, 20_000  # 960 timesteps, 240 per stratum
    t = torch.stack([rng.randint_stratified(lo, hi, B) for _ in range(draws)])  # [draws, B]
    assert int(t.min()) >= lo and int(t.max()) <= hi
    strata = torch.sort((t - lo) // 240, dim=1).values
    assert torch.equal(strata, torch.arange(B).expand(draws, B)), "one t from each stratum, every batch"
    # each camera's t is uniform on {lo..hi}: its stratum is uniform (random order) and, within it, so is t
    for b in range(B):
        counts = torch.bincount((t[:, b] - lo) // 240, minlength=B).float()
        assert (counts / draws - 1 / B).abs().max() < 0.015, counts
    within = torch.bincount((t - lo).flatten() % 240 // 24, minlength=10).float()  # ten sub-bins
    assert (within / within.sum() - 0.1).abs().max() < 0.01
    # uniform on an uneven split too: 961 timesteps over 4 strata, every value reachable
    odd = torch.cat([rng.randint_stratified(0, 960, 4) for _ in range(5000)])
    assert int(odd.min()) == 0 and int(odd.max()) == 960


def test_stratified_batch_means_are_unbiased_with_less_spread():
    """The batch mean of w(t) (SDS's weight) against its exact mean over U{lo..hi}."""
    ab = AnalyticPrior.default(8).alphas_cumprod
    s_iid, s_strat = SDSSettings(), SDSSettings(t_sampling="stratified")
    lo, hi = 20, 980
    exact = float(timestep_weight("sds", ab[lo:hi + 1]).mean())
    means = {}
    for name, s in (("iid", s_iid), ("stratified", s_strat)):
        rng = RandomStreams(1)
        means[name] = torch.stack([timestep_weight("sds", ab[sds_timesteps(s, 0, 4, 1000, rng)]).mean()
                                   for _ in range(20_000)]).double()
    for name, m in means.items():
        se = float(m.std()) / len(m) ** 0.5
        assert abs(float(m.mean()) - exact) < 4 * se, (name, float(m.mean()), exact)
    assert float(means["stratified"].var()) < 0.5 * float(means["iid"].var())


def test_antithetic_noise_pairs_and_keeps_each_draw_standard_normal():
    rng = RandomStreams(2)
    eps = torch.stack([rng.randn_antithetic((5, 3), torch.device("cpu")) for _ in range(4000)])  # [n, 5, 3]
    torch.testing.assert_close(eps[:, 2:4], -eps[:, 0:2])  # b + B/2 = -b; the odd last item is its own
    assert float((eps[:, 4] - eps[:, 0]).abs().min()) > 0
    for b in range(5):  # every item N(0, 1): mean 0, variance 1, and symmetric
        x = eps[:, b].flatten()
        assert abs(float(x.mean())) < 0.05 and abs(float(x.var()) - 1) < 0.06
    plain = RandomStreams(2).randn((4, 3), torch.device("cpu"))
    assert not torch.equal(plain, RandomStreams(2).randn_antithetic((4, 3), torch.device("cpu")))


@pytest.mark.parametrize("make, most", [
    (lambda anti: SDS(SDSSettings(guidance_scale=7.5, antithetic=anti, schedule="sqrt", schedule_steps=200), seed=0),
     0.5),
    (lambda anti: ISM(ISMSettings(antithetic=anti, warmup_steps=0, t_range=(0.5, 0.501)), seed=0), 0.9),
])
def test_antithetic_estimators_are_unbiased_and_steadier_on_one_view(make, most):
    """Four copies of one render: with antithetic pairs the batch-mean gradient keeps its expectation
    (against the iid one, within standard errors) and its variance drops (the part linear in eps cancels).
    One t (SDS's sqrt schedule; ISM's t range one step wide) and a one-mode prompt: what antithetic pairs
    remove is the noise's linear share. They share their t, so with random timesteps the batch has half
    as many independent t, and where t's share dominates (or the posterior flips between modes) the
    variance grows instead: that is why it is a setting, off by default."""
    prior = AnalyticPrior.default(8)
    cams = make_cameras(4, 8)
    one = fake_render(prior, 1, seed=3)
    render = type(one)(rgb=one.rgb.detach().expand(4, -1, -1, -1).clone().requires_grad_(True),
                       alpha=one.alpha.expand(4, -1, -1, -1), depth=one.depth.expand(4, -1, -1, -1),
                       normal=one.normal.expand(4, -1, -1, -1))
    vc = prior.view_cond(prior.embed("a blob"), cams)  # one mode: the score is linear in x_t
    means = {}
    for anti in (False, True):
        est = make(anti)
        means[anti] = torch.stack([est(prior, render, cams, vc, 100).grad.mean(0).double() for _ in range(600)])
    diff = means[True].mean(0) - means[False].mean(0)
    se = ((means[True].var(0) + means[False].var(0)) / 600).sqrt()
    assert float((diff.abs() / (se + 1e-12)).mean()) < 1.5, "antithetic changed the expected gradient"
    ratio = float(means[True].var(0).mean()) / float(means[False].var(0).mean())
    assert ratio < most, f"variance ratio antithetic / iid {ratio:.3f}"


def test_settings_are_checked_and_reach_ssds_score_term():
    with pytest.raises(ValueError, match="sds.t_sampling"):
        SDSSettings(t_sampling="sobol").validate()  # type: ignore[arg-type]
    part = SSDSettings(t_sampling="stratified", antithetic=True).sds_part()
    assert part.t_sampling == "stratified" and part.antithetic
