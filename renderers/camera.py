"""Cameras in gsplat's convention and the training-camera sampler.

World space has +z up. Cameras are OpenCV: x right, y down, z forward; `viewmats` map world to camera.
Pixel (i, j) has its centre at (i + 0.5, j + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import Tensor

from .transfer import to_device

VIEW_BUCKETS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras sharing one image size.

    viewmats: [B, 4, 4] world-to-camera
    Ks:       [B, 3, 3] intrinsics (fx, fy, cx, cy in pixels)
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.dim() == 2:
            self.viewmats = self.viewmats[None]
        if self.Ks.dim() == 2:
            self.Ks = self.Ks[None]
        b = self.viewmats.shape[0]
        if self.viewmats.shape != (b, 4, 4):
            raise ValueError(f"Cameras.viewmats: expected [B, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (b, 3, 3):
            raise ValueError(f"Cameras.Ks: expected [B={b}, 3, 3] to match viewmats, got {tuple(self.Ks.shape)}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(
                f"Cameras: image size must be at least 1x1 pixels, got width={self.width}, height={self.height}"
            )
        self.width, self.height = int(self.width), int(self.height)

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Cameras":
        vm, K = to_device(self.viewmats, device, dtype), to_device(self.Ks, device, dtype)
        return Cameras(vm, K, self.width, self.height)

    @property
    def camtoworlds(self) -> Tensor:
        """[B, 4, 4] camera-to-world."""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """[B, 3] camera centres in world space: -R^T t."""
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[..., None])[..., 0]

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        w, h = cams[0].width, cams[0].height
        if any(c.width != w or c.height != h for c in cams):
            raise ValueError("Cameras.cat: all cameras must share one image size")
        return Cameras(torch.cat([c.viewmats for c in cams]), torch.cat([c.Ks for c in cams]), w, h)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """World-to-camera [B, 4, 4] for OpenCV cameras at eye [B, 3] looking at target [B, 3]."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Looking straight up or down: any horizontal right vector will do; take world +y's.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye))
    right = torch.nn.functional.normalize(torch.where(degenerate, alt, right), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    R_c2w = torch.stack([right, down, forward], dim=-1)  # columns: camera axes in world
    viewmats = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    viewmats[:, :3, :3] = R_c2w.transpose(1, 2)
    viewmats[:, :3, 3] = -(R_c2w.transpose(1, 2) @ eye[..., None])[..., 0]
    viewmats[:, 3, 3] = 1.0
    return viewmats


def intrinsics(fovy_deg: Tensor, width: int, height: int) -> Tensor:
    """[B, 3, 3] pinhole intrinsics with square pixels and the principal point at the image centre."""
    fy = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg) / 2)
    K = torch.zeros(fovy_deg.shape[0], 3, 3, dtype=fovy_deg.dtype, device=fovy_deg.device)
    K[:, 0, 0] = fy
    K[:, 1, 1] = fy
    K[:, 0, 2] = width / 2
    K[:, 1, 2] = height / 2
    K[:, 2, 2] = 1.0
    return K


def _as_batch(x, dtype=torch.float32) -> Tensor:
    return torch.as_tensor(x, dtype=dtype).reshape(-1)


def orbit(
    azimuth_deg,
    elevation_deg,
    radius,
    fovy_deg,
    width: int,
    height: int,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """Cameras on a sphere around `target`, looking at it, +z up.

    Azimuth 0 looks from +x, 90 from +y; elevation 90 looks straight down. Scalars or sequences
    (broadcast against each other) give a batch of B cameras.
    """
    az, el, r, fov = torch.broadcast_tensors(
        _as_batch(azimuth_deg), _as_batch(elevation_deg), _as_batch(radius), _as_batch(fovy_deg)
    )
    if (r <= 0).any():
        raise ValueError(f"orbit: radius must be > 0, got {r.tolist()}")
    if ((fov <= 0) | (fov >= 180)).any():
        raise ValueError(f"orbit: fovy_deg must lie in (0, 180), got {fov.tolist()}")
    tgt = torch.as_tensor(target, dtype=torch.float32).reshape(1, 3).expand(az.shape[0], 3)
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    eye = tgt + r[:, None] * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], dim=-1)
    return Cameras(look_at(eye, tgt), intrinsics(fov, width, height), width, height)


def view_bucket(azimuth_deg: float, elevation_deg: float) -> str:
    """The view-dependent prompt suffix bucket: front |a| < 45, back |a| > 135, overhead el > 60."""
    if elevation_deg > 60:
        return "overhead"
    a = (azimuth_deg + 180.0) % 360.0 - 180.0
    if abs(a) < 45:
        return "front"
    if abs(a) > 135:
        return "back"
    return "side"


@dataclass(frozen=True)
class CameraRanges:
    """Ranges training cameras are drawn from (uniformly; azimuth over the full circle by default)."""

    radius: tuple[float, float] = (3.0, 3.5)
    """distance from the target, world units"""
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    """elevation above the target's horizontal plane, degrees"""
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    """azimuth, degrees (0 looks from +x)"""
    fovy_deg: tuple[float, float] = (40.0, 50.0)
    """vertical field of view, degrees"""

    def validate(self) -> None:
        limits = {
            "radius": (1e-3, 1e3),
            "elevation_deg": (-89.0, 89.0),
            "azimuth_deg": (-360.0, 360.0),
            "fovy_deg": (1.0, 170.0),
        }
        for f in fields(self):
            lo, hi = getattr(self, f.name)
            lo_ok, hi_ok = limits[f.name]
            if not (lo_ok <= lo <= hi <= hi_ok):
                raise ValueError(
                    f"camera.{f.name}: need {lo_ok} <= min <= max <= {hi_ok}, got ({lo}, {hi})"
                )


@dataclass
class CameraBatch:
    cameras: Cameras
    azimuth_deg: Tensor  # [B]
    elevation_deg: Tensor  # [B]
    radius: Tensor  # [B]
    buckets: list[str]

    def __len__(self) -> int:
        return len(self.cameras)

    def __getitem__(self, idx: slice) -> "CameraBatch":
        return CameraBatch(self.cameras[idx], self.azimuth_deg[idx], self.elevation_deg[idx], self.radius[idx],
                           self.buckets[idx])


class CameraSampler:
    """Draws training cameras from `CameraRanges` with its own seeded generator (state saved in checkpoints)."""

    def __init__(self, ranges: CameraRanges, width: int, height: int, seed: int = 0):
        ranges.validate()
        self.ranges = ranges
        self.width, self.height = width, height
        self.generator = torch.Generator().manual_seed(seed)

    def _uniform(self, lo_hi: tuple[float, float], batch: int) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(batch, generator=self.generator)

    def sample(self, batch: int) -> CameraBatch:
        rg = self.ranges
        az = self._uniform(rg.azimuth_deg, batch)
        el = self._uniform(rg.elevation_deg, batch)
        r = self._uniform(rg.radius, batch)
        fov = self._uniform(rg.fovy_deg, batch)
        cams = orbit(az, el, r, fov, self.width, self.height)
        buckets = [view_bucket(a, e) for a, e in zip(az.tolist(), el.tolist())]
        return CameraBatch(cams, az, el, r, buckets)

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


def ring(n: int, elevation_deg: float, radius: float, fovy_deg: float, width: int, height: int) -> Cameras:
    """n cameras evenly spaced in azimuth (held-out evaluation views, turntables)."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return orbit(az, elevation_deg, radius, fovy_deg, width, height)


def fov_to_focal(fov_deg: float, pixels: int) -> float:
    return 0.5 * pixels / math.tan(math.radians(fov_deg) / 2)
