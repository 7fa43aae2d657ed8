"""GaussianScene: initializations, activations, learning-rate schedule, gsplat's DefaultStrategy on a
rendered scene (grow / split / prune / opacity reset, optimizer state resized), state round trip."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import renderers
from renderers.camera import orbit
from studio.export import load_checkpoint, save_checkpoint
from studio.initializers import knn_scale, knn_scale_reference
from studio.scene import DensifySettings, GaussianScene, OptimSettings, SceneError, lr_at

FROZEN = OptimSettings(means_lr=0.0, means_lr_final=0.0, scales_lr=0.0, scales_lr_final=0.0, quats_lr=0.0,
                       quats_lr_final=0.0, opacities_lr=0.0, opacities_lr_final=0.0, sh0_lr=0.0,
                       sh0_lr_final=0.0)


def renderer(kind: str = "cpu"):
    return renderers.make_renderer(kind)


def cams(n: int = 2, size: int = 24):
    return orbit(torch.arange(n) * (360.0 / n), 20.0, 3.0, 45.0, size, size)


def train_step(scene: GaussianScene, step: int, cameras, target: torch.Tensor) -> None:
    out = renderer()(scene.to_params(), cameras, torch.ones(3))
    scene.pre_backward(step, out.info)
    (out.rgb - target).square().mean().backward()
    scene.optimizer_step(step)
    scene.post_backward(step, out.info)
    scene.zero_grad()


# ----- initializations --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ball", "shell", "box"])
def test_each_init_gives_n_finite_gaussians_inside_its_shape(kind):
    n, r = 3000, 0.7
    scene = getattr(GaussianScene, kind)(n, r, seed=3, opacity=0.1)
    assert scene.num_gaussians == n
    p = scene.to_params()
    p.validate()
    norms = p.means.detach().norm(dim=-1)
    if kind == "ball":
        assert norms.max() <= r + 1e-6 and scene.extent == pytest.approx(r)
        # uniform in volume: P(|x| < r/2) = 1/8 (binomial sd 0.006 at n = 3000)
        assert (norms < r / 2).float().mean().item() == pytest.approx(0.125, abs=0.025)
    elif kind == "shell":
        assert norms.min() >= r * 0.975 - 1e-6 and norms.max() <= r * 1.025 + 1e-6
        assert scene.extent == pytest.approx(r)
    else:
        assert p.means.detach().abs().max() <= r + 1e-6
        assert scene.extent == pytest.approx(r * math.sqrt(3))
    assert torch.allclose(p.opacities, torch.full((n,), 0.1))
    s = p.scales.detach()
    assert torch.all(s == s[0, 0]) and 0.002 < s[0, 0] < 0.1 * r  # small and isotropic
    assert torch.equal(p.quats.detach(), torch.tensor([1.0, 0, 0, 0]).expand(n, 4))


def test_init_is_seeded():
    a, b, c = (GaussianScene.ball(100, 0.5, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.params["means"], b.params["means"])
    assert torch.equal(a.params["sh0"], b.params["sh0"])
    assert not torch.equal(a.params["means"], c.params["means"])


def test_point_cloud_init_scales_from_grid_spacing():
    h = 0.1
    g = torch.arange(5) * h
    xyz = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), dim=-1).reshape(-1, 3)  # every point has 3 neighbours at h
    rgb = torch.randint(0, 256, (xyz.shape[0], 3), dtype=torch.uint8)
    scene = GaussianScene.from_points(xyz, rgb, opacity=0.3)
    p = scene.to_params()
    assert torch.allclose(p.scales, torch.full_like(p.scales, h), rtol=1e-5)
    assert torch.equal(p.means.detach(), xyz)
    colour = 0.28209479177387814 * p.sh[:, 0] + 0.5
    assert torch.allclose(colour, rgb.float() / 255, atol=1e-6)
    assert torch.allclose(knn_scale(xyz), torch.full((xyz.shape[0],), h), rtol=1e-5)
    assert torch.allclose(knn_scale_reference(xyz, chunk_elems=7 * xyz.shape[0]), torch.full((xyz.shape[0],), h),
                          rtol=1e-5)
    with pytest.raises(ValueError, match="non-finite"):
        GaussianScene.from_points(torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0]]))


def test_from_settings_dispatches_and_rejects_unknown_kinds():
    init = SimpleNamespace(kind="shell", num=50, radius=0.4, opacity=0.2, sh_degree=2, path="")
    scene = GaussianScene.from_settings(init, seed=1)
    assert scene.num_gaussians == 50 and scene.sh_degree == 2
    assert scene.params["shN"].shape == (50, 8, 3) and torch.all(scene.params["shN"] == 0)
    with pytest.raises(SceneError, match="init.kind"):
        GaussianScene.from_settings(SimpleNamespace(kind="torus", num=5, radius=1, opacity=0.1, sh_degree=0, path=""))


# ----- activations, lrs, settings ----------------------------------------------------------------------

def test_to_params_activations_and_gradients():
    scene = GaussianScene.ball(20, 0.5, seed=0, sh_degree=1)
    with torch.no_grad():
        scene.params["shN"].normal_()
        scene.params["quats"].mul_(2.5)
    p = scene.to_params()
    raw = scene.params
    assert torch.equal(p.scales, torch.exp(raw["scales"]))
    assert torch.equal(p.opacities, torch.sigmoid(raw["opacities"]))
    assert torch.equal(p.sh, torch.cat([raw["sh0"], raw["shN"]], dim=1)) and p.sh.shape == (20, 4, 3)
    assert torch.equal(p.quats, raw["quats"])  # unnormalized, as stored: the renderers normalize
    (p.scales.sum() + p.opacities.sum()).backward()
    assert torch.allclose(raw["scales"].grad, torch.exp(raw["scales"]).detach())
    o = torch.sigmoid(raw["opacities"]).detach()
    assert torch.allclose(raw["opacities"].grad, o * (1 - o))


def test_lr_schedule_decays_log_linearly_and_scales_positions_by_extent():
    assert lr_at(0, 1e-2, 1e-4, 100) == pytest.approx(1e-2)
    assert lr_at(50, 1e-2, 1e-4, 100) == pytest.approx(1e-3)  # geometric midpoint
    assert lr_at(100, 1e-2, 1e-4, 100) == pytest.approx(1e-4)
    assert lr_at(1000, 1e-2, 1e-4, 100) == pytest.approx(1e-4)  # held after max_steps
    optim = OptimSettings(means_lr=1e-3, means_lr_final=1e-5, max_steps=200, sh0_lr=4e-3, sh0_lr_final=4e-3)
    scene = GaussianScene.ball(10, 2.0, seed=0, optim=optim)
    for step, want in [(0, 2e-3), (100, 2e-4), (200, 2e-5)]:
        scene.optimizer_step(step)
        assert scene.optimizers["means"].param_groups[0]["lr"] == pytest.approx(want)
    assert scene.optimizers["sh0"].param_groups[0]["lr"] == pytest.approx(4e-3)
    assert scene.optimizers["shN"].param_groups[0]["lr"] == pytest.approx(4e-3 * optim.shN_lr_ratio)
    assert scene.lrs(50)["scales"] == pytest.approx(lr_at(50, optim.scales_lr, optim.scales_lr_final, 200))


@pytest.mark.parametrize("bad, field", [
    (dict(means_lr=-1.0), "optim.means_lr"), (dict(max_steps=0), "optim.max_steps"),
    (dict(betas=(0.9, 1.5)), "optim.betas"),
])
def test_optim_settings_name_the_bad_field(bad, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        GaussianScene.ball(5, 0.5, optim=OptimSettings(**bad))


def test_densify_settings_name_the_bad_field_and_mcmc_is_refused_on_cpu():
    with pytest.raises(ValueError, match=r"densify\.refine_every"):
        GaussianScene.ball(5, 0.5, densify=DensifySettings(refine_every=0))
    with pytest.raises(ValueError, match="mcmc.*CUDA"):
        GaussianScene.ball(5, 0.5, densify=DensifySettings(strategy="mcmc"))
    scene = GaussianScene.ball(5, 0.5, densify=DensifySettings(strategy="mcmc", enabled=False))
    with pytest.raises(ValueError, match="CUDA"):
        scene.set_densify_settings(DensifySettings(strategy="mcmc"))
    assert scene.densify_settings.enabled is False  # refused: unchanged


def test_set_sh_degree_pads_and_truncates_parameters_and_adam_moments():
    scene = GaussianScene.ball(30, 0.5, seed=0, sh_degree=1)
    train_step(scene, 0, cams(), torch.zeros(2, 24, 24, 3))
    m_before = scene.optimizers["shN"].state[scene.params["shN"]]["exp_avg"].clone()
    scene.set_sh_degree(3)
    shn = scene.params["shN"]
    st = scene.optimizers["shN"].state[shn]
    assert shn.shape == (30, 15, 3) and st["exp_avg"].shape == (30, 15, 3)
    assert torch.equal(st["exp_avg"][:, :3], m_before) and torch.all(st["exp_avg"][:, 3:] == 0)
    assert scene.optimizers["shN"].param_groups[0]["params"][0] is shn
    scene.set_sh_degree(0)
    assert scene.params["shN"].shape == (30, 0, 3) and scene.to_params().sh.shape == (30, 1, 3)
    train_step(scene, 1, cams(), torch.zeros(2, 24, 24, 3))  # still trains


# ----- densification through gsplat's DefaultStrategy --------------------------------------------------

def _mixed_scene(densify: DensifySettings) -> tuple[GaussianScene, torch.Tensor, torch.Tensor, torch.Tensor]:
    """20 small + 20 large opaque Gaussians in view, 10 transparent ones behind the cameras' backs."""
    gen = torch.Generator().manual_seed(0)
    means = torch.cat([0.4 * (torch.rand(40, 3, generator=gen) - 0.5), torch.tensor([[0.0, 0.0, 30.0]]).expand(10, 3)])
    small, large = 0.004, 0.05  # extent 1 and grow_scale3d 0.01: small ones are cloned, large ones split
    scales = torch.cat([torch.full((20, 3), small), torch.full((20, 3), large), torch.full((10, 3), small)])
    opac = torch.cat([torch.full((40,), 0.6), torch.full((10,), 0.001)])
    raw = {"means": means, "scales": scales.log(), "quats": torch.tensor([1.0, 0, 0, 0]).repeat(50, 1),
           "opacities": torch.logit(opac), "sh0": torch.randn(50, 1, 3, generator=gen), "shN": torch.zeros(50, 0, 3)}
    scene = GaussianScene(raw, extent=1.0, optim=FROZEN, densify=densify)
    return scene, torch.arange(20), torch.arange(20, 40), torch.arange(40, 50)


@pytest.mark.parametrize("kind", ["cpu", "reference"])
def test_default_strategy_clones_splits_and_prunes_with_optimizer_state_resized(kind):
    densify = DensifySettings(grow_grad2d=1e-12, grow_scale3d=0.01, prune_opa=0.005, refine_start=0,
                              refine_every=1, reset_every=0)
    scene, small, large, faint = _mixed_scene(densify)
    c = cams(2, 24)
    out = renderer(kind)(scene.to_params(), c, torch.ones(3))
    scene.pre_backward(1, out.info)
    (out.rgb * torch.linspace(0, 1, 24 * 24 * 3).reshape(24, 24, 3)).sum().backward()
    g = out.info["means2d"].grad.norm(dim=-1).amax(dim=0)  # [N] largest over cameras
    assert torch.all(g[:40] > 0) and torch.all(g[40:] == 0)  # every opaque one is seen and pushed
    large_scale_before = scene.to_params().scales[large].detach()
    scene.optimizer_step(1)
    scene.post_backward(1, out.info)
    # 20 clones + 20 splits (each 1 -> 2) - 10 pruned
    assert scene.num_gaussians == 50 + 20 + 20 - 10
    p = scene.to_params()
    assert torch.all(p.opacities > 0.5)  # the transparent ones are gone
    s = p.scales.detach().amax(dim=-1)
    assert torch.isclose(s, torch.tensor(0.004)).sum() == 40  # originals + clones of the small ones
    assert torch.isclose(s, torch.tensor(0.05 / 1.6)).sum() == 40  # split children, scale / 1.6
    assert not torch.isclose(s, torch.tensor(0.05)).any()  # no large parent survives
    assert torch.allclose(large_scale_before, torch.full_like(large_scale_before, 0.05))
    for name, param in scene.params.items():
        opt = scene.optimizers[name]
        assert opt.param_groups[0]["params"][0] is param
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[param][key].shape == param.shape, (name, key)
    # new Gaussians start with zero moments; the 20 surviving originals keep theirs
    zero_rows = (scene.optimizers["means"].state[scene.params["means"]]["exp_avg"] == 0).all(dim=-1)
    assert zero_rows.sum() == 20 + 40
    st = scene.densifier.state
    assert st["grad2d"].shape == (80,) and torch.all(st["grad2d"] == 0)  # reset after refinement


def test_default_strategy_grows_a_scene_fitting_a_target_with_default_thresholds():
    target_scene = GaussianScene.box(80, 0.4, seed=5, opacity=0.6)
    c = cams(4, 24)
    with torch.no_grad():
        target = renderer()(target_scene.to_params(), c, torch.ones(3)).rgb
    scene = GaussianScene.ball(80, 0.6, seed=0, densify=DensifySettings(refine_start=0, refine_every=4))
    torch.manual_seed(0)
    counts = []
    for step in range(1, 9):
        train_step(scene, step, c, target)
        counts.append(scene.num_gaussians)
    assert counts[2] == 80 and counts[3] > 100 and counts[7] > counts[3]  # grows at steps 4 and 8 only
    scene.to_params().validate()


def test_opacity_reset_happens_on_schedule():
    # gsplat 1.5.3's own reset never fires (operator precedence); the Densifier performs it.
    densify = DensifySettings(refine_start=1000, reset_every=3, refine_stop=100, prune_opa=0.01)
    scene = GaussianScene.ball(30, 0.5, seed=0, opacity=0.5, densify=densify)
    target = torch.zeros(2, 24, 24, 3)
    for step in (1, 2):
        train_step(scene, step, cams(), target)
    assert torch.sigmoid(scene.params["opacities"]).min() > 0.3
    train_step(scene, 3, cams(), target)
    assert torch.allclose(torch.sigmoid(scene.params["opacities"]), torch.full((30,), 0.02), atol=1e-6)
    st = scene.optimizers["opacities"].state[scene.params["opacities"]]
    assert torch.all(st["exp_avg"] == 0) and torch.all(st["exp_avg_sq"] == 0)


def test_post_backward_without_means2d_gradient_says_what_to_do():
    scene = GaussianScene.ball(10, 0.5, seed=0, densify=DensifySettings(refine_start=0))
    out = renderer()(scene.to_params(), cams(), torch.ones(3))
    scene.pre_backward(1, out.info)  # ... and no loss.backward()
    with pytest.raises(RuntimeError, match="pre_backward"):
        scene.post_backward(1, out.info)


# ----- state -----------------------------------------------------------------------------------------

def _state_equal(a: dict, b: dict) -> None:
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
        sa, sb = a["optimizers"][k]["state"][0], b["optimizers"][k]["state"][0]
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), (k, key)
    for key, v in a["densifier"]["state"].items():
        assert torch.equal(v, b["densifier"]["state"][key]) if torch.is_tensor(v) else v == b["densifier"]["state"][key]


def test_state_dict_round_trip_through_a_checkpoint_resumes_the_same_run(tmp_path):
    densify = DensifySettings(refine_start=0, refine_every=3, grow_grad2d=1e-4)
    c = cams(2, 20)
    target = torch.zeros(2, 20, 20, 3)
    scene = GaussianScene.ball(40, 0.5, seed=0, densify=densify)
    for step in range(1, 5):
        train_step(scene, step, c, target)
    save_checkpoint(tmp_path / "ck.pt", {"scene": scene.state_dict(), "rng": torch.get_rng_state()})
    for step in range(5, 8):  # crosses a densification at step 6
        train_step(scene, step, c, target)
    expected = scene.state_dict()

    other = GaussianScene.ball(7, 0.9, seed=9, densify=densify)
    payload = load_checkpoint(tmp_path / "ck.pt")
    other.load_state_dict(payload["scene"])
    torch.set_rng_state(payload["rng"])
    for step in range(5, 8):
        train_step(other, step, c, target)
    assert other.num_gaussians == scene.num_gaussians > 40
    _state_equal(expected, other.state_dict())


def test_reset_and_finiteness():
    scene = GaussianScene.ball(25, 0.5, seed=4)
    start = scene.state_dict()
    train_step(scene, 0, cams(), torch.zeros(2, 24, 24, 3))
    assert not torch.equal(scene.params["means"], start["params"]["means"])
    assert scene.is_finite()
    with torch.no_grad():
        scene.params["means"][3, 1] = float("nan")
    assert not scene.is_finite()
    scene.reset()
    assert torch.equal(scene.params["means"], start["params"]["means"])
    assert scene.optimizers["means"].state == {}
    scene.reset(SimpleNamespace(kind="box", num=12, radius=0.3, opacity=0.2, sh_degree=0, path=""), seed=1)
    assert scene.num_gaussians == 12 and scene.extent == pytest.approx(0.3 * math.sqrt(3))
