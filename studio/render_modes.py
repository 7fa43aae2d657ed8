"""The viewers' render modes (view.mode) as images: colour, depth, accumulated opacity, normals.

One mapping for both viewers: the browser's training view (from the trainer's render, published in every
snapshot) and the desktop viewport (rendered in the window) call `mode_image` on a renderer's output.
"""

from __future__ import annotations

import torch

from renderers.types import RenderOutput

MODES = ("rgb", "depth", "alpha", "normal")


def mode_image(out: RenderOutput, mode: str, index: int = 0) -> torch.Tensor:
    """[H, W, 3] float in [0, 1] of view `index` of a render:

    - rgb: the composited colour;
    - depth: 1 at the nearest covered pixel, falling linearly to 0.15 at the farthest; 0 where nothing
      is drawn (alpha < 1e-3), so the silhouette stays readable;
    - alpha: accumulated opacity as grey;
    - normal: camera-space normal n mapped to (n + 1) / 2 (x right red, y down green, z into the screen
      blue), scaled by alpha.
    """
    if mode == "rgb":
        return out.rgb[index].clamp(0, 1)
    alpha = out.alpha[index].clamp(0, 1)  # [H, W, 1]
    if mode == "alpha":
        return alpha.expand(-1, -1, 3)
    if mode == "depth":
        depth = out.depth[index]  # [H, W, 1]
        covered = alpha > 1e-3
        if not bool(covered.any()):
            return torch.zeros_like(out.rgb[index])
        near, far = depth[covered].min(), depth[covered].max()
        span = torch.clamp(far - near, min=1e-6)
        shade = torch.where(covered, 1.0 - 0.85 * (depth - near) / span, torch.zeros_like(depth))
        return shade.clamp(0, 1).expand(-1, -1, 3)
    if mode == "normal":
        return ((out.normal[index] + 1.0) * 0.5 * alpha).clamp(0, 1)
    raise ValueError(f"view.mode: must be one of {', '.join(MODES)}, got {mode!r}")
