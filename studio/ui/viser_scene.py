"""The 3D scene and the live panel of the browser studio: splats, training frusta, grid, preview image
and metric plots. Everything here runs on the studio's UI thread and reads snapshots only; each
`update(snap)` sends just what changed, at a bounded rate."""

from __future__ import annotations

import math
import time

import numpy as np
import viser
import viser.transforms as vtf

from ..snapshot import Snapshot, Splats
from .common import PLOTS, Plot, plot_series

GRID_Z = -0.62  # just under the procedural objects (they span [-0.6, 0.6]^3), so the grid reads as floor
SERIES_COLOURS = ("#4263eb", "#e8590c", "#2b8a3e")


def covariances(scales: np.ndarray, quats: np.ndarray) -> np.ndarray:
    """Σ = R diag(s)² Rᵀ per Gaussian.

    Args:
        scales: [N, 3] activated standard deviations along the local axes.
        quats: [N, 4] unit quaternions, wxyz.
    Returns:
        [N, 3, 3] float32 covariances.
    """
    N = scales.shape[0]
    assert scales.shape == (N, 3), f"scales must be [N, 3], got {scales.shape}"
    assert quats.shape == (N, 4), f"quats must be [N, 4] wxyz, got {quats.shape}"
    w, x, y, z = (quats[:, i].astype(np.float64) for i in range(4))
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(N, 3, 3)  # [N, 3, 3]
    M = R * scales.astype(np.float64)[:, None, :]  # R diag(s): column j scaled by s_j
    return (M @ M.transpose(0, 2, 1)).astype(np.float32)


def camera_to_world(viewmat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz [4], position [3]) of an OpenCV camera from its world-to-camera matrix [4, 4]."""
    assert viewmat.shape == (4, 4), f"viewmat must be [4, 4], got {viewmat.shape}"
    R_wc = viewmat[:3, :3].astype(np.float64).T
    position = -R_wc @ viewmat[:3, 3].astype(np.float64)
    return vtf.SO3.from_matrix(R_wc).wxyz, position


def upscale(img: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor so a 32 px view stays crisp in the page.

    Args:
        img: [H, W, 3] uint8.
    """
    factor = max(1, math.ceil(min_size / max(img.shape[0], 1)))
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1) if factor > 1 else img


def side_by_side(left: np.ndarray, right: np.ndarray | None, gap: int = 4) -> np.ndarray:
    """[H, W, 3] uint8 images next to each other with a white gap (right resized to left's height)."""
    if right is None:
        return left
    if right.shape[0] != left.shape[0]:
        idx = np.arange(left.shape[0]) * right.shape[0] // left.shape[0]
        right = right[idx][:, idx]
    spacer = np.full((left.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


class SceneView:
    """Splats, grid and training frusta in the viewport; re-sent at most `splat_hz` times a second and
    only when they changed."""

    def __init__(self, server: viser.ViserServer, splat_hz: float = 2.0):
        self.server = server
        self.splat_period = 1.0 / splat_hz
        self._last_splat_time = -math.inf
        self._last_splats: tuple[np.ndarray, ...] | None = None  # sent: means, scales, quats, rgbs, opacities
        self._splats: viser.GaussianSplatHandle | None = None
        self._frusta: list[viser.CameraFrustumHandle] = []
        self._last_cams: np.ndarray | None = None
        self.splat_sends = 0  # how many times the splat buffer went out (tests, benchmarks)
        self.show_frusta = True
        self.grid = server.scene.add_grid("/grid", width=6.0, height=6.0, plane="xy", cell_size=0.25,
                                          section_size=1.0, position=(0.0, 0.0, GRID_Z),
                                          cell_color=(215, 215, 220), section_color=(160, 160, 170))

    def update(self, snap: Snapshot, now: float | None = None) -> None:
        """Send what changed in the 3D scene, at most `splat_hz` times a second: every change makes the
        page re-sort and redraw the splats, so frusta move on the same beat as the splats."""
        now = time.monotonic() if now is None else now
        if now - self._last_splat_time < self.splat_period:
            return
        if snap.splats is not None and self._splats_changed(snap.splats):
            self._send_splats(snap.splats)
            self._last_splat_time = now
        self._update_frusta(snap)

    @staticmethod
    def _key(s: Splats) -> tuple[np.ndarray, ...]:
        # Copies: on CPU a snapshot's arrays may share memory with the live parameters.
        return tuple(np.array(a, copy=True) for a in (s.means, s.scales, s.quats, s.rgbs, s.opacities))

    def _splats_changed(self, s: Splats) -> bool:
        old = self._last_splats
        new = (s.means, s.scales, s.quats, s.rgbs, s.opacities)
        return old is None or any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(old, new))

    def _send_splats(self, s: Splats) -> None:
        key = self._key(s)  # read once: the arrays sent are the arrays remembered
        means, scales, quats, rgbs, opacities = key
        s = Splats(means=means, scales=scales, quats=quats, opacities=opacities, rgbs=rgbs, sh=s.sh)
        cov = covariances(s.scales, s.quats)
        opa = s.opacities.reshape(-1, 1)  # [N, 1]
        if self._splats is None:
            self._splats = self.server.scene.add_gaussian_splats("/splats", centers=s.means, covariances=cov,
                                                                 rgbs=s.rgbs, opacities=opa)
        else:
            self._splats.set_gaussians(s.means, cov, s.rgbs, opa)
        self._last_splats = key  # set_gaussians copied what it needs; nothing writes to these arrays
        self.splat_sends += 1

    def set_frusta_visible(self, visible: bool) -> None:
        self.show_frusta = visible
        for f in self._frusta:
            f.visible = visible

    def _update_frusta(self, snap: Snapshot) -> None:
        cams = snap.cameras
        if cams is None or not self.show_frusta:
            return
        viewmats = cams["viewmats"]  # [B, 4, 4]
        if self._last_cams is not None and np.array_equal(self._last_cams, viewmats):
            return
        self._last_cams = viewmats
        B = viewmats.shape[0]
        if len(self._frusta) != B:
            for f in self._frusta:
                f.remove()
            self._frusta = []
        width, height = int(cams["width"]), int(cams["height"])
        for b in range(B):
            fy = float(cams["Ks"][b, 1, 1])
            fov = 2.0 * math.atan(0.5 * height / fy)
            wxyz, pos = camera_to_world(viewmats[b])
            if b < len(self._frusta):
                f = self._frusta[b]
                f.wxyz, f.position, f.fov = wxyz, pos, fov
            else:
                self._frusta.append(self.server.scene.add_camera_frustum(
                    f"/cameras/{b}", fov=fov, aspect=width / height, scale=0.22, thickness=0.012,
                    color=(66, 99, 235), wxyz=wxyz, position=pos))
        if snap.preview is not None and self._frusta:
            self._frusta[0].image = snap.preview


class LiveView:
    """The live tab: the current training view (with the nearest reference beside it) and uPlot charts."""

    def __init__(self, server: viser.ViserServer, plot_hz: float = 2.0, image_hz: float = 2.0):
        self.server = server
        self.plot_period, self.image_period = 1.0 / plot_hz, 1.0 / image_hz
        self._last_plot = self._last_image = -math.inf
        self._image_iteration = -1
        self._plot_lengths: dict[str, tuple[int, int]] = {}  # metric -> (segment, points) last drawn
        self.caption = server.gui.add_markdown("**Training view**")
        self.image = server.gui.add_image(np.full((256, 256, 3), 255, np.uint8), format="jpeg", jpeg_quality=92)
        self.plots: dict[str, tuple[Plot, viser.GuiUplotHandle]] = {}
        for i, plot in enumerate(PLOTS):
            self.plots[plot.metric] = (plot, self._add_plot(plot, SERIES_COLOURS[i % len(SERIES_COLOURS)]))

    def _add_plot(self, plot: Plot, colour: str) -> viser.GuiUplotHandle:
        # A log metric is drawn as log10 on a linear axis: uPlot's log axis draws a grid line at every
        # 2..9 x 10^k, which over several decades in a narrow panel turns into grey bands.
        return self.server.gui.add_uplot(
            (np.zeros(0), np.zeros(0)),
            ({"label": "step"}, {"label": plot.metric, "stroke": colour, "width": 1.5, "points": {"show": False}}),
            title=self._title(plot),
            scales={"x": {"time": False, "auto": True}, "y": {"auto": True}},
            axes=({"size": 30}, {"size": 46}),
            padding=(12, 18, 0, 0),  # room for the top tick label
            legend={"show": False},
            aspect=2.2,
        )

    @staticmethod
    def _title(plot: Plot, note: str = "") -> str:
        return (f"{plot.title} (log₁₀)" if plot.log_y else plot.title) + note

    def update(self, snap: Snapshot, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if snap.preview is not None and snap.iteration != self._image_iteration \
                and now - self._last_image >= self.image_period:
            self.image.image = upscale(side_by_side(snap.preview, snap.reference))
            self.caption.content = self._caption(snap)
            self._image_iteration, self._last_image = snap.iteration, now
        if now - self._last_plot >= self.plot_period:
            self._last_plot = now
            for metric, (plot, handle) in self.plots.items():
                self._update_plot(snap, metric, plot, handle)

    @staticmethod
    def _caption(snap: Snapshot) -> str:
        if snap.reference is None:
            return "**Training view**"
        psnr = snap.latest.get("psnr_ref")
        return "**Training view** · nearest reference" + (f" ({psnr:.1f} dB)" if psnr is not None else "")

    def _update_plot(self, snap: Snapshot, metric: str, plot: Plot, handle: viser.GuiUplotHandle) -> None:
        n = len(snap.metrics.get(metric, ()))
        has_ref = snap.reference is not None
        handle.visible = has_ref or not plot.procedural_only
        if (snap.segment, n) == self._plot_lengths.get(metric):
            return
        self._plot_lengths[metric] = (snap.segment, n)
        x, y = plot_series(snap, metric)
        if plot.log_y:  # zeros and negatives have no logarithm: drop them, and say so if that is all
            keep = y > 0
            handle.title = self._title(plot, "" if keep.any() or n == 0 else ": all zero so far")
            x, y = x[keep], np.log10(y[keep])
        handle.data = (x, y)
