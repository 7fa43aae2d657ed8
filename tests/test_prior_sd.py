"""The Stable Diffusion prior on a tiny random-weight checkpoint (tests/tiny_models.py), loaded from a
saved folder through the real loading code, offline: shapes, CFG, embedding cache, view prompts,
v-prediction, depth, and the errors a missing model gives."""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported by anything below

import pytest  # noqa: E402
import torch  # noqa: E402

from guidance.priors import PriorError, make_prior  # noqa: E402
from guidance.priors.stable_diffusion import StableDiffusionPrior, interpolation_weights  # noqa: E402
from renderers.camera import CameraBatch, orbit, view_bucket  # noqa: E402
from tiny_models import TEXT_WIDTH, save_tiny_dpt, save_tiny_lora, save_tiny_sd, tiny_lora_unet  # noqa: E402

SIZE = 24  # render size; the VAE sees 32 px, the UNet 16 x 16 latents


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"sd": save_tiny_sd(root / "sd"), "sd_v": save_tiny_sd(root / "sd_v", prediction_type="v_prediction"),
            "dpt": save_tiny_dpt(root / "dpt"), "root": root}


@pytest.fixture(scope="module")
def prior(folders):
    return make_prior(str(folders["sd"]), image_size=32, depth_model=str(folders["dpt"]), device="cpu")


def camera_batch(azimuths=(0.0, 180.0), elevation: float = 15.0) -> CameraBatch:
    az = torch.tensor(azimuths)
    el = torch.full_like(az, elevation)
    cams = orbit(az, el, 3.0, 45.0, SIZE, SIZE)
    return CameraBatch(cams, az, el, torch.full_like(az, 3.0), [view_bucket(a, elevation) for a in az.tolist()])


class Counter:
    """Counts a module's forward calls and records their batch sizes."""

    def __init__(self, module):
        self.batches: list[int] = []
        self.handle = module.register_forward_hook(lambda m, args, kwargs, out: self.batches.append(
            (args[0] if args else next(iter(kwargs.values()))).shape[0]), with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_loads_from_a_folder_and_gives_finite_outputs_of_the_right_shapes(prior):
    assert isinstance(prior, StableDiffusionPrior) and prior.dtype == torch.float32
    assert prior.alphas_cumprod.shape == (1000,) and prior.latent_channels == 4
    rgb = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    z = prior.encode(rgb)
    assert z.shape == (2, 4, 16, 16) and torch.isfinite(z).all()
    z.square().sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0, "encode must be differentiable"
    img = prior.decode(z.detach())
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    vc = prior.view_cond(prior.embed("a cube"), camera_batch(), torch.ones(2, 3))
    t = torch.tensor([100, 900])
    for branch in ("cond", "uncond", "cfg"):
        e = prior.predict_noise(torch.randn(2, 4, 16, 16), t, vc, 7.5, branch=branch)
        assert e.shape == (2, 4, 16, 16) and torch.isfinite(e).all(), branch


def test_cfg_is_one_batched_call_and_equals_separate_calls(prior):
    vc = prior.view_cond(prior.embed("a cube", negative="blurry"), camera_batch(), torch.ones(2, 3))
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([250, 600])
    with Counter(prior.unet) as calls:
        e_cfg = prior.predict_noise(x, t, vc, 7.5)
    assert calls.batches == [4], "CFG must be one UNet call on 2B latents"
    e_c = prior.predict_noise(x, t, vc, None, branch="cond")
    e_u = prior.predict_noise(x, t, vc, None, branch="uncond")
    assert (e_c - e_u).abs().max() > 1e-6, "the prompt and the negative prompt should give different predictions"
    torch.testing.assert_close(e_cfg, e_u + 7.5 * (e_c - e_u), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="guidance_scale"):
        prior.predict_noise(x, t, vc, None)


class TextRecorder:
    """Records the text embeddings (encoder_hidden_states) of each UNet call."""

    def __init__(self, module):
        self.embeddings: list[torch.Tensor] = []
        self.handle = module.register_forward_pre_hook(
            lambda m, args, kwargs: self.embeddings.append(kwargs["encoder_hidden_states"].detach().clone()),
            with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_ism_inverts_with_the_empty_prompt_and_uses_the_negative_only_in_cfg(prior):
    """LucidDreamer: the DDIM inversion and the target e_s see the empty prompt; the negative prompt enters
    only CFG's unconditional half. Every UNet call's text embedding is checked against the prompts'."""
    from guidance.estimators.ism import ISM, ISMSettings
    from renderers.types import RenderOutput

    cams = camera_batch()
    vc = prior.view_cond(prior.embed("a cube", negative="blurry, low quality"), cams, torch.ones(2, 3))
    empty, negative = prior.text_embedding(""), prior.text_embedding("blurry, low quality")
    assert (empty - negative).abs().max() > 1e-3, "the test needs the two prompts to embed differently"
    rgb = torch.rand(2, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ones = torch.ones(2, SIZE, SIZE, 1)
    render = RenderOutput(rgb=rgb, alpha=ones, depth=ones, normal=torch.zeros(2, SIZE, SIZE, 3), info={})
    ism = ISM(ISMSettings(delta_s=100, inv_steps=3, warmup_steps=0, t_range=(0.5, 0.6)), seed=0)
    with TextRecorder(prior.unet) as rec:
        result = ism(prior, render, cams, vc, step=0)
    calls = int(result.diagnostics["prior_calls"])
    assert len(rec.embeddings) == calls >= 3, "inversion steps, the target, then CFG"
    *inversion, cfg = rec.embeddings
    for i, emb in enumerate(inversion):  # every inversion step and e_s: the empty prompt, never the negative
        assert emb.shape[0] == 2 and torch.equal(emb, empty.expand(2, -1, -1)), f"call {i} is not the empty prompt"
    assert cfg.shape[0] == 4  # CFG: the negative prompt for the unconditional half, then the prompt
    assert torch.equal(cfg[:2], negative.expand(2, -1, -1))
    assert torch.equal(cfg[2:], vc.data.cond)
    # Without a negative prompt the empty prompt is CFG's unconditional branch too (one embedding, no copy).
    plain = prior.view_cond(prior.embed("a cube"), cams, torch.ones(2, 3))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300, 300])
    torch.testing.assert_close(prior.predict_noise(x, t, plain, None, branch="empty"),
                               prior.predict_noise(x, t, plain, None, branch="uncond"))


def test_lora_weights_load_through_diffusers_and_are_fused_into_the_unet(folders, tmp_path):
    lora = save_tiny_lora(tmp_path / "lora", folders["sd"], seed=3)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([200, 700])
    emb = torch.randn(2, 77, TEXT_WIDTH, generator=torch.Generator().manual_seed(2))
    reference = tiny_lora_unet(folders["sd"], seed=3)  # the adapter itself, not fused
    plain = make_prior(str(folders["sd"]), image_size=32, device="cpu")
    with torch.no_grad():
        want = reference(x, t, encoder_hidden_states=emb).sample
        for scale, expected in ((1.0, want), (0.0, plain._unet_eps(x, t, emb))):
            p = make_prior(str(folders["sd"]), image_size=32, device="cpu", lora=str(lora), lora_scale=scale)
            assert not any("lora" in n for n, _ in p.unet.named_parameters()), "fused: no adapter left"
            torch.testing.assert_close(p._unet_eps(x, t, emb), expected, rtol=1e-4, atol=1e-5)
        assert (want - plain._unet_eps(x, t, emb)).abs().max() > 1e-3, "the LoRA must change the UNet"
    for bad, needle in ((tmp_path / "no_such_lora", "cannot read LoRA weights"),
                        (tmp_path / "lora" / "pytorch_lora_weights.safetensors.missing", "cannot read")):
        with pytest.raises(PriorError) as err:
            make_prior(str(folders["sd"]), image_size=32, device="cpu", lora=str(bad))
        text = str(err.value)
        assert "\n" not in text and text.startswith("prior.lora: ") and needle in text, text


def slow_perp_neg(prior, x, t, prompt: str, negative: str, azimuths, scale: float, w=-2.0, fd=2.0, sd=10.0):
    """Perp-Neg written out camera by camera, with one UNet call per prompt (the reference)."""
    import math

    def emb(view):
        return prior.text_embedding(prompt, view)

    out = []
    for b, az in enumerate(azimuths):
        a = abs((az + 180.0) % 360.0 - 180.0)
        if a < 90:
            r = 1 - a / 90
            pos = r * emb("front") + (1 - r) * emb("side")
            negs = [(emb("front"), 0.0 if r > 0.8 else w * math.exp(-r * fd)),
                    (emb("side"), 0.0 if r < 0.2 else w * math.exp(-(1 - r) * sd))]
        else:
            r = 2 - a / 90
            pos = r * emb("side") + (1 - r) * emb("back")
            negs = [(emb("side"), 0.0 if r > 0.8 else w * math.exp(-r * sd) / 2), (emb("front"), w)]
        xb, tb = x[b:b + 1], t[b:b + 1]
        e_u = prior._unet_eps(xb, tb, prior.text_embedding(negative))
        d0 = prior._unet_eps(xb, tb, pos) - e_u
        total = d0.clone()
        for e_neg, weight in negs:
            d = prior._unet_eps(xb, tb, e_neg) - e_u
            total += weight * (d - (d * d0).sum() / max(float((d0 * d0).sum()), 1e-6) * d0)
        out.append(e_u + scale * total)
    return torch.cat(out)


def test_perp_neg_matches_a_camera_by_camera_reference(folders):
    p = make_prior(str(folders["sd"]), image_size=32, device="cpu", perp_neg=True, view_prompt="off")
    azimuths = (0.0, 30.0, 80.0, 90.0, 100.0, 150.0, 180.0, -120.0)  # every branch of the weights
    cams = camera_batch(azimuths)
    vc = p.view_cond(p.embed("a cube", negative="blurry"), cams, torch.ones(len(azimuths), 3))
    x = torch.randn(len(azimuths), 4, 16, 16, generator=torch.Generator().manual_seed(4))
    t = torch.randint(50, 950, (len(azimuths),), generator=torch.Generator().manual_seed(5))
    with Counter(p.unet) as calls:
        e = p.predict_noise(x, t, vc, 7.5)
    assert calls.batches == [4 * len(azimuths)], "Perp-Neg is one UNet call on 4B latents"
    with torch.no_grad():
        ref = slow_perp_neg(p, x, t, "a cube", "blurry", azimuths, 7.5)
    torch.testing.assert_close(e, ref, rtol=1e-3, atol=2e-4)  # batched vs one-by-one UNet calls, x 7.5 x 2
    plain = p.predict_noise(x, t, p.view_cond(p.embed("a cube", negative="blurry"), cams.cameras,
                                              torch.ones(len(azimuths), 3)), 7.5)  # bare cameras: plain CFG
    assert (plain - e).abs().max() > 1e-4


def test_perp_neg_weights_at_the_landmarks():
    from guidance.priors.stable_diffusion import perp_neg_weights

    pos, idx, w = perp_neg_weights(torch.tensor([0.0, 90.0, 180.0, -45.0]), -2.0, 2.0, 10.0)
    torch.testing.assert_close(pos, torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0]]))
    assert idx.tolist() == [[0, 1], [1, 0], [1, 0], [0, 1]]  # (front, side) in front, (side, front) behind
    torch.testing.assert_close(w, torch.tensor([[0.0, -2.0], [0.0, -2.0], [-1.0, -2.0],
                                                [-2.0 * math.exp(-1.0), -2.0 * math.exp(-5.0)]]))


def test_text_embeddings_are_cached_per_prompt_and_view(prior):
    with Counter(prior.text.encoder) as calls:
        prior.embed("a striped cube")  # as typed + 4 view suffixes (+ the empty prompt if not yet cached)
        first = len(calls.batches)
        assert first in (5, 6)
        cond = prior.embed("a striped cube")
        assert len(calls.batches) == first, "a second embed of the same prompt must not run the text encoder"
        prior.embed("a striped cube", negative="ugly")
        assert len(calls.batches) == first + 1, "only the new negative prompt is encoded"
    front, back = prior.text_embedding("a striped cube", "front"), prior.text_embedding("a striped cube", "back")
    assert not torch.equal(front, back)
    vc = prior.view_cond(cond, camera_batch((0.0, 180.0)), torch.ones(2, 3))  # buckets front, back
    torch.testing.assert_close(vc.data.cond, torch.cat([front, back]))
    torch.testing.assert_close(vc.data.uncond, prior.text_embedding("").expand(2, -1, -1))


def test_interpolated_view_prompts_blend_front_side_back(folders):
    w = interpolation_weights(torch.tensor([0.0, 45.0, 90.0, -135.0, 180.0, 270.0]))
    want = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1], [0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(w, want)
    p = StableDiffusionPrior(str(folders["sd"]), image_size=32, view_prompt="interpolate", device="cpu")
    vc = p.view_cond(p.embed("a cube"), camera_batch((45.0, 135.0)), torch.ones(2, 3))
    front, side, back = (p.text_embedding("a cube", v) for v in ("front", "side", "back"))
    torch.testing.assert_close(vc.data.cond, torch.cat([(front + side) / 2, (side + back) / 2]))


def test_v_prediction_is_converted_to_epsilon(folders):
    p = StableDiffusionPrior(str(folders["sd_v"]), image_size=32, view_prompt="off", device="cpu")
    assert p.prediction_type == "v_prediction"
    vc = p.view_cond(p.embed("a cube"), camera_batch(), torch.ones(2, 3))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 700])
    v = p.unet(x, t, encoder_hidden_states=vc.data.cond).sample
    ab = p.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(p.predict_noise(x, t, vc, None, branch="cond"), ab.sqrt() * v + (1 - ab).sqrt() * x)


def test_depth_of_the_one_step_denoised_image(prior):
    vc = prior.view_cond(prior.embed("a cube"), camera_batch(), torch.ones(2, 3))
    t = torch.tensor([300, 500])
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    disp = prior.estimate_disparity(x, t, vc)
    assert disp.shape == (2, 1, SIZE, SIZE) and torch.isfinite(disp).all()
    (g,) = torch.autograd.grad(disp.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0, "the disparity must be differentiable in x_t"
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        x0 = (x - (1 - ab).sqrt() * prior.predict_noise(x, t, vc, None, branch="uncond")) / ab.sqrt()
        rgb = (prior.vae.decode(x0 / prior.vae.config.scaling_factor).sample + 1) / 2
        torch.testing.assert_close(disp, prior.depth_model.disparity(rgb, (SIZE, SIZE)))
        depth = prior.estimate_depth(x, t, vc)
    assert not prior.depth_model.outputs_depth  # DPT predicts relative inverse depth
    torch.testing.assert_close(depth, 1 / disp.clamp_min(1e-6))


def test_missing_models_give_one_clear_error(folders, tmp_path):
    cases = {
        str(tmp_path / "no-such-folder"): ["does not exist", "unet/, vae/, text_encoder/, tokenizer/"],
        "nobody-here/no-such-model-xyz": ["hf download nobody-here/no-such-model-xyz",
                                          "huggingface-cli download nobody-here/no-such-model-xyz"],
    }
    partial = tmp_path / "partial"
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        (partial / sub).mkdir(parents=True)
    cases[str(partial)] = ["lacks tokenizer/"]
    broken = tmp_path / "broken"
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / sub).mkdir(parents=True)
    (broken / "unet" / "config.json").write_text("{not json")
    cases[str(broken)] = ["could not load the Stable Diffusion unet", "not a valid JSON", "hf download"]
    for source, needles in cases.items():
        with pytest.raises(PriorError) as err:
            make_prior(source, device="cpu")
        msg = str(err.value)
        assert "--model procedural" in msg and all(n in msg for n in needles), msg

    p = StableDiffusionPrior(str(folders["sd"]), image_size=32, depth_model=str(tmp_path / "no-dpt"), device="cpu")
    vc = p.view_cond(p.embed("a cube"), camera_batch(), torch.ones(2, 3))
    with pytest.raises(PriorError, match="could not load the depth model"):
        p.estimate_depth(torch.randn(2, 4, 16, 16), torch.tensor([1, 2]), vc)


def test_settings_are_validated(folders):
    for bad, needle in [(dict(view_prompt="sideways"), "sd.view_prompt"),
                        (dict(dtype="float16"), "not supported on CPU"),
                        (dict(image_size=4), "sd.image_size"), (dict(resolution=64), "unknown settings")]:
        with pytest.raises(PriorError, match=needle):
            StableDiffusionPrior(str(folders["sd"]), device="cpu", **bad)


def test_attention_slicing_gives_the_same_prediction(prior, folders):
    sliced = StableDiffusionPrior(str(folders["sd"]), image_size=32, attention_slicing=True, device="cpu")
    cams = camera_batch()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([100, 800])
    e_ref = prior.predict_noise(x, t, prior.view_cond(prior.embed("a cube"), cams, torch.ones(2, 3)), 7.5)
    e = sliced.predict_noise(x, t, sliced.view_cond(sliced.embed("a cube"), cams, torch.ones(2, 3)), 7.5)
    torch.testing.assert_close(e, e_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("compile_unet", [False, True])
def test_half_precision_on_cuda(folders, compile_unet):
    p = StableDiffusionPrior(str(folders["sd"]), image_size=32, compile="on" if compile_unet else "off", device="cuda")
    assert p.dtype in (torch.bfloat16, torch.float16) and p.unet.dtype == p.dtype
    assert p.vae.dtype == p.accel.vae_dtype
    vc = p.view_cond(p.embed("a cube"), camera_batch(), torch.ones(2, 3))
    z = p.encode(torch.rand(2, 3, SIZE, SIZE, device="cuda"))
    assert z.dtype == torch.float32 and z.shape == (2, 4, 16, 16)
    t = torch.tensor([100, 800], device="cuda")
    e_cfg = p.predict_noise(z, t, vc, 7.5)
    e_c = p.predict_noise(z, t, vc, None, branch="cond")
    e_u = p.predict_noise(z, t, vc, None, branch="uncond")
    assert torch.isfinite(e_cfg).all()
    torch.testing.assert_close(e_cfg, e_u + 7.5 * (e_c - e_u), rtol=2e-2, atol=2e-2)
