"""Scene and cameras in, images out. No diffusion, no UI.

    params = renderers.GaussianParams(means=..., quats=..., scales=..., opacities=..., sh=...)
    cams = renderers.Cameras(viewmats=..., Ks=..., width=W, height=H)
    out = renderers.make_renderer("cpu")(params, cams, background)
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from .camera import CameraBatch, CameraRanges, Cameras, CameraSampler, look_at, orbit, ring, view_bucket
from .types import GaussianParams, RenderInputError, RenderOutput

BACKENDS = ("auto", "cpu", "reference", "gsplat")


class Renderer(Protocol):
    name: str

    def __call__(self, params: GaussianParams, cameras: Cameras, background: Tensor) -> RenderOutput: ...


class _FunctionRenderer:
    def __init__(self, name: str, fn: Callable[..., RenderOutput]):
        self.name = name
        self._fn = fn

    def __call__(self, params: GaussianParams, cameras: Cameras, background: Tensor) -> RenderOutput:
        return self._fn(params, cameras, background)

    def __repr__(self) -> str:
        return f"Renderer({self.name!r})"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def make_renderer(kind: str = "auto") -> Renderer:
    """A renderer by name: "auto" (gsplat with CUDA, else cpu), "cpu", "reference" (tests), "gsplat"."""
    if kind not in BACKENDS:
        raise ValueError(f"renderer: unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "auto":
        kind = "gsplat" if cuda_available() else "cpu"
    if kind == "reference":
        from .reference import render_reference

        return _FunctionRenderer("reference", render_reference)
    if kind == "cpu":
        from .cpu import render_cpu

        return _FunctionRenderer("cpu", render_cpu)
    if not cuda_available():
        raise RuntimeError(
            "renderer 'gsplat' needs a CUDA GPU and none is available here; use --renderer cpu "
            "(or auto, which picks cpu on machines without CUDA)"
        )
    from .gsplat_backend import render_gsplat

    return _FunctionRenderer("gsplat", render_gsplat)


__all__ = [
    "BACKENDS", "CameraBatch", "CameraRanges", "CameraSampler", "Cameras", "GaussianParams",
    "RenderInputError", "RenderOutput", "Renderer", "look_at", "make_renderer", "orbit", "ring",
    "view_bucket",
]
