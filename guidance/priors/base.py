"""The one interface every 2D diffusion prior implements.

Symbols (METHODS.md): z is what the prior denoises ([B, C, h, w]; SD: VAE latents, procedural: the
image in [-1, 1]); ab_t = alphas_cumprod[t]; x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps; e(x_t, t, c) is
the noise prediction. Classifier-free guidance is the textbook e_u + s (e_c - e_u), computed inside
the prior in one batched call for the conditional and unconditional branches.

A step goes: `cond = prior.embed(prompt, negative)` (cached by the caller per prompt), then per batch
`vc = prior.view_cond(cond, camera_batch, background)`, which binds the cameras (SD: picks the
view-dependent text embeddings; procedural: renders the reference objects from those cameras), then
any number of `predict_noise(x_t, t, vc, guidance_scale)` calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from renderers.camera import CameraBatch


class PriorError(ValueError):
    """A prior refused its input (unknown prompt, missing model); the message says what to do."""


@dataclass(frozen=True)
class Cond:
    """A prompt as the prior understands it; built by `embed` and treated as opaque by estimators.

    prompt / negative: the user's text. data: prior-specific (text embeddings, mixture components).
    """

    prompt: str
    negative: str
    data: Any


@dataclass
class ViewCond:
    """A `Cond` bound to one batch of cameras (B of them). data: prior-specific, per camera."""

    cond: Cond
    batch_size: int
    data: Any


@runtime_checkable
class DiffusionPrior(Protocol):
    num_train_timesteps: int  # T
    alphas_cumprod: Tensor  # [T], on `device`, float32
    device: torch.device
    dtype: torch.dtype  # of the denoiser's compute (fp16/bf16 for SD on GPU)
    latent_channels: int  # C
    name: str

    def embed(self, prompt: str, negative: str = "") -> Cond:
        """Encode a prompt (and negative prompt; empty means the unconditional one)."""
        ...

    def view_cond(self, cond: Cond, cameras: CameraBatch, background: Tensor) -> ViewCond:
        """Bind `cond` to B cameras; background [B, 3] is what the renders are composited on."""
        ...

    def encode(self, rgb: Tensor) -> Tensor:
        """rgb [B, 3, H, W] in [0, 1] -> z [B, C, h, w]; differentiable."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """z [B, C, h, w] -> rgb [B, 3, H, W] in [0, 1]."""
        ...

    def predict_noise(
        self, x_t: Tensor, t: Tensor, vc: ViewCond, guidance_scale: float | None, *, branch: str = "cfg"
    ) -> Tensor:
        """Noise prediction e(x_t, t) [B, C, h, w] for t [B] (long).

        branch: "cfg" (guided, one batched call for both branches), "cond" (the prompt alone),
        "uncond" (CFG's unconditional branch: the negative prompt, the empty one when none is set) or
        "empty" (the empty prompt whatever the negative: ISM's inversion and target, as LucidDreamer).
        guidance_scale: s in e_u + s (e_c - e_u); only read for branch "cfg".
        """
        ...

    def estimate_depth(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        """Optional (SSD baselines): a depth map [B, 1, H, W] of the image the prior sees in x_t,
        differentiable w.r.t. x_t; larger is farther. Raises NotImplementedError if unsupported."""
        ...


def add_noise(alphas_cumprod: Tensor, z: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x_t = sqrt(ab_t) z + sqrt(1 - ab_t) eps, for t [B]."""
    ab = alphas_cumprod[t].to(z.dtype).view(-1, *([1] * (z.dim() - 1)))
    return ab.sqrt() * z + (1 - ab).sqrt() * eps


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's schedule: betas linear in sqrt space, [T] float32."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
