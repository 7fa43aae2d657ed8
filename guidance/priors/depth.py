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
    """A frozen depth network.

    Args:
        model: a transformers depth-estimation model (its output has `predicted_depth` [B, h, w])
        input_size: (height, width) the network takes
        mean, std: per-channel normalization of its input, 3 values each
        device, dtype: where and in which precision the network runs
        channels_last: channels-last memory format (faster convolutions on CUDA)
    Use `MonocularDepth.load(source, device, dtype)` for a hub id or folder.
    """

    def __init__(self, model, input_size: tuple[int, int], mean, std, device: torch.device,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False):
        if input_size[0] < 1 or input_size[1] < 1:
            raise PriorError(f"depth model: bad input size {input_size}")
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.device, self.dtype, self.input_size = device, dtype, tuple(input_size)
        self.channels_last = channels_last
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.outputs_depth = predicts_depth(self.model.config)

    @classmethod
    def load(cls, source: str, device: torch.device, dtype: torch.dtype = torch.float32,
             channels_last: bool = False) -> "MonocularDepth":
        """The model and image processor saved at `source` (hub id or folder)."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        fallback = "Or set ssd.lam = 0 (no depth baseline) or use --model procedural."
        model = load(AutoModelForDepthEstimation.from_pretrained, source, "depth model", DEPTH_LAYOUT, fallback)
        proc = load(AutoImageProcessor.from_pretrained, source, "depth model's image processor", DEPTH_LAYOUT,
                    fallback)
        multiple = int(getattr(proc, "ensure_multiple_of", 1) or 1)
        h, w = _processor_size(proc)
        size = (max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple))
        mean = getattr(proc, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(proc, "image_std", None) or [0.5, 0.5, 0.5]
        return cls(model, size, mean, std, device, dtype, channels_last)

    def _raw(self, rgb: Tensor, size: tuple[int, int]) -> Tensor:
        """The network's output map [B, 1, *size] for rgb [B, 3, H, W] in [0, 1]."""
        assert rgb.dim() == 4 and rgb.shape[1] == 3, f"depth model: expected rgb [B, 3, H, W], got {tuple(rgb.shape)}"
        x = F.interpolate(rgb.float(), size=self.input_size, mode="bilinear", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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
