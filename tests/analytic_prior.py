"""A small analytic diffusion prior for the estimator tests: an independent oracle with exact scores.

p(x0 | prompt) = mean_k N(x0; r_k, s_d^2 I) over the prompt's modes r_k (images in [-1, 1], shared by
every camera), so x_t | k ~ N(sqrt(ab_t) r_k, v_t I) with v_t = ab_t s_d^2 + 1 - ab_t, the posterior
weights are softmax_k(-||x_t - sqrt(ab_t) r_k||^2 / (2 v_t)), and the exact noise prediction is
E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) sum_k w_k r_k) / v_t. Depth / disparity estimates are
the posterior-weighted depth / disparity maps of the modes: exact, differentiable functions of x_t.

Also `CountingPrior`, a wrapper that records every predict_noise call (branch, t, input, output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from guidance.priors.base import Cond, ViewCond, scaled_linear_alphas_cumprod
from renderers.camera import CameraBatch, orbit
from renderers.types import RenderOutput


def smooth_modes(K: int, size: int, seed: int = 0) -> Tensor:
    """K smooth random images [K, 3, size, size] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(K, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def mode_depths(K: int, size: int) -> Tensor:
    """K distinct depth maps [K, 1, size, size] in about [2, 4]: a bump, a tilted plane, a bowl, ..."""
    v, u = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    r2 = u**2 + v**2
    shapes = [3.0 - 0.8 * torch.exp(-2 * r2), 3.0 + 0.7 * u, 2.5 + 0.8 * r2, 3.0 - 0.6 * v]
    return torch.stack([shapes[k % len(shapes)] + 0.1 * (k // len(shapes)) for k in range(K)])[:, None]


class AnalyticPrior:
    """Gaussian-mixture prior in image space (C = 3); prompts map to lists of mode indices."""

    name = "analytic"
    latent_channels = 3

    def __init__(self, images: Tensor, depths: Tensor, prompts: dict[str, list[int]], s_d: float = 0.3,
                 num_train_timesteps: int = 1000):
        K = images.shape[0]
        assert images.shape[1] == 3 and depths.shape == (K, 1, *images.shape[2:]), (images.shape, depths.shape)
        self.modes = 2 * images - 1  # [K, 3, h, w] in z units
        self.depths = depths
        self.prompts = prompts
        self.s_d = s_d
        self.num_train_timesteps = num_train_timesteps
        self.alphas_cumprod = scaled_linear_alphas_cumprod(num_train_timesteps)
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    @classmethod
    def default(cls, size: int = 16, s_d: float = 0.3) -> "AnalyticPrior":
        """Three modes: "a thing" = modes 0 and 1; the unconditional prompt = all three."""
        return cls(smooth_modes(3, size), mode_depths(3, size), {"a thing": [0, 1], "a blob": [2]}, s_d)

    def embed(self, prompt: str, negative: str = "") -> Cond:
        everything = list(range(self.modes.shape[0]))
        return Cond(prompt, negative, (self.prompts[prompt], self.prompts[negative] if negative else everything))

    def view_cond(self, cond: Cond, cameras, background: Tensor | None = None) -> ViewCond:
        B = len(cameras.cameras) if isinstance(cameras, CameraBatch) else int(cameras)
        return ViewCond(cond, B, cond.data)

    def encode(self, rgb: Tensor) -> Tensor:
        return 2 * rgb - 1

    def decode(self, z: Tensor) -> Tensor:
        return (z + 1) / 2

    def posterior(self, x_t: Tensor, t: Tensor, idx: list[int]) -> Tensor:
        """Posterior weights [B, K'] of the modes `idx` given x_t [B, 3, h, w]."""
        ab = self.alphas_cumprod[t].view(-1, 1)  # [B, 1]
        v = ab * self.s_d**2 + 1 - ab
        r = self.modes[idx].flatten(1)  # [K', D]
        x = x_t.flatten(1)
        d2 = (x * x).sum(1, keepdim=True) - 2 * ab.sqrt() * (x @ r.T) + ab * (r * r).sum(1)[None]
        return torch.softmax(-d2 / (2 * v), dim=1)

    def eps_of(self, x_t: Tensor, t: Tensor, idx: list[int]) -> Tensor:
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        v = ab * self.s_d**2 + 1 - ab
        w = self.posterior(x_t, t, idx)
        mean = (w @ self.modes[idx].flatten(1)).view_as(x_t)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * mean) / v

    def predict_noise(self, x_t: Tensor, t: Tensor, vc: ViewCond, guidance_scale: float | None,
                      *, branch: str = "cfg") -> Tensor:
        cond_idx, uncond_idx = vc.data
        if branch == "uncond":
            return self.eps_of(x_t, t, uncond_idx)
        if branch == "empty":
            return self.eps_of(x_t, t, list(range(self.modes.shape[0])))
        if branch == "cond":
            return self.eps_of(x_t, t, cond_idx)
        e_u, e_c = self.eps_of(x_t, t, uncond_idx), self.eps_of(x_t, t, cond_idx)
        return e_u + guidance_scale * (e_c - e_u)

    def estimate_depth(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        idx = vc.data[0]
        w = self.posterior(x_t, t, idx)
        return (w @ self.depths[idx].flatten(1)).view(x_t.shape[0], 1, *x_t.shape[2:])

    def estimate_disparity(self, x_t: Tensor, t: Tensor, vc: ViewCond) -> Tensor:
        idx = vc.data[0]
        w = self.posterior(x_t, t, idx)
        return (w @ (1 / self.depths[idx]).flatten(1)).view(x_t.shape[0], 1, *x_t.shape[2:])


class DepthOnlyPrior:
    """`inner` without its disparity estimate (exercises the 1 / depth fallback)."""

    def __init__(self, inner: AnalyticPrior):
        self.inner = inner

    def __getattr__(self, name):
        if name == "estimate_disparity":
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass
class Call:
    branch: str
    t: Tensor
    x: Tensor
    out: Tensor


@dataclass
class CountingPrior:
    """Forwards to `inner`, recording each predict_noise call."""

    inner: AnalyticPrior
    calls: list[Call] = field(default_factory=list)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_noise(self, x_t, t, vc, guidance_scale, *, branch="cfg"):
        out = self.inner.predict_noise(x_t, t, vc, guidance_scale, branch=branch)
        self.calls.append(Call(branch, t.clone(), x_t.clone(), out.clone()))
        return out


def make_cameras(B: int, size: int) -> CameraBatch:
    az = torch.linspace(0, 270, B)
    el = torch.full((B,), 15.0)
    cams = orbit(az, el, 3.0, 45.0, size, size)
    return CameraBatch(cams, az, el, torch.full((B,), 3.0), ["front"] * B)


def fake_render(prior: AnalyticPrior, B: int, mode: int = 0, noise: float = 0.2, seed: int = 1,
                size: int | None = None, requires_grad: bool = True) -> RenderOutput:
    """A 'render' near one mode: rgb [B, H, W, 3] (mode + noise, in [0, 1]), alpha 1 inside a disc,
    depth the mode's depth, normals facing the camera. H = W = size (default the prior's)."""
    g = torch.Generator().manual_seed(seed)
    img = prior.decode(prior.modes[mode])[None].expand(B, -1, -1, -1)
    img = (img + noise * torch.randn(img.shape, generator=g)).clamp(0, 1)
    depth = prior.depths[mode][None].expand(B, -1, -1, -1)
    if size is not None:
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        depth = torch.nn.functional.interpolate(depth, size=(size, size), mode="bilinear", align_corners=False)
    H, W = img.shape[-2:]
    v, u = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    alpha = ((u**2 + v**2) < 0.8).float()[None, None].expand(B, 1, H, W)
    rgb = img.permute(0, 2, 3, 1).contiguous().requires_grad_(requires_grad)
    normal = torch.zeros(B, H, W, 3)
    normal[..., 2] = -1.0
    a = alpha.permute(0, 2, 3, 1).contiguous()
    return RenderOutput(rgb, a, depth.permute(0, 2, 3, 1) * a, normal * a, {})
