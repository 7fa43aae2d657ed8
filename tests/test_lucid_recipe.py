"""LucidDreamer's recipe beyond ISM, piece by piece: the TV and mean-scale regularizers (closed forms and
finite differences), the camera zoom schedule, and the lucid-sd preset that switches them all on."""

from __future__ import annotations

import math

import pytest
import torch

from renderers.camera import CameraRanges
from renderers.types import RenderOutput
from studio.config import ConfigError, RegSettings, ZoomSettings, default_config, load_preset, with_values
from studio.trainer import Trainer, regularizers, total_variation

SMALL = {"render.resolution": 16, "render.batch": 2, "init.num": 150, "run.psnr_every": 0,
         "run.view_psnr_every": 0, "densify.enabled": False}


def test_total_variation_of_ramps_and_checkers_is_known():
    h = torch.arange(8.0)[None, :, None, None].expand(2, 8, 6, 3)  # rises by 1 per row: dh = 1, dw = 0
    assert float(total_variation(0.5 * h)) == pytest.approx(2 * 0.25)
    checker = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float()[None, :, :, None]
    assert float(total_variation(checker)) == pytest.approx(2 * (1 + 1))
    assert float(total_variation(torch.full((1, 5, 5, 1), 3.0))) == 0


def test_regularizers_weigh_each_term_and_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 6, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    depth = torch.rand(2, 6, 6, 1, generator=g, dtype=torch.float64)
    log_scales = torch.randn(10, 3, generator=g, dtype=torch.float64, requires_grad=True)

    class Params:
        scales = log_scales.exp()

    out = RenderOutput(rgb=rgb, alpha=torch.ones_like(depth), depth=depth, normal=torch.zeros_like(rgb))
    assert regularizers(RegSettings(), out, Params) is None  # all off: nothing added to the loss
    reg = RegSettings(tv_rgb=0.5, tv_depth=2.0, mean_scale=3.0)
    total = regularizers(reg, out, Params)
    expected = 0.5 * total_variation(rgb) + 2.0 * total_variation(depth) + 3.0 * log_scales.exp().mean()
    torch.testing.assert_close(total, expected)
    total.backward()
    # d/d log s_i of 3 mean(exp(log s)) = 3 s_i / 30, and a central difference of the TV term
    torch.testing.assert_close(log_scales.grad, 3.0 * log_scales.exp().detach() / 30)
    e = 1e-6
    bump = torch.zeros_like(rgb)
    bump[1, 2, 3, 0] = e
    fd = (0.5 * total_variation(rgb.detach() + bump) - 0.5 * total_variation(rgb.detach() - bump)) / (2 * e)
    assert float(rgb.grad[1, 2, 3, 0]) == pytest.approx(float(fd), rel=1e-6)


def test_zoom_follows_luciddreamers_schedule():
    cam = CameraRanges(radius=(5.2, 5.5), fovy_deg=(18.3, 34.4))
    z = ZoomSettings(every=500, radius_factor=0.95, radius_min=(3.5, 5.0), fovy_factor=(0.75, 1.1),
                     fovy_limit=(9.2, 34.4))
    assert z.apply(cam, 0) == cam and z.apply(cam, 499) == cam
    one = z.apply(cam, 500)
    assert one.radius == pytest.approx((5.2 * 0.95, 5.5 * 0.95)) and one.fovy_deg == pytest.approx((18.3 * 0.75, 34.4))
    late = z.apply(cam, 10_000)  # 20 zooms: both ends at their bounds
    assert late.radius == pytest.approx((3.5, 5.0)) and late.fovy_deg == pytest.approx((9.2, 34.4))
    assert ZoomSettings().apply(cam, 10_000) == cam  # every = 0: off


@pytest.mark.parametrize("path, value, needle", [
    ("reg.tv_rgb", -1.0, "reg.tv_rgb: must lie in [0.0, 10000.0]"),
    ("reg.mean_scale", math.inf, "reg.mean_scale"),
    ("zoom.every", -5, "zoom.every"),
    ("zoom.radius_factor", 3.0, "zoom.radius_factor: must lie in [0.5, 1.5]"),
    ("zoom.fovy_limit", (40.0, 20.0), "zoom.fovy_limit: need min <= max"),
    ("prior.perp_neg_w", 1.0, "prior.perp_neg_w: must lie in [-10.0, 0.0]"),
    ("prior.lora_scale", 9.0, "prior.lora_scale"),
])
def test_bad_values_name_the_field_and_range(path, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        with_values(default_config(), {path: value})


def test_the_lucid_sd_preset_switches_every_piece_on():
    c = load_preset("lucid-sd")
    assert c.run.method == "ism" and c.prompt.view_prompt == "interpolate" and c.prior.perp_neg
    assert c.render.random_background_prob == 0.5 and (c.render.resolution, c.render.batch) == (512, 4)
    assert (c.reg.tv_rgb, c.reg.tv_depth, c.reg.mean_scale) == (1.0, 1.0, 1.0)
    assert c.zoom.every == 500 and c.ism.warmup_steps == 1500 and c.run.steps == 5000
    assert c.prior.model == "procedural"  # the preset never picks a model: --model does


def test_a_step_with_the_recipe_trains_zooms_and_reports_the_regularizer():
    cfg = with_values(default_config("ism"), {**SMALL, "reg.tv_rgb": 1.0, "reg.tv_depth": 1.0,
                                              "reg.mean_scale": 1.0, "zoom.every": 2, "zoom.radius_factor": 0.5,
                                              "zoom.radius_min": (1.0, 1.0)})
    tr = Trainer(cfg)
    diag = tr.step()
    assert "reg" in diag and float(diag["reg"]) > 0
    assert tr.sampler.ranges.radius == cfg.camera.radius
    tr.step()
    tr.step()  # step index 2: one zoom
    assert tr.sampler.ranges.radius == pytest.approx(tuple(0.5 * r for r in cfg.camera.radius))
    plain = Trainer(with_values(default_config("ism"), SMALL))
    assert "reg" not in plain.step()


def test_the_whole_recipe_trains_on_a_tiny_stable_diffusion_with_a_lora(tmp_path, monkeypatch):
    """lucid-sd's every piece at once, through the real loading code: a tiny random SD and LoRA on disk,
    a negative prompt (CFG only; ISM inverts with the empty prompt), Perp-Neg, TV, scale penalty, zoom."""
    import huggingface_hub.constants
    from tiny_models import save_tiny_lora, save_tiny_sd

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    sd = save_tiny_sd(tmp_path / "sd")
    lora = save_tiny_lora(tmp_path / "lora", sd)
    cfg = with_values(load_preset("lucid-sd"), {
        **SMALL, "prior.model": str(sd), "prior.image_size": 64, "prior.lora": str(lora),
        "prompt.negative": "blurry", "zoom.every": 1, "ism.warmup_steps": 2})
    tr = Trainer(cfg)
    assert tr.prior.settings.perp_neg and tr.prior.settings.view_prompt == "interpolate"
    for _ in range(3):
        diag = tr.step()
        assert "skipped" not in diag and float(diag["reg"]) > 0 and math.isfinite(float(diag["loss"]))
    assert tr.scene.is_finite() and tr.sampler.ranges.radius[0] < cfg.camera.radius[0]
