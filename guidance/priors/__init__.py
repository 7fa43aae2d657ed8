"""The 2D diffusion priors behind one interface (base.DiffusionPrior).

    prior = make_prior("procedural", s_d=0.1)                         # built in, offline, exact scores
    prior = make_prior("stabilityai/stable-diffusion-2-1-base")       # or a local folder
    cond = prior.embed("a cube")
    vc = prior.view_cond(cond, camera_batch, background)              # background [B, 3]
    eps = prior.predict_noise(x_t, t, vc, guidance_scale=7.5)         # CFG, one batched call

The Stable Diffusion prior imports diffusers / transformers only when it is built.
"""

from __future__ import annotations

from typing import Any

from .base import Cond, DiffusionPrior, PriorError, ViewCond, add_noise, scaled_linear_alphas_cumprod
from .mode_metrics import ModeCommitment, mode_commitment
from .procedural import ProceduralPrior, ProceduralSettings

PROCEDURAL = "procedural"


def make_prior(model: str, **options: Any) -> DiffusionPrior:
    """A prior by name: "procedural", or anything else as a Stable Diffusion hub id / local folder.

    Args:
        model: "procedural" or e.g. "runwayml/stable-diffusion-v1-5" / "/models/sd21"
        options: keyword settings of the chosen prior. procedural: the fields of ProceduralSettings
            (s_d, far_depth, objects_path, num_train_timesteps) plus renderer and device.
            Stable Diffusion: the fields of StableDiffusionSettings (dtype, image_size, view_prompt,
            vae_dtype, sdpa, channels_last, compile, cuda_graphs, attention_slicing, depth_model, perp_neg*,
            lora, lora_scale) plus device.
    Raises PriorError for an unknown option, a bad value or a model that cannot be loaded.
    """
    if not isinstance(model, str) or not model.strip():
        raise PriorError("prior: give 'procedural' or a Stable Diffusion hub id / local folder")
    if model.strip().lower() == PROCEDURAL:
        return ProceduralPrior(**options)
    from .stable_diffusion import StableDiffusionPrior

    return StableDiffusionPrior(model.strip(), **options)


__all__ = [
    "Cond", "DiffusionPrior", "ModeCommitment", "PriorError", "ProceduralPrior", "ProceduralSettings",
    "ViewCond", "add_noise", "make_prior", "mode_commitment", "scaled_linear_alphas_cumprod",
]
