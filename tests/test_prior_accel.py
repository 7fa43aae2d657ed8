"""The Stable Diffusion prior's speed levers (guidance/priors/accel.py): what "auto" turns on with and
without CUDA, the refusals, and that every lever computes what the plain fp32 path computes (to within
the precision it trades away), on the tiny random-weight checkpoint (tests/tiny_models.py), on CPU."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from guidance.priors import PriorError  # noqa: E402
from guidance.priors import accel as A  # noqa: E402
from guidance.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionSettings  # noqa: E402
from renderers.camera import orbit  # noqa: E402
from studio.config import default_config, validate  # noqa: E402
from studio.confio import ConfigError, from_dict, set_paths  # noqa: E402
from studio.trainer import build_prior  # noqa: E402
from tiny_models import save_tiny_sd  # noqa: E402

BF16_EPS = 2.0 ** -8  # unit roundoff of bfloat16


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("accel") / "sd")


@pytest.fixture(scope="module")
def plain(sd_dir):
    return StableDiffusionPrior(str(sd_dir), image_size=32, device="cpu")


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cams = orbit(torch.tensor([0.0, 120.0]), torch.tensor([10.0, 30.0]), 3.0, 45.0, 24, 24)
    return cams, torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 800]), torch.rand(2, 3, 24, 24, generator=g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def branches(prior, x, t, cams) -> dict[str, torch.Tensor]:
    vc = prior.view_cond(prior.embed("a cube"), cams)
    return {br: prior.predict_noise(x, t, vc, 7.5 if br == "cfg" else None, branch=br)
            for br in ("cond", "uncond", "cfg")}


# ----- what auto means ------------------------------------------------------------------------------
def test_auto_is_plain_fp32_on_cpu_and_everything_on_with_cuda(monkeypatch):
    s = StableDiffusionSettings()
    assert A.resolve(s, torch.device("cpu")) == A.Accel(torch.float32, torch.float32, True, False, False, False)
    # The CUDA branch is pure logic on the device type and the GPU's bf16 support; no GPU needed.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert A.resolve(s, cuda) == A.Accel(torch.bfloat16, torch.bfloat16, True, True, True, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert A.resolve(s, cuda) == A.Accel(torch.float16, torch.float32, True, True, True, True)
    # Each lever turns off alone.
    off = A.resolve(StableDiffusionSettings(cuda_graphs="off"), cuda)
    assert off.compile and not off.cuda_graphs
    off = A.resolve(StableDiffusionSettings(compile="off"), cuda)
    assert not off.compile and not off.cuda_graphs  # auto graphs follow compile
    off = A.resolve(StableDiffusionSettings(channels_last="off", sdpa=False, dtype="float32", vae_dtype="float32"), cuda)
    assert off == A.Accel(torch.float32, torch.float32, False, False, True, True)
    assert "compile + CUDA graphs" in A.resolve(s, cuda).describe()


@pytest.mark.parametrize("settings, field", [
    (dict(cuda_graphs="on"), "sd.cuda_graphs: CUDA graphs need a CUDA device"),
    (dict(dtype="float16"), "sd.dtype: float16 is not supported on CPU"),
    (dict(vae_dtype="half"), "sd.vae_dtype: choose one of auto, float32, float16, bfloat16"),
    (dict(compile="yes"), "sd.compile: choose one of auto, on, off"),
])
def test_impossible_choices_are_refused_with_the_field(sd_dir, settings, field):
    with pytest.raises(PriorError, match=field):
        StableDiffusionPrior(str(sd_dir), image_size=32, device="cpu", **settings)


def test_graphs_without_compile_are_refused_on_cuda_too(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(PriorError, match="sd.cuda_graphs: the graphs are captured by torch.compile"):
        A.resolve(StableDiffusionSettings(compile="off", cuda_graphs="on"), torch.device("cuda"))


def test_the_studio_passes_every_lever_to_the_prior(sd_dir):
    cfg = set_paths(default_config("sds"), {
        "prior.model": str(sd_dir), "prior.image_size": 64, "prior.dtype": "bfloat16",
        "prior.vae_dtype": "bfloat16", "prior.sdpa": False, "prior.channels_last": "on", "prior.compile": "off",
        "prior.cuda_graphs": "off", "prior.attention_slicing": True})
    prior = build_prior(cfg, torch.device("cpu"))
    for name in ("dtype", "vae_dtype", "sdpa", "channels_last", "compile", "cuda_graphs", "attention_slicing",
                 "image_size", "depth_model"):
        assert getattr(prior.settings, name) == getattr(cfg.prior, name), name
    assert prior.accel == A.Accel(torch.bfloat16, torch.bfloat16, False, True, False, False)
    assert prior.unet.dtype == torch.bfloat16 and prior.vae.dtype == torch.bfloat16
    # prior.compile was a boolean before it became auto / on / off: configs saved then still load
    old = from_dict(type(cfg), {"prior": {"compile": False, "channels_last": "true"}}, base=default_config("sds"))
    assert (old.prior.compile, old.prior.channels_last) == ("off", "on")
    with pytest.raises(ConfigError, match="prior.compile: must be one of auto, on, off, got 'maybe'"):
        set_paths(default_config("sds"), {"prior.compile": "maybe"})
    with pytest.raises(ConfigError, match="prior.cuda_graphs"):
        validate(set_paths(default_config("sds"), {"prior.compile": "off", "prior.cuda_graphs": "on"}))


# ----- each lever against the plain fp32 path --------------------------------------------------------
@pytest.mark.parametrize("lever", [dict(sdpa=False), dict(channels_last="on")])
def test_exact_levers_match_fp32(sd_dir, plain, lever):
    """The attention kernel and the memory format change the arithmetic's order only."""
    fast = StableDiffusionPrior(str(sd_dir), image_size=32, device="cpu", **lever)
    cams, x, t, rgb = inputs()
    ref, got = branches(plain, x, t, cams), branches(fast, x, t, cams)
    for br in ref:
        torch.testing.assert_close(got[br], ref[br], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.encode(rgb), plain.encode(rgb), rtol=1e-4, atol=1e-5)


def test_bf16_stays_within_half_precision_error_of_fp32(sd_dir, plain):
    """bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.39%). Through the tiny UNet's dozen layers
    the relative error of each branch measures ~3.4 units (1.3%); CFG at s = 7.5 multiplies the error of
    the difference e_c - e_u, so the guided output may be ~2s times worse. A bf16 path that silently
    ran something in fp16 or dropped a cast would exceed these bounds (or overflow)."""
    half = StableDiffusionPrior(str(sd_dir), image_size=32, device="cpu", dtype="bfloat16", vae_dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    cams, x, t, rgb = inputs()
    ref, got = branches(plain, x, t, cams), branches(half, x, t, cams)
    for br in ("cond", "uncond"):
        assert got[br].dtype == torch.float32
        assert rel(got[br], ref[br]) < 8 * BF16_EPS, (br, rel(got[br], ref[br]))
    assert rel(got["cfg"], ref["cfg"]) < 2 * 7.5 * 8 * BF16_EPS
    assert rel(got["cfg"], ref["cfg"]) > 1e-4, "bf16 gave fp32's result bit for bit: it did not run in bf16"
    # The encoder and its gradient (what reaches the renderer in SDS).
    grads = []
    for prior in (plain, half):
        r = rgb.clone().requires_grad_(True)
        z = prior.encode(r)
        (z * torch.linspace(-1, 1, z.numel()).view_as(z)).sum().backward()
        grads.append((z.detach(), r.grad))
    assert rel(grads[1][0], grads[0][0]) < 8 * BF16_EPS
    assert torch.nn.functional.cosine_similarity(grads[1][1].flatten(), grads[0][1].flatten(), dim=0) > 0.99


def test_compiled_unet_matches_eager(sd_dir, plain):
    """The real torch.compile path (Inductor, C++ on CPU): one compile of the CFG call (~40 s here)."""
    fast = StableDiffusionPrior(str(sd_dir), image_size=32, device="cpu", compile="on")
    assert isinstance(fast._unet, A.Compiled)
    cams, x, t, _ = inputs()
    vc_ref, vc = plain.view_cond(plain.embed("a cube"), cams), fast.view_cond(fast.embed("a cube"), cams)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a compiler failure would warn and fall back
        got = fast.predict_noise(x, t, vc, 7.5)
    assert fast._unet.failed is None
    torch.testing.assert_close(got, plain.predict_noise(x, t, vc_ref, 7.5), rtol=1e-4, atol=1e-4)


# ----- a compiler failure costs speed, not the session ------------------------------------------------
def failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_a_compiler_failure_falls_back_to_eager_with_one_warning():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    wrapped = A.Compiled(net, cuda_graphs=False, what="the test net", backend=failing_backend)
    x = torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="the test net: torch.compile failed .*prior.compile=off"):
        out = wrapped(x)
    torch.testing.assert_close(out, net(x))
    assert "no C++ compiler here" in wrapped.failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(wrapped(x), net(x))  # eager from now on, no second warning


def raised_in(path: str) -> RuntimeError:
    """A RuntimeError whose innermost frame is code from file `path`."""
    namespace: dict = {}
    exec(compile("def fail():\n    raise RuntimeError('overwritten by a subsequent run')\n", path, "exec"), namespace)
    try:
        namespace["fail"]()
    except RuntimeError as exc:
        return exc
    raise AssertionError("fail() did not raise")


def test_errors_of_the_model_itself_are_not_absorbed():
    assert not A.is_compiler_error(RuntimeError("CUDA out of memory"))
    assert A.is_compiler_error(torch._dynamo.exc.Unsupported("graph break"))
    # cudagraph trees raise plain RuntimeErrors: recognised by where they come from
    assert A.is_compiler_error(raised_in("/venv/site-packages/torch/_inductor/cudagraph_trees.py"))
    assert not A.is_compiler_error(raised_in("/venv/site-packages/diffusers/models/unet_2d_condition.py"))
    wrapped = A.Compiled(torch.nn.Identity(), False, "identity", backend="eager")
    ok = torch.ones(2)
    torch.testing.assert_close(wrapped(ok), ok)
    assert wrapped.failed is None


def test_step_begin_only_touches_cuda_graph_state(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    A.step_begin(A.Accel(torch.float32, torch.float32, True, False, False, False))
    assert calls == []
    A.step_begin(SimpleNamespace(cuda_graphs=True))
    assert calls == [1]


# ----- the same on a GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype, bound", [("float16", 2e-3), ("bfloat16", 8 * BF16_EPS)])
def test_half_precision_on_cuda_matches_fp32(sd_dir, dtype, bound):
    ref = StableDiffusionPrior(str(sd_dir), image_size=32, device="cuda", dtype="float32", vae_dtype="float32",
                               compile="off")
    fast = StableDiffusionPrior(str(sd_dir), image_size=32, device="cuda", dtype=dtype)  # compile + graphs: auto
    cams, x, t, rgb = inputs()
    x, t, rgb = x.cuda(), t.cuda(), rgb.cuda()
    for step in range(3):  # graph recording happens on the first replays
        got, want = branches(fast, x, t, cams), branches(ref, x, t, cams)
        for br in ("cond", "uncond"):
            assert rel(got[br], want[br]) < bound, (step, br, rel(got[br], want[br]))
    assert fast._unet.failed is None
    assert rel(fast.encode(rgb), ref.encode(rgb)) < 8 * BF16_EPS
