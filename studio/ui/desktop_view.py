"""The desktop viewport: an orbit camera the user drives and the renderer's image of the latest snapshot.

Threads: the UI thread decides when a render is due and posts a `RenderRequest` (the snapshot's splats,
the camera, the size, the render mode); a render thread of its own takes the newest request (latest
wins: one waiting at most), renders it and leaves the finished RGBA image for the UI thread, which only
copies it into the texture's buffer. So the window keeps drawing while a render runs, including the
first one, which waits for numba to compile (or load) the CPU rasterizer's kernels.

Nothing here touches the session's tensors: the image is rendered from the snapshot's numpy splat
arrays (shared with torch without a copy), under `no_grad`, by a renderer of the session's kind.
Renders are rate-bounded while training (the rasterizer holds both cores and the GIL while it runs, so
every viewport render is time the worker does not train): a new snapshot re-renders at most
`ViewSettings.max_hz`, a camera move (or a new mode or background) at once.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch

import renderers
from renderers.camera import Cameras, orbit

from ..render_modes import mode_image
from ..snapshot import Snapshot, Splats
from ..view import ViewSettings


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
        return orbit_cameras(self.state, size)


def orbit_cameras(state: OrbitState, size: int) -> Cameras:
    """One square camera of `size` pixels at `state`."""
    return orbit(state.azimuth, state.elevation, state.radius, state.fovy, size, size, state.target)


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


@dataclass(frozen=True)
class RenderRequest:
    """One viewport image to render: what the UI thread hands the render thread."""

    key: int  # scene_key(splats)
    splats: Splats
    view: OrbitState
    size: int  # render side in pixels (a divisor of the buffer's side)
    mode: str  # view.mode
    background: float  # grey level behind the Gaussians (rgb mode)

    def shows(self, other: "RenderRequest") -> bool:
        """Whether this image shows what `other` asks for, at least as sharp."""
        return (self.key, self.view, self.mode, self.background) == \
            (other.key, other.view, other.mode, other.background) and self.size >= other.size


@dataclass(frozen=True)
class Finished:
    request: RenderRequest
    image: np.ndarray | None  # [side, side, 4] float32 RGBA, None after an error
    ms: float
    error: str | None = None


def render_image(renderer, device: torch.device, params: renderers.GaussianParams, req: RenderRequest,
                 side: int) -> np.ndarray:
    """[side, side, 4] float32 RGBA of `req` in its mode, rendered at req.size and upscaled by repeating
    pixels (side is a multiple of req.size)."""
    factor = side // req.size
    assert factor * req.size == side, (side, req.size)
    bg = torch.full((1, 3), req.background, device=device)
    with torch.no_grad():
        out = renderer(params, orbit_cameras(req.view, req.size).to(device), bg)
        img = mode_image(out, req.mode).float().cpu().numpy()  # [s, s, 3]
    if factor > 1:
        img = img.repeat(factor, axis=0).repeat(factor, axis=1)
    rgba = np.ones((side, side, 4), dtype=np.float32)
    rgba[..., :3] = img
    return rgba


class ViewportRenderer:
    """The latest scene from the orbit view, rendered in a thread, into an RGBA float buffer that a
    texture shows.

    `update(snapshot, view)` (UI thread, every frame) posts a render when the camera, the mode or the
    background changed, or when the scene changed and `1 / max_hz` has passed since the last request (at
    once while paused: then it is a user's step or edit); it copies a finished image into `buffer` and
    returns whether it did. While training or moving (a camera change less than SETTLE_S ago) renders
    are `moving_size` pixels, shown upscaled; paused and still, `size`. The buffer [size * size * 4]
    float32 is rewritten in place: the texture keeps a pointer to it. `close()` ends the thread.
    """

    SETTLE_S = 0.25

    def __init__(self, settings: ViewSettings, renderer_kind: str):
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
        self._requested: RenderRequest | None = None  # the last request posted
        self._view: tuple[OrbitState, float] | None = None  # the view last seen and when it changed
        self._last_request = -math.inf
        self.renders = 0  # finished renders shown
        self.last_ms = 0.0
        self.last_size = 0
        self.last_error: str | None = None
        # Shared with the render thread, under _cond:
        self._cond = threading.Condition()
        self._pending: RenderRequest | None = None
        self._busy = False
        self._finished: Finished | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="viewport-render", daemon=True)
        self._thread.start()

    def configure(self, settings: ViewSettings) -> None:
        """New viewer settings (mode, background, max_hz take effect at the next update; the buffer's
        size stays)."""
        settings.validate()
        if (settings.size, settings.moving_size) != (self.settings.size, self.settings.moving_size):
            raise ValueError("view.size and view.moving_size are fixed while the window is open "
                             "(set them with --set view.size=... at launch)")
        self.settings = settings

    # ----- UI thread --------------------------------------------------------------------------------
    def update(self, snapshot: Snapshot, view: OrbitView) -> bool:
        """Post a render if one is due; returns whether a finished image was copied into the buffer."""
        if snapshot.version != self._version and snapshot.splats is not None:
            self._version = snapshot.version
            key = scene_key(snapshot.splats)
            if self._latest is None or self._latest[0] != key:
                self._latest = (key, snapshot.splats)
        if self._latest is not None:
            self._post_if_due(snapshot.paused, view.state)
        return self._collect()

    def _post_if_due(self, paused: bool, state: OrbitState) -> None:
        now = time.perf_counter()
        if self._view is None or self._view[0] != state:
            self._view = (state, now)
        still = now - self._view[1] >= self.SETTLE_S
        s = self.settings
        key, splats = self._latest
        req = RenderRequest(key, splats, state, s.size if paused and still else s.moving_size, s.mode,
                            s.background)
        last = self._requested
        if last is not None:
            if last.shows(req):
                return
            scene_only = replace(last, key=key, splats=splats).shows(req)  # only the scene is new
            if scene_only and not paused and now - self._last_request < 1.0 / s.max_hz:
                return
        with self._cond:
            self._pending = req  # a request not yet taken is replaced: latest wins
            self._cond.notify()
        self._requested, self._last_request = req, now

    def _collect(self) -> bool:
        with self._cond:
            done, self._finished = self._finished, None
        if done is None:
            return False
        self.last_ms, self.last_error = done.ms, done.error
        if done.image is None:
            return False
        np.copyto(self.buffer.reshape(done.image.shape), done.image)
        self.renders += 1
        self.last_size = done.request.size
        return True

    @property
    def compiling(self) -> bool:
        """The first render was asked for and has not finished (numba compiles the kernels then)."""
        return self.renders == 0 and self.last_error is None and self._requested is not None

    def idle(self) -> bool:
        """Nothing waits, renders or is left to collect."""
        with self._cond:
            return self._pending is None and not self._busy and self._finished is None

    def wait(self, timeout: float = 60.0) -> bool:
        """Block until the render thread has finished what was posted (tests, benchmarks); the next
        `update` collects it. Returns False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    @property
    def running(self) -> bool:
        """Whether the render thread is alive (until `close`)."""
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the render thread (a render in progress finishes first). Returns whether it ended."""
        with self._cond:
            self._stop = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----- render thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        params: tuple[int, renderers.GaussianParams] | None = None  # this thread's copy of the scene
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending is not None)
                if self._stop:
                    return
                req, self._pending, self._busy = self._pending, None, True
            t0 = time.perf_counter()
            image, error = None, None
            try:
                if params is None or params[0] != req.key:
                    params = (req.key, params_from_splats(req.splats, self.device))
                image = render_image(self.renderer, self.device, params[1], req, self.settings.size)
            except (ValueError, RuntimeError) as e:  # a corrupt snapshot must not end the viewport
                error = f"viewport: {e}"
            except Exception as e:  # noqa: BLE001 -- shown in the window and printed: the thread goes on
                traceback.print_exc(file=sys.stderr)
                error = f"viewport: {type(e).__name__}: {e}"
            done = Finished(req, image, (time.perf_counter() - t0) * 1000.0, error)
            with self._cond:
                self._finished, self._busy = done, False
                self._cond.notify_all()
