"""Random-weight models of published architectures, for timing runs where no checkpoint can be downloaded.

The architectures are the JSON configs in benchmarks/configs/ (Stable Diffusion 2.1-base's UNet, VAE,
scheduler and OpenCLIP ViT-H text tower; Intel/dpt-hybrid-midas and its preprocessor). Timing does not
depend on the weights, so a seeded random init stands in for the trained ones.

    unet = build_unet("full", device="cuda", dtype=torch.bfloat16)   # 865.9M parameters
    dpt, (input_size, mean, std) = build_dpt("full", device="cuda")
    text = RandomText(77, TEXT_WIDTH["full"])                          # prompts -> [n, 77, 1024]
    save_random_sd("out/random-sd21", "full")                          # then: python app.py --model out/random-sd21

"tiny" builds the same families from the same JSON with small widths and depths (CPU smoke tests: a
forward at 64 px takes milliseconds). Run as a script:

    .venv/bin/python benchmarks/random_models.py --count                 # parameter counts of the full models
    .venv/bin/python benchmarks/random_models.py --save DIR [--size tiny]
"""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import torch
from torch import Tensor

CONFIGS = Path(__file__).parent / "configs"
SIZES = ("full", "tiny")
TEXT_CONTEXT = 77  # CLIP's token context: text encoder positions = tokenizer model_max_length
TEXT_WIDTH = MappingProxyType({"full": 1024, "tiny": 64})

# Overrides of the published configs that give the tiny models: same block types and layout, small widths.
TINY_UNET = MappingProxyType({
    "block_out_channels": [32, 32, 64, 64], "attention_head_dim": [2, 2, 4, 4], "layers_per_block": 1,
    "norm_num_groups": 8, "cross_attention_dim": TEXT_WIDTH["tiny"], "sample_size": 8})
TINY_VAE = MappingProxyType({"block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
                             "sample_size": 64})
TINY_TEXT = MappingProxyType({"hidden_size": TEXT_WIDTH["tiny"], "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "projection_dim": 32})
TINY_DPT = MappingProxyType({
    "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 128,
    "image_size": 64, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [32, 64, 64, 64],
    "fusion_hidden_size": 32, "backbone_featmap_shape": [1, 128, 4, 4],
    "backbone_config": {"embedding_size": 16, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1],
                        "num_groups": 8}})
TINY_DPT_INPUT = 64  # px, = TINY_DPT image_size


def read_config(name: str) -> dict[str, Any]:
    """The JSON config benchmarks/configs/<name>.json as a fresh dict."""
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _config(name: str, size: str, tiny: MappingProxyType) -> dict[str, Any]:
    """The published config, with the tiny overrides merged in (one level deep into nested dicts)."""
    if size not in SIZES:
        raise ValueError(f"size: choose one of {', '.join(SIZES)}; got {size!r}")
    cfg = read_config(name)
    if size == "tiny":
        for key, value in tiny.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def _build(factory: Callable[[], torch.nn.Module], device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """factory() with its parameters created directly on `device` (a full-size model is never
    initialized on the CPU first when the target is CUDA), seeded without touching the caller's RNG."""
    device = torch.device(device)
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(seed)
        model = factory()
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast, even of a model with no
    # float32-only modules
    return torch.nn.Module.to(model, dtype=dtype).eval()


def build_unet(size: str = "full", device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """SD 2.1-base's UNet2DConditionModel (latents [B, 4, 64, 64] at 512 px, text [B, 77, 1024]) with
    random weights; "tiny": 4 levels of 32-64 channels, text width TEXT_WIDTH["tiny"]."""
    from diffusers import UNet2DConditionModel

    cfg = _config("sd21_base_unet", size, TINY_UNET)
    return _build(lambda: UNet2DConditionModel.from_config(cfg), device, dtype, seed)


def build_vae(size: str = "full", device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """SD 2.1-base's AutoencoderKL (downsamples 8x to 4 latent channels) with random weights; "tiny":
    the same 4 levels at 16-32 channels."""
    from diffusers import AutoencoderKL

    cfg = _config("sd21_base_vae", size, TINY_VAE)
    return _build(lambda: AutoencoderKL.from_config(cfg), device, dtype, seed)


def build_text_encoder(size: str = "full", device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0,
                       **overrides):
    """The OpenCLIP ViT-H text tower as a transformers CLIPTextModel (23 layers: SD 2 reads the
    penultimate layer of the 24) with random weights; `overrides` replace config fields (vocab_size,
    bos_token_id, ... to match a tokenizer)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig.from_dict({**_config("sd21_base_text_encoder", size, TINY_TEXT), **overrides})
    return _build(lambda: CLIPTextModel(cfg), device, dtype, seed)


def build_scheduler():
    """SD 2.1-base's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon) as a DDIMScheduler."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(read_config("sd21_base_scheduler"))


def build_dpt(size: str = "full", device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """Intel/dpt-hybrid-midas (ViT-B/16 on a BiT-R50 stem, 384 px) as a DPTForDepthEstimation with random
    weights, and its input convention read from the preprocessor JSON.

    Returns:
        (model, (input_size (h, w), mean [3], std [3])); "tiny" takes 64 px inputs.
    """
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = DPTConfig.from_dict(_config("dpt_hybrid_midas", size, TINY_DPT))
    model = _build(lambda: DPTForDepthEstimation(cfg), device, dtype, seed)
    proc = read_config("dpt_hybrid_midas_preprocessor")
    h, w = (proc["size"]["height"], proc["size"]["width"]) if size == "full" else (TINY_DPT_INPUT, TINY_DPT_INPUT)
    return model, ((h, w), list(proc["image_mean"]), list(proc["image_std"]))


def count_parameters(size: str = "full") -> dict[str, int]:
    """Parameter counts of the UNet, VAE, ViT-H text tower and DPT-hybrid, built on the meta device (no
    memory, no init: the counts come from the architecture alone)."""
    models = {"unet": build_unet(size, "meta"), "vae": build_vae(size, "meta"),
              "text_encoder": build_text_encoder(size, "meta"), "dpt": build_dpt(size, "meta")[0]}
    return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}


class RandomText:
    """A CLIP-sized stand-in text encoder: each text maps to a fixed N(0, 1) embedding (CLIP's last
    hidden state has std about 1), seeded by a stable hash of the text, so the same prompt always gives
    the same embedding and different prompts give different ones.

    Args:
        length: tokens L (77 for CLIP)
        width: channels D (TEXT_WIDTH[size]: 1024 for SD 2's ViT-H)
        seed: mixed into every text's seed
    """

    def __init__(self, length: int = TEXT_CONTEXT, width: int = TEXT_WIDTH["full"], seed: int = 0):
        if length < 1 or width < 1:
            raise ValueError(f"RandomText: length and width must be >= 1, got {length}, {width}")
        self.length, self.width, self.seed = int(length), int(width), int(seed)

    def __call__(self, texts: list[str]) -> Tensor:
        """Embeddings [n, L, D] (float32, CPU) of n texts."""
        if isinstance(texts, str):
            raise TypeError("RandomText: pass a list of texts, got a single str")
        out = torch.empty(len(texts), self.length, self.width)
        for i, text in enumerate(texts):
            # crc32, not hash(): Python salts str hashes per process, and runs must agree
            g = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}\x00{text}".encode()))
            out[i] = torch.randn(self.length, self.width, generator=g)
        return out


def _byte_alphabet() -> list[str]:
    """The 256 printable characters a byte-level BPE writes for the 256 byte values: printable latin-1
    bytes stand for themselves, the others are shifted past 255 in order."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def write_clip_tokenizer(folder: Path, context: int = TEXT_CONTEXT) -> tuple[int, int, int]:
    """A small CLIP BPE tokenizer (every byte, as word-inner and word-final symbol, a few merges) in
    `folder`, so any prompt tokenizes. Returns (vocab size, bos id, eos id); pad = eos, as in CLIP."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_alphabet()
    merges = ["c u", "cu b", "cub e</w>"]
    symbols = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    return len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]


def save_random_sd(folder, size: str = "full", seed: int = 0, device="cpu") -> Path:
    """A complete random-weight Stable Diffusion 2.1-base checkpoint in diffusers' layout (unet/, vae/,
    text_encoder/, tokenizer/, scheduler/, model_index.json), loadable by `python app.py --model folder`.

    "full" is saved in float16 safetensors (2.48 GB: UNet 1.73 GB, text tower 0.58 GB, VAE 0.17 GB;
    the text tower's vocabulary is the small tokenizer's, not CLIP's 49408); "tiny" in float32 (about
    8 MB). Building and writing "full" on a 2-core CPU took 22 s and 3.8 GB of memory; `device="cuda"`
    initializes on the GPU instead.

    Args:
        folder: created if missing; existing files of the same names are overwritten
        size: "full" or "tiny"
        seed: seeds every model's init (each model gets its own offset of it)
    Returns:
        the folder as a Path
    """
    folder = Path(folder)
    vocab_size, bos, eos = write_clip_tokenizer(folder / "tokenizer")
    save_dtype = torch.float16 if size == "full" else torch.float32
    text_ids = {"vocab_size": vocab_size, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
                "max_position_embeddings": TEXT_CONTEXT}
    parts = {"unet": lambda: build_unet(size, device, seed=seed),
             "vae": lambda: build_vae(size, device, seed=seed + 1),
             "text_encoder": lambda: build_text_encoder(size, device, seed=seed + 2, **text_ids)}
    for name, build in parts.items():  # one at a time: the full UNet alone is 3.5 GB in float32
        model = torch.nn.Module.to(build(), dtype=save_dtype)
        model.save_pretrained(folder / name, safe_serialization=True)
        del model
    build_scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
    }, indent=2))
    return folder


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", metavar="DIR", help="write a random-weight SD 2.1-base checkpoint folder here")
    parser.add_argument("--size", choices=SIZES, default="full", help="full (published sizes) or tiny")
    parser.add_argument("--count", action="store_true", help="print the parameter count of each model")
    args = parser.parse_args(argv)
    if not (args.save or args.count):
        parser.error("nothing to do: pass --save DIR and/or --count")
    if args.count:
        for name, n in count_parameters(args.size).items():
            print(f"{name:13s} {n:>13,d} parameters ({n / 1e6:.2f}M)")
    if args.save:
        folder = save_random_sd(args.save, args.size)
        print(f"wrote {folder} ({folder_bytes(folder) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
