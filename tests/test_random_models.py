"""benchmarks/random_models.py: the JSON configs reproduce the published architectures (parameter counts,
counted on the meta device), the tiny builders run, RandomText is a deterministic function of the text,
and a saved random checkpoint loads through the studio's own Stable Diffusion loader."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported by anything below

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as the benchmark scripts see it
import random_models as R  # noqa: E402

from guidance.priors.stable_diffusion import StableDiffusionPrior  # noqa: E402
from renderers.camera import CameraBatch, orbit, view_bucket  # noqa: E402

# Counts of the models built from benchmarks/configs with diffusers 0.42 / transformers 5.23, and the
# published figures they reproduce (relative tolerance): SD 2.1-base UNet 865.9M, its VAE 83.65M, OpenCLIP
# ViT-H's text tower (23 of 24 layers, as SD 2 uses it) 340.4M, DPT-Hybrid 123M. The last is the DPT
# paper's figure, rounded to 3 digits, for a timm model that also carries an unused 1000-class head
# (0.77M) which DPTForDepthEstimation lacks, hence 1% there.
EXACT = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840, "dpt": 122_377_985}
PUBLISHED = {"unet": (865.9e6, 0.005), "vae": (83.65e6, 0.005), "text_encoder": (340.4e6, 0.005),
             "dpt": (123e6, 0.01)}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_full_configs_give_the_published_parameter_counts():
    counts = R.count_parameters("full")
    assert counts == EXACT
    for name, (published, tol) in PUBLISHED.items():
        assert abs(counts[name] / published - 1) < tol, (name, counts[name], published)


# Published settings that the parameter counts cannot see (how channels split into heads, projections
# that are 1x1 convolutions or linear layers alike, input conventions).
UNSEEN_BY_COUNTS = {
    "sd21_base_unet": {"attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "sample_size": 64,
                       "upcast_attention": False, "flip_sin_to_cos": True, "freq_shift": 0},
    "sd21_base_vae": {"scaling_factor": 0.18215, "sample_size": 512},
    "sd21_base_text_encoder": {"num_attention_heads": 16, "hidden_act": "gelu", "max_position_embeddings": 77},
    "dpt_hybrid_midas": {"is_hybrid": True, "image_size": 384, "patch_size": 16, "readout_type": "project",
                         "neck_ignore_stages": [0, 1], "backbone_out_indices": [2, 5, 8, 11],
                         "reassemble_factors": [1, 1, 1, 0.5]},
    "dpt_hybrid_midas_preprocessor": {"size": {"height": 384, "width": 384}, "ensure_multiple_of": 32,
                                      "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
}


@pytest.mark.parametrize("name", sorted(UNSEEN_BY_COUNTS))
def test_full_configs_hold_the_published_settings_that_counts_cannot_see(name):
    cfg = R.read_config(name)
    assert {k: cfg.get(k) for k in UNSEEN_BY_COUNTS[name]} == UNSEEN_BY_COUNTS[name]


def test_full_configs_describe_the_published_layouts():
    unet, vae = R.build_unet("full", "meta"), R.build_vae("full", "meta")
    assert unet.config.cross_attention_dim == R.TEXT_WIDTH["full"] and unet.config.attention_head_dim == [5, 10, 20, 20]
    assert vae.config.scaling_factor == 0.18215 and 2 ** (len(vae.config.block_out_channels) - 1) == 8
    dpt, (size, mean, std) = R.build_dpt("full", "meta")
    assert dpt.config.is_hybrid and dpt.config.backbone_config.model_type == "bit"
    assert size == (384, 384) and mean == std == [0.5] * 3
    sched = R.build_scheduler()
    assert sched.config.prediction_type == "epsilon" and sched.alphas_cumprod.shape == (1000,)
    # scaled-linear betas 0.00085 .. 0.012: alpha_bar_T = prod(1 - beta_t) in closed form
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sched.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5, atol=0)


def test_tiny_models_run_at_64px_with_the_expected_shapes():
    unet, vae = R.build_unet("tiny"), R.build_vae("tiny")
    dpt, (size, _, _) = R.build_dpt("tiny")
    text = R.RandomText(R.TEXT_CONTEXT, R.TEXT_WIDTH["tiny"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1  # [B, 3, H, W] in [-1, 1]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        assert z.shape == (2, 4, 8, 8)
        eps = unet(z, torch.tensor([10, 900]), encoder_hidden_states=text(["a", "b"])).sample
        assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
        assert vae.decode(z).sample.shape == (2, 3, 64, 64)
        assert size == (64, 64)
        depth = dpt(pixel_values=x).predicted_depth
        assert depth.shape == (2, 64, 64) and torch.isfinite(depth).all()


def test_builders_are_seeded_and_leave_the_callers_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = R.build_vae("tiny", seed=1)
    after = torch.rand(3)
    b, c = R.build_vae("tiny", seed=1), R.build_vae("tiny", seed=2)
    assert torch.equal(before, after), "building a model must not advance the global RNG"
    pa, pb, pc = (torch.nn.utils.parameters_to_vector(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert R.build_unet("tiny", dtype=torch.bfloat16).dtype == torch.bfloat16


def test_random_text_is_deterministic_per_text_and_clip_sized():
    text = R.RandomText()
    e = text(["a cube", "a sphere", "a cube"])
    assert e.shape == (3, 77, 1024) and e.dtype == torch.float32 and e.device.type == "cpu"
    assert torch.equal(e[0], e[2]) and not torch.allclose(e[0], e[1])
    assert torch.equal(R.RandomText()(["a cube"])[0], e[0]), "the same text must embed the same in a new instance"
    assert not torch.equal(R.RandomText(seed=1)(["a cube"])[0], e[0])
    assert abs(e.std().item() - 1) < 0.02 and abs(e.mean().item()) < 0.02
    with pytest.raises(TypeError, match="list"):
        text("a cube")


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="size"):
        R.build_unet("huge", "meta")


def test_saved_tiny_checkpoint_runs_through_the_studio_loader(tmp_path):
    folder = R.save_random_sd(tmp_path / "sd", "tiny")
    assert {p.name for p in folder.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                                   "model_index.json"}
    prior = StableDiffusionPrior(str(folder), image_size=64, device="cpu")
    assert prior.vae_scale == 0.18215 and prior.text.tokenizer.model_max_length == R.TEXT_CONTEXT
    cond = prior.embed("a cube")
    assert prior.text_embedding("a cube").shape == (1, R.TEXT_CONTEXT, R.TEXT_WIDTH["tiny"])
    az = torch.tensor([0.0, 180.0])
    el = torch.full_like(az, 15.0)
    cams = CameraBatch(orbit(az, el, 3.0, 45.0, 64, 64), az, el, torch.full_like(az, 3.0),
                       [view_bucket(a, 15.0) for a in az.tolist()])
    z = prior.encode(torch.rand(2, 3, 64, 64))
    assert z.shape == (2, 4, 8, 8)
    eps = prior.predict_noise(z, torch.tensor([100, 900]), prior.view_cond(cond, cams), 7.5)
    assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
