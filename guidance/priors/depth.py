"""A monocular depth network (transformers AutoModelForDepthEstimation: DPT / MiDaS, Depth Anything, ...)
as a differentiable function of an image, for SSD's depth baseline with Stable Diffusion.

What the network returns differs by family: DPT / MiDaS and relative Depth Anything predict relative
inverse depth (disparity: larger = nearer, up to scale and shift); metric models (ZoeDepth, metric
Depth Anything) predict depth. `MonocularDepth` reads which from the config and offers both views:
`disparity(rgb)` (preferred: SSD compares disparity with disparity by Pearson correlation, which ignores
the unknown scale and shift) and `depth(rgb)` = the reciprocal (clamped at MIN_VALUE) for relative
models, the network's output for metric ones.

Preprocessing is done with torch ops so that gradients reach the image: resize to the processor's size
(a multiple of its `ensure_multiple_of`), normalize by its mean / std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PriorError
from .hub import load

MIN_VALUE = 1e-6
DEPTH_LAYOUT = "a transformers depth-estimation model (config.json, weights, preprocessor_config.json)"


def _processor_size(proc) -> tuple[int, int]:
    """(height, width) the processor resizes to; dicts and transformers' SizeDict alike."""
    size = getattr(proc, "size", None) or {}

    def get(key):
        try:
            return size[key]
        except (KeyError, TypeError):
            return None

    h, w, short = get("height"), get("width"), get("shortest_edge")
    if h and w:
        return int(h), int(w)
    if short:
        return int(short), int(short)
    return 384, 384  # DPT's training resolution


def predicts_depth(config) -> bool:
    """True for metric-depth models, False for relative inverse depth (disparity)."""
    return getattr(config, "depth_estimation_type", "relative") == "metric" or config.model_type == "zoedepth"


class MonocularDepth:
    """A frozen depth network. Args: source (hub id or folder), device, dtype (of the network)."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype = torch.float32):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        fallback = "Or set ssd.lam = 0 (no depth baseline) or use --model procedural."
        self.model = load(AutoModelForDepthEstimation.from_pretrained, source, "depth model", DEPTH_LAYOUT,
                          fallback)
        proc = load(AutoImageProcessor.from_pretrained, source, "depth model's image processor", DEPTH_LAYOUT,
                    fallback)
        self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        multiple = int(getattr(proc, "ensure_multiple_of", 1) or 1)
        h, w = _processor_size(proc)
        self.input_size = (max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple))
        mean = getattr(proc, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(proc, "image_std", None) or [0.5, 0.5, 0.5]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.outputs_depth = predicts_depth(self.model.config)
        if self.input_size[0] < 1 or self.input_size[1] < 1:
            raise PriorError(f"depth model {source!r}: bad processor size {self.input_size}")

    def _raw(self, rgb: Tensor, size: tuple[int, int]) -> Tensor:
        """The network's output map [B, 1, *size] for rgb [B, 3, H, W] in [0, 1]."""
        assert rgb.dim() == 4 and rgb.shape[1] == 3, f"depth model: expected rgb [B, 3, H, W], got {tuple(rgb.shape)}"
        x = F.interpolate(rgb.float(), size=self.input_size, mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.dtype)
        out = self.model(pixel_values=x).predicted_depth  # [B, h, w]
        return F.interpolate(out[:, None].float(), size=size, mode="bilinear", align_corners=False)

    def disparity(self, rgb: Tensor, size: tuple[int, int]) -> Tensor:
        """Disparity (larger = nearer, relative) [B, 1, *size] of rgb [B, 3, H, W]; differentiable."""
        raw = self._raw(rgb, size)
        return 1.0 / raw.clamp_min(MIN_VALUE) if self.outputs_depth else raw

    def depth(self, rgb: Tensor, size: tuple[int, int]) -> Tensor:
        """Depth (larger = farther; relative models: 1 / disparity) [B, 1, *size]; differentiable."""
        raw = self._raw(rgb, size)
        return raw if self.outputs_depth else 1.0 / raw.clamp_min(MIN_VALUE)
