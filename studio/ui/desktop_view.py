"""The desktop viewport: an orbit camera the user drives and the renderer's image of the latest snapshot.

Nothing here touches the session's tensors: the image is rendered in the UI thread from the snapshot's
numpy splat arrays (shared with torch without a copy), under `no_grad`, by a renderer of the session's
kind. Renders are rate-bounded while training (the rasterizer holds both cores and the GIL while it
runs, so every viewport render is time the worker does not train): a new snapshot re-renders at most
`WindowSettings.max_hz`, a camera move re-renders on the next frame.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch

import renderers
from renderers.camera import Cameras, orbit

from ..snapshot import Snapshot, Splats


@dataclass(frozen=True)
class WindowSettings:
    size: int = 256
    """side of the viewport render in pixels (square) while paused and still; shown at `display` pixels"""
    moving_size: int = 128
    """side of the render while training or while the camera moves (a divisor of size: cheaper renders
    leave the two cores to training; the image sharpens to `size` once paused and still)"""
    display: int = 512
    """side of the viewport on screen in pixels (the render is scaled up to it)"""
    max_hz: float = 4.0
    """re-renders per second for new snapshots while training (camera moves re-render at once)"""
    background: float = 0.16
    """grey level behind the Gaussians"""
    fps: float = 30.0
    """frame-rate cap while the user interacts (without a GPU, Mesa draws every frame on the CPU)"""
    idle_fps: float = 5.0
    """frame-rate cap without input for a second (snapshots arrive at run.publish_hz anyway)"""

    def validate(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ValueError(f"window.size: must lie in [16, 2048] pixels, got {self.size}")
        if not (8 <= self.moving_size <= self.size and self.size % self.moving_size == 0):
            raise ValueError(f"window.moving_size: must be a divisor of size = {self.size} and at least 8, "
                             f"got {self.moving_size}")
        if not 16 <= self.display <= 4096:
            raise ValueError(f"window.display: must lie in [16, 4096] pixels, got {self.display}")
        if not 0.1 <= self.max_hz <= 120.0:
            raise ValueError(f"window.max_hz: must lie in [0.1, 120] per second, got {self.max_hz}")
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"window.background: must lie in [0, 1], got {self.background}")
        for name in ("fps", "idle_fps"):
            if not 1.0 <= getattr(self, name) <= 240.0:
                raise ValueError(f"window.{name}: must lie in [1, 240] frames per second, got {getattr(self, name)}")


@dataclass(frozen=True)
class OrbitState:
    """Where the viewport camera is: on a sphere of `radius` around `target`, +z up (renderers.orbit)."""

    azimuth: float = 45.0  # degrees, 0 looks from +x
    elevation: float = 20.0  # degrees, clamped to (-89, 89) so the up vector stays defined
    radius: float = 3.25  # world units
    fovy: float = 45.0  # degrees
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)


class OrbitView:
    """Mouse gestures -> orbit camera. Drag orbits, wheel zooms, right-drag pans; `reset()` goes home.

    Gestures are in screen pixels of the displayed viewport; the pan keeps the point under the cursor
    under the cursor (world units per pixel at the target's depth).
    """

    DEG_PER_PIXEL = 0.4
    ZOOM_PER_NOTCH = 0.9
    MIN_RADIUS, MAX_RADIUS = 0.2, 100.0

    def __init__(self, home: OrbitState, display: int):
        self.home = home
        self.display = display
        self.state = home

    @classmethod
    def for_config(cls, cfg, display: int) -> "OrbitView":
        """Home view framed like the training cameras: mid radius, mid fov, a 3/4 view from above."""
        cam = cfg.camera
        home = OrbitState(azimuth=45.0, elevation=min(max(sum(cam.elevation_deg) / 2, 10.0), 30.0),
                          radius=sum(cam.radius) / 2, fovy=sum(cam.fovy_deg) / 2)
        return cls(home, display)

    def orbit(self, dx: float, dy: float) -> None:
        """Drag by (dx, dy) pixels: the scene turns with the cursor."""
        s = self.state
        el = min(max(s.elevation + dy * self.DEG_PER_PIXEL, -89.0), 89.0)
        az = (s.azimuth - dx * self.DEG_PER_PIXEL + 180.0) % 360.0 - 180.0
        self.state = replace(s, azimuth=az, elevation=el)

    def zoom(self, notches: float) -> None:
        """Wheel up (positive) moves closer."""
        r = self.state.radius * self.ZOOM_PER_NOTCH ** notches
        self.state = replace(self.state, radius=min(max(r, self.MIN_RADIUS), self.MAX_RADIUS))

    def pan(self, dx: float, dy: float) -> None:
        """Right-drag by (dx, dy) pixels: the scene follows the cursor."""
        s = self.state
        world_per_px = 2.0 * s.radius * math.tan(math.radians(s.fovy) / 2) / self.display
        R = self.cameras(1)[0].viewmats[0, :3, :3].double()  # rows: camera right, down, forward in world
        shift = -(R[0] * dx + R[1] * dy) * world_per_px
        self.state = replace(s, target=tuple(float(t) for t in torch.tensor(s.target).double() + shift))

    def reset(self) -> None:
        self.state = self.home

    def cameras(self, size: int) -> Cameras:
        s = self.state
        return orbit(s.azimuth, s.elevation, s.radius, s.fovy, size, size, s.target)


def params_from_splats(splats: Splats, device: torch.device) -> renderers.GaussianParams:
    """The snapshot's numpy arrays as renderer input (no copy on the CPU)."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    return renderers.GaussianParams(means=t(splats.means), quats=t(splats.quats), scales=t(splats.scales),
                                    opacities=t(splats.opacities), sh=t(splats.sh))


def scene_key(splats: Splats) -> int:
    """A digest of the splat arrays: the worker publishes a new snapshot version every 1 / publish_hz
    even while paused, and an unchanged scene must not be rendered again."""
    key = 0
    for a in (splats.means, splats.quats, splats.scales, splats.opacities, splats.sh):
        key = zlib.crc32(np.ascontiguousarray(a).data, key)
    return key


class ViewportRenderer:
    """Renders the latest scene from the orbit view into an RGBA float buffer that a texture shows.

    `update(snapshot, view)` renders when the camera moved, or when the scene changed and `1 / max_hz`
    has passed since the last render (at once while paused: then it is a user's step or edit). While
    training or moving (a camera change less than SETTLE_S ago) it renders at `moving_size`, shown
    upscaled; paused and still, at `size`. The buffer [size * size * 4] float32 is rewritten in place:
    the texture keeps a pointer to it.
    """

    SETTLE_S = 0.25

    def __init__(self, settings: WindowSettings, renderer_kind: str):
        settings.validate()
        self.settings = settings
        self.renderer = renderers.make_renderer(renderer_kind)
        self.device = torch.device("cuda" if self.renderer.name == "gsplat" else "cpu")
        n = settings.size
        self.buffer = np.zeros(n * n * 4, dtype=np.float32)
        self.buffer[3::4] = 1.0
        self.buffer[0::4] = self.buffer[1::4] = self.buffer[2::4] = settings.background
        self._version = -1  # last snapshot version looked at
        self._latest: tuple[int, Splats] | None = None  # (scene key, splats) of the newest scene
        self._params: tuple[int, renderers.GaussianParams] | None = None
        self._drawn: tuple[int, OrbitState, int] | None = None  # (scene key, view, size) in the buffer
        self._view: tuple[OrbitState, float] | None = None  # the view last seen and when it changed
        self._last_render = -math.inf
        self.renders = 0
        self.last_ms = 0.0
        self.last_size = 0
        self.last_error: str | None = None

    def update(self, snapshot: Snapshot, view: OrbitView) -> bool:
        """Render if due; returns whether the buffer changed."""
        if snapshot.version != self._version and snapshot.splats is not None:
            self._version = snapshot.version
            key = scene_key(snapshot.splats)
            if self._latest is None or self._latest[0] != key:
                self._latest = (key, snapshot.splats)
        if self._latest is None:
            return False
        now = time.perf_counter()
        if self._view is None or self._view[0] != view.state:
            self._view = (view.state, now)
        still = now - self._view[1] >= self.SETTLE_S
        size = self.settings.size if snapshot.paused and still else self.settings.moving_size
        key, splats = self._latest
        if self._drawn is None:
            due = True
        else:
            drawn_key, drawn_view, drawn_size = self._drawn
            rate_ok = snapshot.paused or now - self._last_render >= 1.0 / self.settings.max_hz
            due = drawn_view != view.state or size > drawn_size or (drawn_key != key and rate_ok)
        if not due:
            return False
        if self._params is None or self._params[0] != key:
            self._params = (key, params_from_splats(splats, self.device))
        self.render_into(self._params[1], view.cameras(size))
        self._drawn = (key, view.state, size)
        self._last_render = now
        self.last_ms = (time.perf_counter() - now) * 1000.0
        return True

    def render_into(self, params: renderers.GaussianParams, cams: Cameras) -> None:
        """Render one camera (width = height, a divisor of size) and fill the buffer, upscaled by
        repeating pixels."""
        n = self.settings.size
        factor = n // cams.width
        bg = torch.full((1, 3), self.settings.background, device=self.device)
        try:
            with torch.no_grad():
                rgb = self.renderer(params, cams.to(self.device), bg).rgb[0]  # [H, W, 3]
        except (ValueError, RuntimeError) as e:  # a corrupt snapshot must not close the window
            self.last_error = f"viewport: {e}"
            return
        self.last_error = None
        out = self.buffer.reshape(n, n, 4)
        img = rgb.clamp(0, 1).float().cpu().numpy()  # [s, s, 3]
        out[..., :3] = img.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else img
        self.renders += 1
        self.last_size = cams.width
