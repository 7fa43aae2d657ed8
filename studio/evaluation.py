"""psnr_ref: how close the scene is to the procedural prior's answer, on a fixed ring of held-out cameras.

The prompt's distribution has several modes (texture variants); the scene is scored against the nearest
one (highest mean PSNR over the ring), and that mode's name is reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from renderers.camera import CameraBatch, orbit, view_bucket

HELD_OUT_AZIMUTHS = (22.5, 112.5, 202.5, 292.5)  # between the usual training quadrants
HELD_OUT_ELEVATION = 20.0


@dataclass
class RefScore:
    psnr: torch.Tensor  # scalar, dB, against the nearest mode
    mode: int  # index of that mode
    mode_name: str
    per_mode: torch.Tensor  # [K] dB


def held_out_cameras(radius: float, fovy_deg: float, size: int) -> CameraBatch:
    az = torch.tensor(HELD_OUT_AZIMUTHS)
    el = torch.full_like(az, HELD_OUT_ELEVATION)
    cams = orbit(az, el, radius, fovy_deg, size, size)
    return CameraBatch(cams, az, el, torch.full_like(az, radius),
                       [view_bucket(a, HELD_OUT_ELEVATION) for a in az.tolist()])


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] over all but the leading dim: a, b [..., H, W, 3] -> [...]."""
    mse = ((a - b) ** 2).flatten(-3).mean(-1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def score_against_reference(renderer, params, prior, cond, cams: CameraBatch, background) -> RefScore:
    """Render the scene on `cams` and compare with each reference mode of `cond`'s prompt."""
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(1, 3).expand(len(cams.cameras), 3)
    out = renderer(params.detach(), cams.cameras, bg)
    refs, names = prior.reference_images(cond, cams, bg)  # [K, B, H, W, 3]
    per_mode = psnr(out.rgb[None].float(), refs.float()).mean(-1)  # [K]
    best = int(per_mode.argmax())
    return RefScore(per_mode[best], best, names[best], per_mode)
