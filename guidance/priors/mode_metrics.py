"""Did the scene commit to one mode of a multi-mode prompt, or settle on their blurry average?

With modes r_1..r_K (reference renders of the same cameras) and their average r_bar, for an image x:

- nearest mode j = argmin_k mean (x - r_k)^2 over every pixel of every view (a mode is one 3D object,
  so it is chosen once for the whole batch of views, as psnr_ref does);
- commitment = <x - r_bar, r_j - r_bar> / ||r_j - r_bar||^2: the coordinate of x along the segment from
  the average (0) to the nearest mode (1). Residuals orthogonal to that direction (noise, other errors)
  do not count. 1 when the prompt has one mode (there is no average to fall into);
- sharpness = E_hf(x) / E_hf(r_j), E_hf = mean squared discrete Laplacian (4-neighbour, interior pixels,
  per channel): 1 is as much fine detail as the mode, below 1 is blurrier (SDS's over-smoothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ModeCommitment:
    mode: int  # index of the nearest mode
    mode_name: str
    commitment: Tensor  # scalar, 0 = the average of the modes, 1 = the nearest mode
    sharpness: Tensor  # scalar, high-frequency energy relative to the nearest mode
    mse: Tensor  # [K] mean squared error against each mode


def high_frequency_energy(img: Tensor) -> Tensor:
    """Mean squared 4-neighbour Laplacian of img [..., H, W, 3] over the interior pixels -> [...]."""
    lap = (
        4 * img[..., 1:-1, 1:-1, :]
        - img[..., :-2, 1:-1, :] - img[..., 2:, 1:-1, :] - img[..., 1:-1, :-2, :] - img[..., 1:-1, 2:, :]
    )
    return (lap**2).flatten(-3).mean(-1)


def mode_commitment(image: Tensor, refs: Tensor, names: list[str] | None = None) -> ModeCommitment:
    """Commitment of `image` to the nearest of the modes `refs` (see the module docstring).

    Args:
        image: [B, H, W, 3] renders of the scene, in [0, 1]
        refs:  [K, B, H, W, 3] the modes rendered from the same cameras, in [0, 1]
        names: K mode names (default "mode <k>")
    """
    K = refs.shape[0]
    assert refs.dim() == 5 and refs.shape[1:] == image.shape, (
        f"mode_commitment: expected image [B, H, W, 3] and refs [K, B, H, W, 3] of the same views, "
        f"got {tuple(image.shape)} and {tuple(refs.shape)}"
    )
    x, r = image.detach().double(), refs.detach().double()
    mse = ((x[None] - r) ** 2).flatten(1).mean(1)  # [K]
    j = int(mse.argmin())
    r_bar = r.mean(0)
    direction = r[j] - r_bar
    norm2 = (direction**2).sum()
    if K == 1 or norm2 == 0:
        commitment = torch.ones((), dtype=torch.float64)
    else:
        commitment = ((x - r_bar) * direction).sum() / norm2
    sharp = high_frequency_energy(x).mean() / high_frequency_energy(r[j]).mean().clamp_min(1e-12)
    label = names[j] if names else f"mode {j}"
    return ModeCommitment(j, label, commitment.float(), sharp.float(), mse.float())
