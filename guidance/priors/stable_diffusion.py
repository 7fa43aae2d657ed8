"""Any Stable Diffusion 1.x / 2.x checkpoint through diffusers, behind the DiffusionPrior interface.

z = scaling_factor * E(2 rgb - 1) (the mean of the VAE posterior, so encode is deterministic), with the
render resized to `image_size` px first ([B, 4, 64, 64] for 512 px). predict_noise runs CFG as one
UNet call on 2B latents (uncond first, then cond) and returns e_u + s (e_c - e_u); v-prediction
checkpoints (SD 2.x 768) are converted to epsilon: e = sqrt(ab_t) v + sqrt(1 - ab_t) x_t.

View-dependent prompts (METHODS.md): "suffix" appends ", front view" / ", side view" / ", back view" /
", overhead view" by the camera's bucket; "interpolate" (LucidDreamer) blends the front, side and back
embeddings linearly in |azimuth| (front at 0, side at 90, back at 180 degrees); "off" uses the prompt as
typed. Text embeddings are cached per (prompt, view suffix) for the prior's lifetime.

Perp-Neg (`perp_neg`, as LucidDreamer and threestudio use it against multi-faced objects): the prompt
blended between two neighbouring views is the positive direction, and the prompt's other views are
negatives whose components perpendicular to it are pushed away, with weights that fall off with the
angle (`perp_neg_weights`). Per camera, with a = |azimuth| in [0, 180] and d = e(prompt) - e_u:

    a < 90:  r = 1 - a / 90;  positive r front + (1 - r) side;  negatives front (w_f), side (w_s)
             w_f = 0 if r > 0.8 else w exp(-r f_d);   w_s = 0 if r < 0.2 else w exp(-(1 - r) s_d)
    a >= 90: r = 2 - a / 90;  positive r side + (1 - r) back;   negatives side (w_s), front (w)
             w_s = 0 if r > 0.8 else w exp(-r s_d) / 2
    e = e_u + s (d_pos + sum_k w_k perp(d_k, d_pos)),   perp(x, y) = x - <x, y> / max(|y|^2, 1e-6) y

w = `perp_neg_w` (-2), f_d, s_d = `perp_neg_front_decay` (2), `perp_neg_side_decay` (10); e_u is CFG's
unconditional branch (the negative prompt's). It is one UNet call on 4B latents instead of 2B.

LoRA (`lora`: a folder or hub id holding LoRA weights for the UNet, in diffusers' or kohya's layout) is
loaded through diffusers' LoRA loader into the UNet and fused at `lora_scale` before anything else
(precision, compile), so it costs nothing per step.

How it runs on the hardware is accel.py's business: on CUDA by default the UNet and text encoder run
in bf16 (fp16 where the GPU lacks bf16), the VAE and depth network in bf16, all with SDPA attention and
channels-last, and the UNet through torch.compile with CUDA graphs; each lever can be turned off. On
CPU everything is fp32 and eager.

`StableDiffusionPrior(model)` loads a checkpoint; `StableDiffusionPrior.from_modules(...)` wraps models
built elsewhere (the GPU benchmark builds random-weight ones from architecture configs).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from renderers.camera import CameraBatch, Cameras
from renderers.transfer import to_device

from . import accel as A
from .base import Cond, PriorError, ViewCond
from .depth import MonocularDepth
from .hub import load, require_subfolders

BRANCHES = ("cfg", "cond", "uncond", "empty")
VIEW_MODES = ("suffix", "interpolate", "off")
VIEWS = ("front", "side", "back", "overhead")
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD_LAYOUT = "unet/, vae/, text_encoder/, tokenizer/ and scheduler/"
FALLBACK = "Or run without downloads with --model procedural."


@dataclass(frozen=True)
class StableDiffusionSettings:
    dtype: str = "auto"
    """UNet / text encoder precision: auto (bf16 on CUDA, fp16 if it lacks bf16; fp32 on CPU), float32, float16, bfloat16"""
    vae_dtype: str = "auto"
    """VAE and depth network precision: auto (bf16 on CUDA where supported, else fp32), float32, float16, bfloat16"""
    image_size: int = 512
    """renders are resized to this many px (longer side) before the VAE; [8, 2048]"""
    view_prompt: str = "suffix"
    """view-dependent prompts: suffix (by camera bucket), interpolate (LucidDreamer), off"""
    sdpa: bool = True
    """PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels); off: diffusers' classic attention"""
    channels_last: str = "auto"
    """channels-last memory format for the convolutional networks: auto (on with CUDA), on, off"""
    compile: str = "auto"
    """torch.compile the UNet: auto (on with CUDA; the first steps are slow while it compiles), on, off"""
    cuda_graphs: str = "auto"
    """capture the compiled UNet in CUDA graphs (fixed shapes): auto (on with CUDA and compile), on, off"""
    attention_slicing: bool = False
    """compute attention in slices: less memory, a little slower"""
    depth_model: str = "Intel/dpt-hybrid-midas"
    """monocular depth model for estimate_depth / estimate_disparity (hub id or folder), loaded on first use"""
    perp_neg: bool = False
    """Perp-Neg: the prompt's other views as perpendicular negatives (see the module doc)"""
    perp_neg_w: float = -2.0
    """Perp-Neg: the negatives' weight w, in [-10, 0]"""
    perp_neg_front_decay: float = 2.0
    """Perp-Neg: fall-off f_d of the front negative with the angle, in [0, 100]"""
    perp_neg_side_decay: float = 10.0
    """Perp-Neg: fall-off s_d of the side negative with the angle, in [0, 100]"""
    lora: str = ""
    """LoRA weights for the UNet: a folder or hub id (diffusers' load_lora_weights layout); empty: none"""
    lora_scale: float = 1.0
    """strength of the LoRA, fused into the UNet's weights; in [0, 4]"""

    def validate(self) -> None:
        A.check_choices(self)
        if not 8 <= int(self.image_size) <= 2048:
            raise PriorError(f"sd.image_size: must lie in [8, 2048] px, got {self.image_size!r}")
        for name, lo, hi in (("perp_neg_w", -10.0, 0.0), ("perp_neg_front_decay", 0.0, 100.0),
                             ("perp_neg_side_decay", 0.0, 100.0), ("lora_scale", 0.0, 4.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and lo <= value <= hi):
                raise PriorError(f"sd.{name}: must lie in [{lo:g}, {hi:g}], got {value!r}")
        if self.view_prompt not in VIEW_MODES:
            raise PriorError(f"sd.view_prompt: choose one of {', '.join(VIEW_MODES)}; got {self.view_prompt!r}")


@dataclass(frozen=True)
class SDCond:
    """Cond.data: the prompt's embeddings by view ("" = as typed), CFG's unconditional one (the negative
    prompt's) and the empty prompt's, each [1, L, D]."""

    views: dict[str, Tensor]
    uncond: Tensor
    empty: Tensor


@dataclass
class SDView:
    """ViewCond.data: per-camera text embeddings [B, L, D] and the render size (H, W)."""

    cond: Tensor
    uncond: Tensor
    size: tuple[int, int]
    empty: Tensor | None = None  # [B, L, D]; None: the same as uncond (no negative prompt)
    negatives: Tensor | None = None  # Perp-Neg: [2, B, L, D] the negative views' embeddings
    negative_weights: Tensor | None = None  # Perp-Neg: [B, 2] their weights (0: unused)


def perp_neg_weights(azimuth_deg: Tensor, w: float, front_decay: float, side_decay: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Perp-Neg's per-camera blend (module doc) for azimuths [B]: the positive's weights [B, 3] over
    (front, side, back), the negatives' view indices [B, 2] into (front, side, back) and weights [B, 2]."""
    a = ((azimuth_deg.double() + 180.0) % 360.0 - 180.0).abs()  # [B] in [0, 180]
    front_half = a < 90.0
    r = torch.where(front_half, 1.0 - a / 90.0, 2.0 - a / 90.0)  # [B] in (0, 1]
    zero = torch.zeros_like(r)
    pos = torch.where(front_half[:, None], torch.stack([r, 1 - r, zero], -1), torch.stack([zero, r, 1 - r], -1))
    idx = torch.where(front_half[:, None], torch.tensor([0, 1]), torch.tensor([1, 0]))
    w_front_half = torch.stack([torch.where(r > 0.8, zero, w * torch.exp(-r * front_decay)),
                                torch.where(r < 0.2, zero, w * torch.exp(-(1 - r) * side_decay))], -1)
    w_back_half = torch.stack([torch.where(r > 0.8, zero, w * torch.exp(-r * side_decay) / 2), zero + w], -1)
    weights = torch.where(front_half[:, None], w_front_half, w_back_half)
    return pos.float(), idx, weights.float()


def perpendicular(x: Tensor, y: Tensor) -> Tensor:
    """Per batch item, x minus its projection on y: x - <x, y> / max(|y|^2, 1e-6) y, for [B, ...]."""
    dot = (x * y).flatten(1).sum(1)
    norm2 = (y * y).flatten(1).sum(1).clamp_min(1e-6)
    return x - (dot / norm2).view(-1, *([1] * (x.dim() - 1))) * y


def interpolation_weights(azimuth_deg: Tensor) -> Tensor:
    """LucidDreamer's blend: weights [B, 3] of (front, side, back), piecewise linear in |azimuth|."""
    a = ((azimuth_deg.float() + 180.0) % 360.0 - 180.0).abs()  # [B] in [0, 180]
    r1 = (a / 90.0).clamp(0, 1)
    r2 = ((a - 90.0) / 90.0).clamp(0, 1)
    return torch.stack([1 - r1, r1 - r2, r2], dim=-1)


class ClipText:
    """Prompt -> CLIP text embedding [1, L, D]: a tokenizer and a text encoder on `device` in `dtype`."""

    def __init__(self, tokenizer, encoder, device: torch.device, dtype: torch.dtype):
        self.tokenizer = tokenizer
        self.encoder = encoder.to(device, dtype).eval().requires_grad_(False)
        self.device = device

    def __call__(self, texts: list[str]) -> Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.encoder(ids)[0]


def load_checkpoint(src: str, unet_dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype = torch.float32):
    """(unet, vae, scheduler, tokenizer, text_encoder) from a hub id or folder in SD's layout, on CPU,
    the UNet and text encoder in `unet_dtype`, the VAE in `vae_dtype`."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    require_subfolders(src, SUBFOLDERS, "Stable Diffusion", FALLBACK)

    def part(cls, sub, **kw):
        return load(cls.from_pretrained, src, f"Stable Diffusion {sub}", SD_LAYOUT, FALLBACK, subfolder=sub, **kw)

    # low_cpu_mem_usage needs accelerate; without it ask for the plain path (diffusers warns otherwise)
    low_mem = {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}
    unet = part(UNet2DConditionModel, "unet", torch_dtype=unet_dtype, **low_mem)
    vae = part(AutoencoderKL, "vae", torch_dtype=vae_dtype, **low_mem)
    text_encoder = part(CLIPTextModel, "text_encoder", torch_dtype=unet_dtype)
    tokenizer = part(CLIPTokenizer, "tokenizer")
    scheduler = part(DDIMScheduler, "scheduler")
    if len(tokenizer) <= 3:
        raise PriorError(f"the Stable Diffusion tokenizer of {src!r} has an empty vocabulary; "
                         f"tokenizer/ must hold vocab.json and merges.txt. {FALLBACK}")
    return unet, vae, scheduler, tokenizer, text_encoder


def apply_lora(unet, source: str, scale: float) -> None:
    """Load LoRA weights for the UNet (a folder holding pytorch_lora_weights.safetensors, a .safetensors
    file or a hub id; diffusers' or kohya's key layout) and fuse them into its weights at `scale`; no
    adapter stays behind. The UNet changes in place. Raises PriorError (one line) naming prior.lora."""
    if importlib.util.find_spec("peft") is None:
        raise PriorError("prior.lora: loading LoRA weights needs the peft package (pip install peft)")
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    how = ("give a folder holding pytorch_lora_weights.safetensors, a .safetensors file or a hub id "
           "(downloaded once with `hf download <id>`), or leave prior.lora empty")
    try:
        state, alphas = Loader.lora_state_dict(source)[:2]
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0].rstrip(".")[:200] if str(e).strip() else type(e).__name__
        raise PriorError(f"prior.lora: cannot read LoRA weights from {source!r} ({reason}); {how}") from None
    if not any(k.startswith("unet.") or "lora" in k for k in state):
        raise PriorError(f"prior.lora: {source!r} holds no LoRA weights for the UNet; {how}")
    try:
        Loader.load_lora_into_unet(state, alphas, unet=unet, adapter_name="studio")
        unet.fuse_lora(lora_scale=float(scale), adapter_names=["studio"])
        unet.unload_lora()
    except (ValueError, KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise PriorError(f"prior.lora: the LoRA weights in {source!r} do not fit this UNet ({reason}); "
                         "use weights trained for this Stable Diffusion version") from None


class StableDiffusionPrior:
    """Stable Diffusion as a DiffusionPrior.

    Args:
        model: hub id (e.g. "stabilityai/stable-diffusion-2-1-base") or a local folder with SD's layout
        settings: StableDiffusionSettings; keyword overrides of its fields are accepted too
        device: default CUDA when available, else CPU
    """

    latent_channels = 4

    def __init__(self, model: str, settings: StableDiffusionSettings | None = None, *,
                 device: torch.device | str | None = None, **overrides):
        self._settle(settings, device, overrides, name=str(model))
        unet, vae, scheduler, tokenizer, text_encoder = load_checkpoint(self.model_id, self.accel.unet_dtype,
                                                                   self.accel.vae_dtype)
        self._setup(unet, vae, scheduler, ClipText(tokenizer, text_encoder, self.device, self.accel.unet_dtype))

    @classmethod
    def from_modules(cls, unet, vae, scheduler, text, *, name: str = "modules",
                     settings: StableDiffusionSettings | None = None, device: torch.device | str | None = None,
                     depth: MonocularDepth | None = None, **overrides) -> "StableDiffusionPrior":
        """A prior around models built elsewhere (random weights from configs, a fine-tune in memory).

        Args:
            unet, vae: diffusers UNet2DConditionModel and AutoencoderKL (moved to the device and dtype here)
            scheduler: anything with config.prediction_type, config.num_train_timesteps, alphas_cumprod [T]
            text: callable list[str] -> embeddings [n, L, D] (e.g. ClipText)
            depth: the depth network for SSD's baseline (else settings.depth_model is loaded on first use)
        """
        self = cls.__new__(cls)
        self._settle(settings, device, overrides, name=name)
        self._setup(unet, vae, scheduler, text)
        self._depth = depth
        return self

    def _settle(self, settings, device, overrides: dict, name: str) -> None:
        known = {f.name for f in fields(StableDiffusionSettings)}
        if set(overrides) - known:
            raise PriorError(f"stable diffusion prior: unknown settings {sorted(set(overrides) - known)}; "
                             f"known: {sorted(known)}")
        settings = StableDiffusionSettings(**{**(settings or StableDiffusionSettings()).__dict__, **overrides})
        settings.validate()
        self.settings = settings
        self.model_id = name
        self.name = f"sd:{name}"
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.accel = A.resolve(settings, self.device)
        self.dtype = self.accel.unet_dtype
        self._text_cache: dict[tuple[str, str], Tensor] = {}
        self._depth: MonocularDepth | None = None

    def _setup(self, unet, vae, scheduler, text) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise PriorError(f"{self.model_id!r}: prediction_type {self.prediction_type!r} is not supported "
                             "(epsilon and v_prediction are)")
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).to(self.device, torch.float32)
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.unet_factor = 2 ** (len(unet.config.block_out_channels) - 1)
        if self.settings.lora:
            apply_lora(unet, self.settings.lora, self.settings.lora_scale)
        ac = self.accel
        # nn.Module.to, not diffusers' override, which warns about fp32-only modules on every cast
        self.unet = torch.nn.Module.to(unet, self.device, ac.unet_dtype).eval().requires_grad_(False)
        self.vae = torch.nn.Module.to(vae, self.device, ac.vae_dtype).eval().requires_grad_(False)
        self.text = text
        for m in (self.unet, self.vae):
            m.set_attn_processor(AttnProcessor2_0() if ac.sdpa else AttnProcessor())
            m.to(memory_format=torch.channels_last if ac.channels_last else torch.contiguous_format)
        if self.settings.attention_slicing:
            self.unet.set_attention_slice("auto")
        self._unet = A.Compiled(self.unet, ac.cuda_graphs, "the UNet") if ac.compile else self.unet

    def _image_input(self, x: Tensor) -> Tensor:
        """An image batch in the VAE's dtype and memory format."""
        x = x.to(self.accel.vae_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.accel.channels_last else x

    # ----- text ------------------------------------------------------------------------------------
    def text_embedding(self, prompt: str, view: str = "") -> Tensor:
        """[1, L, D] embedding of `prompt` with the view suffix (", <view> view"; "" = none), cached."""
        key = (prompt, view)
        if key not in self._text_cache:
            text = f"{prompt}, {view} view" if view else prompt
            emb = self.text([text])
            assert emb.dim() == 3 and emb.shape[0] == 1, f"text encoder: expected [1, L, D], got {tuple(emb.shape)}"
            self._text_cache[key] = emb.to(self.device, self.dtype)
        return self._text_cache[key]

    def embed(self, prompt: str, negative: str = "") -> Cond:
        """The prompt's embeddings (as typed and per view, per settings.view_prompt), the negative
        prompt's (the empty prompt's when none) for CFG's unconditional branch, and the empty prompt's."""
        views = {"": self.text_embedding(prompt)}
        if self.settings.view_prompt != "off":
            names = VIEWS if self.settings.view_prompt == "suffix" else VIEWS[:3]
            views.update({v: self.text_embedding(prompt, v) for v in names})
        if self.settings.perp_neg:
            views.update({v: self.text_embedding(prompt, v) for v in VIEWS[:3]})
        return Cond(prompt, negative, SDCond(views, self.text_embedding(negative), self.text_embedding("")))

    def view_cond(self, cond: Cond, cameras: CameraBatch | Cameras, background: Tensor | None = None) -> ViewCond:
        """Per-camera embeddings for B cameras. A bare `Cameras` (no azimuth) uses the prompt as typed.
        The background is not used: SD sees the composited render."""
        A.step_begin(self.accel)  # once per training step: earlier CUDA graph outputs may be reused now
        data: SDCond = cond.data
        cams = cameras.cameras if isinstance(cameras, CameraBatch) else cameras
        B = len(cams)
        mode = self.settings.view_prompt if isinstance(cameras, CameraBatch) else "off"
        if mode == "suffix":
            emb = torch.cat([data.views[b] for b in cameras.buckets])
        elif mode == "interpolate":
            w = to_device(interpolation_weights(cameras.azimuth_deg), self.device, self.dtype)  # [B, 3]
            basis = torch.cat([data.views[v] for v in VIEWS[:3]])  # [3, L, D]
            emb = torch.einsum("bv,vld->bld", w, basis)
        else:
            emb = data.views[""].expand(B, -1, -1)
        empty = data.empty.expand(B, -1, -1) if cond.negative else None
        view = SDView(emb, data.uncond.expand(B, -1, -1), (cams.height, cams.width), empty)
        if self.settings.perp_neg and isinstance(cameras, CameraBatch):
            s = self.settings
            pos, idx, weights = perp_neg_weights(cameras.azimuth_deg, s.perp_neg_w, s.perp_neg_front_decay,
                                                 s.perp_neg_side_decay)
            basis = torch.cat([data.views[v] for v in VIEWS[:3]])  # [3, L, D]
            view.cond = torch.einsum("bv,vld->bld", to_device(pos, self.device, self.dtype), basis)
            view.negatives = basis[to_device(idx.T, self.device)]  # [2, B, L, D]
            view.negative_weights = to_device(weights, self.device)
        return ViewCond(cond, B, view)

    # ----- image <-> latent ------------------------------------------------------------------------
    def _vae_size(self, H: int, W: int) -> tuple[int, int]:
        """The VAE input size: longer side image_size, both a multiple of what the UNet needs."""
        m = self.vae_factor * self.unet_factor
        s = int(self.settings.image_size) / max(H, W)
        return max(m, round(H * s / m) * m), max(m, round(W * s / m) * m)

    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> z [B, 4, h, w] (float32), differentiable w.r.t. rgb."""
        assert rgb.dim() == 4 and rgb.shape[1] == 3, f"encode: expected rgb [B, 3, H, W], got {tuple(rgb.shape)}"
        size = self._vae_size(*rgb.shape[-2:])
        x = rgb.float()
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=x.shape[-1] > size[1])
        z = self.vae.encode(self._image_input(2 * x - 1)).latent_dist.mean
        return z.float() * self.vae_scale

    def _decode_raw(self, z: Tensor) -> Tensor:
        x = self.vae.decode(self._image_input(z.float() / self.vae_scale)).sample
        return (x.float() + 1) / 2

    def decode(self, z: Tensor) -> Tensor:
        """z [B, 4, h, w] -> rgb [B, 3, H, W] in [0, 1] (float32)."""
        assert z.dim() == 4 and z.shape[1] == self.latent_channels, (
            f"decode: expected z [B, {self.latent_channels}, h, w], got {tuple(z.shape)}")
        return self._decode_raw(z).clamp(0, 1)

    # ----- denoiser --------------------------------------------------------------------------------
    def _unet_eps(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """One UNet call: epsilon [N, 4, h, w] (float32) for latents x [N, 4, h, w], t [N], emb [N, L, D].
        The output is always a fresh tensor: a CUDA graph's replay overwrites its static output buffer."""
        xin = x.to(self.dtype)
        if self.accel.channels_last:
            xin = xin.contiguous(memory_format=torch.channels_last)
        out = self._unet(xin, to_device(t, self.device), encoder_hidden_states=emb).sample
        out = out.to(torch.float32, memory_format=torch.contiguous_format, copy=self.accel.cuda_graphs)
        if self.prediction_type == "v_prediction":
            ab = self.alphas_cumprod[t.to(self.device)].view(-1, 1, 1, 1)
            out = ab.sqrt() * out + (1 - ab).sqrt() * x.float()
        return out

    def predict_noise(self, x_t: Tensor, t: Tensor, vc: ViewCond, guidance_scale: float | None,
                      *, branch: str = "cfg") -> Tensor:
        """e(x_t, t) [B, 4, h, w] for x_t [B, 4, h, w], t [B] (long); see base.DiffusionPrior."""
        B = vc.batch_size
        assert x_t.dim() == 4 and x_t.shape[:2] == (B, self.latent_channels), (
            f"x_t: expected [B={B}, {self.latent_channels}, h, w], got {tuple(x_t.shape)}")
        assert t.shape == (B,), f"t: expected [B={B}], got {tuple(t.shape)}"
        data: SDView = vc.data
        if branch == "cond":
            return self._unet_eps(x_t, t, data.cond).to(x_t.dtype)
        if branch == "uncond":
            return self._unet_eps(x_t, t, data.uncond).to(x_t.dtype)
        if branch == "empty":
            return self._unet_eps(x_t, t, data.uncond if data.empty is None else data.empty).to(x_t.dtype)
        if branch != "cfg":
            raise ValueError(f"predict_noise: branch must be one of {BRANCHES}, got {branch!r}")
        if guidance_scale is None:
            raise ValueError("predict_noise: branch 'cfg' needs a guidance_scale")
        if data.negatives is not None:
            return self._perp_neg(x_t, t, data, guidance_scale)
        e = self._unet_eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([data.uncond, data.cond]))
        e_u, e_c = e.chunk(2)
        return (e_u + guidance_scale * (e_c - e_u)).to(x_t.dtype)

    def _perp_neg(self, x_t: Tensor, t: Tensor, data: SDView, guidance_scale: float) -> Tensor:
        """Perp-Neg's guided prediction (module doc): one UNet call on 4B latents."""
        emb = torch.cat([data.uncond, data.cond, data.negatives[0], data.negatives[1]])
        e = self._unet_eps(torch.cat([x_t] * 4), torch.cat([t] * 4), emb)
        e_u, e_pos, e_n0, e_n1 = e.chunk(4)
        d_pos = e_pos - e_u
        w = data.negative_weights.float()
        push = sum(w[:, k].view(-1, 1, 1, 1) * perpendicular(e_n - e_u, d_pos) for k, e_n in enumerate((e_n0, e_n1)))
        return (e_u + guidance_scale * (d_pos + push)).to(x_t.dtype)

    # ----- geometry (SSD baselines) ----------------------------------------------------------------
    @property
    def depth_model(self) -> MonocularDepth:
        if self._depth is None:
            self._depth = MonocularDepth.load(self.settings.depth_model, self.device, self.accel.vae_dtype,
                                              self.accel.channels_last)
        return self._depth

    def denoised_image(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """One-step estimate of the clean image, rgb [B, 3, H', W'] (not clamped), differentiable in x_t:
        x0_hat = (x_t - sqrt(1 - ab_t) e_u) / sqrt(ab_t), e_u the unconditional prediction, decoded."""
        e_u = self.predict_noise(x_t, t, vc, None, branch="uncond").float()
        ab = self.alphas_cumprod[t.to(self.device)].view(-1, 1, 1, 1)
        x0 = (x_t.float() - (1 - ab).sqrt() * e_u) / ab.sqrt()
        return self._decode_raw(x0)

    def estimate_disparity(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """Disparity [B, 1, H, W] (larger = nearer, relative) of the denoised image, at the render size."""
        return self.depth_model.disparity(self.denoised_image(x_t, t, vc), vc.data.size).float()

    def estimate_depth(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """Depth [B, 1, H, W] (larger = farther; 1 / disparity for relative models) at the render size."""
        return self.depth_model.depth(self.denoised_image(x_t, t, vc), vc.data.size).float()
