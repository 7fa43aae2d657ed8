"""Tiny random-weight stand-ins for Stable Diffusion and a monocular depth model, saved in the real
on-disk layouts so that tests load them through the same code as real checkpoints (no network).

    sd_dir = save_tiny_sd(tmp_path / "sd")          # unet/ vae/ text_encoder/ tokenizer/ scheduler/
    depth_dir = save_tiny_dpt(tmp_path / "dpt")     # config.json, weights, preprocessor_config.json

Sizes: the UNet has 2 blocks of 8 / 16 channels, the VAE downsamples by 2 (4 latent channels), the text
encoder has width 16 and a 32-token context, the DPT is a 2-layer ViT on 32 px images. Every model is
seeded, so its outputs are reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TOKEN_CONTEXT = 32  # tokenizer model_max_length = text encoder max positions
TEXT_WIDTH = 16


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: 256 printable characters standing for the 256 byte values."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path) -> int:
    """A CLIP BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json) in `folder`; returns the
    vocabulary size. Single characters plus a few merges, so every prompt tokenizes."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars]:
        vocab[c] = len(vocab)
    merges = ["c u", "cu b", "cub e</w>", "v i", "vi e", "vie w</w>", "s i", "si d", "sid e</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"model_max_length": TOKEN_CONTEXT, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>",
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(vocab)


def save_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A random tiny Stable Diffusion checkpoint folder; returns `folder`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=2, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=32,
    )
    vocab_size = write_clip_tokenizer(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=TOKEN_CONTEXT, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, projection_dim=TEXT_WIDTH,
    ))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, prediction_type=prediction_type)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    sched.save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
    }))
    return folder


def save_tiny_dpt(folder: Path, seed: int = 0) -> Path:
    """A random tiny DPT depth model (relative inverse depth, like MiDaS) and its image processor."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    config = DPTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[4, 8, 8, 16],
        fusion_hidden_size=8, head_in_index=-1, reassemble_factors=[4, 2, 1, 0.5],
    )
    DPTForDepthEstimation(config).eval().save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8,
                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(folder)
    return folder


def tiny_lora_unet(sd_folder: Path, seed: int = 0, rank: int = 4):
    """The tiny SD's UNet with a LoRA adapter on its attention projections, every LoRA weight drawn from
    `seed` (peft would start the up-weights at 0, no change at all, and the down-weights from the global
    random state)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(Path(sd_folder) / "unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    for name, p in unet.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            p.data.copy_(0.1 * torch.randn(p.shape, generator=g))
    return unet.eval()


def save_tiny_lora(folder: Path, sd_folder: Path, seed: int = 0) -> Path:
    """LoRA weights for the tiny SD's UNet, saved as diffusers' save_lora_weights writes them."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(tiny_lora_unet(sd_folder, seed)))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(folder), unet_lora_layers=layers,
                                              safe_serialization=True)
    return Path(folder)
