"""The 3D scene and the live panel of the browser studio: splats, training frusta, grid, preview image
and metric plots. Everything here runs on the studio's UI thread and reads snapshots only; each
`update(snap)` sends just what changed, at a bounded rate.

Splat updates adapt to what the pages can draw. Each is 32 bytes per Gaussian per page and makes the
page re-sort and redraw, which a software-WebGL page on a small CPU machine does in about a second at
50k Gaussians: updates sent faster than that queue up in the page, and clicks and status updates
queue behind them (a Pause took minutes to show). So an update goes out only when the scene changed,
at most `view.splat_hz` a second, and once every page has answered a round trip sent after the last
update (SplatPacer); while training, a large scene is sent as its `view.live_splats` most opaque
Gaussians, and whole once paused. That cap also adapts: a round trip slower than TARGET_RTT_S (the page
answered behind a long frame) lowers it, down to MIN_LIVE_SPLATS; a fast one raises it back towards
`view.live_splats`; and after each answer the page gets as long again to itself before the next update.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import viser
import viser.transforms as vtf

from ..snapshot import Snapshot, Splats
from ..view import ViewSettings
from .common import PLOTS, Plot, plot_series

ACK_TIMEOUT_S = 15.0  # a page that does not answer within this is sent the next update anyway
TARGET_RTT_S = 0.4  # a round trip slower than this means the page is busy drawing: send fewer splats
MIN_LIVE_SPLATS = 1_000  # the adaptive cap never goes below this while training
FULL_AFTER_PAUSE_S = 1.0  # the whole scene goes out this long after a pause: the page shows the pause first

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


def live_subset(s: Splats, limit: int) -> Splats:
    """The `limit` most opaque Gaussians of s (all of them when limit is 0 or s has no more), in their
    original order. Opacity ranks what a viewer sees: the faint ones contribute least to the picture."""
    n = s.means.shape[0]
    if limit <= 0 or n <= limit:
        return s
    keep = np.sort(np.argpartition(-s.opacities.reshape(-1), limit - 1)[:limit])
    return Splats(means=s.means[keep], scales=s.scales[keep], quats=s.quats[keep], opacities=s.opacities[keep],
                  rgbs=s.rgbs[keep], sh=s.sh[keep])


class SplatPacer:
    """Knows whether every page has taken the last splat update.

    After each update a background thread asks each connected page for a value through viser's
    localStorage round trip: the page answers from its message handler, after the messages queued
    before the request (the update among them), so an answer means the page has caught up. A page that
    stays silent for ACK_TIMEOUT_S is not waited for longer (it gets the next update anyway).
    """

    def __init__(self, server: viser.ViserServer, timeout: float = ACK_TIMEOUT_S):
        self.server, self.timeout = server, timeout
        self._sent = self._answered = 0  # update counters: sent, and answered by every page
        self._sent_at = -math.inf
        self.last_rtt: float | None = None  # seconds from an update to the slowest page's answer
        self.answered_at = -math.inf
        self.answers = 0  # round trips completed (SceneView adapts its cap once per answer)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="studio-splat-pacer", daemon=True)
        self._thread.start()

    def sent(self) -> None:
        self._sent += 1
        self._sent_at = time.monotonic()
        self._wake.set()

    def ready(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._sent_at > self.timeout:
            return True
        idle = min(self.last_rtt or 0.0, 5.0)  # as long again to the page itself as its last answer took
        return self._answered >= self._sent and now - self.answered_at >= idle

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(2.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            seq, start = self._sent, self._sent_at
            for client in list(self.server.get_clients().values()):
                remaining = self.timeout - (time.monotonic() - start)
                if remaining <= 0:
                    break
                try:
                    client.local_storage.get_item("studio-splat-ack", timeout=remaining)
                except (RuntimeError, TimeoutError):
                    pass  # gone, or too slow: not waited for longer
            self.answered_at = time.monotonic()
            self.last_rtt = self.answered_at - start
            self._answered = max(self._answered, seq)
            self.answers += 1


class SceneView:
    """Splats, grid and training frusta in the viewport; re-sent only when they changed, at most
    `view.splat_hz` times a second, when the pages have taken the last update (see the module's doc)."""

    def __init__(self, server: viser.ViserServer, view: ViewSettings = ViewSettings()):
        self.server = server
        self.view = view  # the studio replaces it when the View folder changes a setting
        self.pacer = SplatPacer(server)
        self._last_splat_time = -math.inf
        self._last_splats: tuple[np.ndarray, ...] | None = None  # sent: means, scales, quats, rgbs, opacities
        self._source: tuple[np.ndarray, ...] | None = None  # the full scene those were taken from
        self.live_limit = view.live_splats  # the adaptive cap while training (<= view.live_splats)
        self._adapted = 0  # pacer answers already used to adapt live_limit
        self._paused_since: float | None = None
        self._splats: viser.GaussianSplatHandle | None = None
        self._frusta: list[viser.CameraFrustumHandle] = []
        self._last_cams: np.ndarray | None = None
        self.splat_sends = 0  # how many times the splat buffer went out (tests, benchmarks)
        self.show_frusta = True
        self.grid = server.scene.add_grid("/grid", width=6.0, height=6.0, plane="xy", cell_size=0.25,
                                          section_size=1.0, position=(0.0, 0.0, GRID_Z),
                                          cell_color=(215, 215, 220), section_color=(160, 160, 170))

    def stop(self) -> None:
        self.pacer.stop()

    def update(self, snap: Snapshot, now: float | None = None) -> None:
        """Send what changed in the 3D scene when due (see the class doc): every change makes the page
        re-sort and redraw the splats, so frusta move on the same beat as the splats."""
        now = time.monotonic() if now is None else now
        if now - self._last_splat_time < 1.0 / self.view.splat_hz or not self.pacer.ready(now):
            return
        if snap.splats is not None:
            self._adapt()
            if not snap.paused:
                self._paused_since = None
            elif self._paused_since is None:
                self._paused_since = now
            # A large update queued right behind the pause would keep the page drawing before it shows it.
            whole = snap.paused and now - self._paused_since >= FULL_AFTER_PAUSE_S
            limit = 0 if whole else self.live_limit
            full_changed = self._changed(self._source, snap.splats)
            partial = self._last_splats is not None and self._source is not None \
                and self._last_splats[0].shape[0] < self._source[0].shape[0]
            if full_changed or (partial and limit == 0) or self._over(limit):
                self._send_splats(snap.splats, limit)
                self._last_splat_time = now
        self._update_frusta(snap)

    def _adapt(self) -> None:
        """Lower the training-time cap after a slow round trip, raise it after a fast one."""
        ceiling = self.view.live_splats
        if ceiling <= 0:
            self.live_limit = 0
            return
        if self.live_limit <= 0 or self.live_limit > ceiling:
            self.live_limit = ceiling
        if self.pacer.answers == self._adapted or self.pacer.last_rtt is None:
            return
        self._adapted = self.pacer.answers
        rtt = self.pacer.last_rtt
        if rtt > TARGET_RTT_S:
            self.live_limit = max(min(MIN_LIVE_SPLATS, ceiling), int(self.live_limit * 0.6))
        elif rtt < TARGET_RTT_S / 3:
            self.live_limit = min(ceiling, int(self.live_limit * 1.5) + 1)

    def _over(self, limit: int) -> bool:
        """The last update holds more splats than `limit` allows now (the setting was lowered)."""
        return limit > 0 and self._last_splats is not None and self._last_splats[0].shape[0] > limit

    @staticmethod
    def _arrays(s: Splats) -> tuple[np.ndarray, ...]:
        return (s.means, s.scales, s.quats, s.rgbs, s.opacities)

    @classmethod
    def _changed(cls, old: tuple[np.ndarray, ...] | None, s: Splats) -> bool:
        return old is None or any(a.shape != b.shape or not np.array_equal(a, b)
                                  for a, b in zip(old, cls._arrays(s)))

    def _send_splats(self, full: Splats, limit: int) -> None:
        # Copies, read once: on CPU a snapshot's arrays may share memory with the live parameters, and
        # the arrays sent must be the arrays remembered.
        source = tuple(np.array(a, copy=True) for a in self._arrays(full))
        means, scales, quats, rgbs, opacities = source
        s = live_subset(Splats(means=means, scales=scales, quats=quats, opacities=opacities, rgbs=rgbs,
                               sh=full.sh), limit)
        key = self._arrays(s)
        cov = covariances(s.scales, s.quats)
        opa = s.opacities.reshape(-1, 1)  # [N, 1]
        if self._splats is None:
            self._splats = self.server.scene.add_gaussian_splats("/splats", centers=s.means, covariances=cov,
                                                                 rgbs=s.rgbs, opacities=opa)
        else:
            self._splats.set_gaussians(s.means, cov, s.rgbs, opa)
        self._last_splats, self._source = key, source  # set_gaussians copied what it needs
        self.splat_sends += 1
        self.pacer.sent()

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

    def __init__(self, server: viser.ViserServer, plot_hz: float = 2.0, image_hz: float = 2.0, mode: str = "rgb"):
        self.server = server
        self.mode = mode  # view.mode: which of the snapshot's previews the training view shows
        self.plot_period, self.image_period = 1.0 / plot_hz, 1.0 / image_hz
        self._last_plot = self._last_image = -math.inf
        self._image_iteration: tuple[int, str] | None = None  # (iteration, mode) shown
        self._plot_lengths: dict[str, tuple[int, int]] = {}  # metric -> (segment, points) last drawn
        self.caption = server.gui.add_markdown("**Training view**")
        self.image = server.gui.add_image(np.full((256, 256, 3), 255, np.uint8), format="jpeg", jpeg_quality=92)
        self.waiting = server.gui.add_markdown("*Plots of loss, gradient variance and PSNR appear after the "
                                               "first steps.*")
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
            visible=False,
        )

    @staticmethod
    def _title(plot: Plot, note: str = "") -> str:
        return (f"{plot.title} (log₁₀)" if plot.log_y else plot.title) + note

    def update(self, snap: Snapshot, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        shown = (snap.iteration, self.mode)
        if snap.preview is not None and shown != self._image_iteration \
                and now - self._last_image >= self.image_period:
            preview = snap.previews.get(self.mode, snap.preview)
            self.image.image = upscale(side_by_side(preview, snap.reference))
            self.caption.content = self._caption(snap, self.mode)
            self._image_iteration, self._last_image = shown, now
        if now - self._last_plot >= self.plot_period:
            self._last_plot = now
            for metric, (plot, handle) in self.plots.items():
                self._update_plot(snap, metric, plot, handle)

    @staticmethod
    def _caption(snap: Snapshot, mode: str = "rgb") -> str:
        title = "**Training view**" + ("" if mode == "rgb" else f" ({mode})")
        if snap.reference is None:
            return title
        psnr = snap.latest.get("psnr_ref")
        return title + " · nearest reference" + (f" ({psnr:.1f} dB)" if psnr is not None else "")

    def _update_plot(self, snap: Snapshot, metric: str, plot: Plot, handle: viser.GuiUplotHandle) -> None:
        n = len(snap.metrics.get(metric, ()))
        if (snap.segment, n) == self._plot_lengths.get(metric):
            return
        self._plot_lengths[metric] = (snap.segment, n)
        x, y = plot_series(snap, metric)
        if plot.log_y:  # zeros and negatives have no logarithm: drop them, and say so if that is all
            keep = y > 0
            handle.title = self._title(plot, "" if keep.any() or n == 0 else ": all zero so far")
            x, y = x[keep], np.log10(y[keep])
        # A chart drawn in the page before it had two points never draws a line (viser's client keeps
        # the x range it computed from no data), so it is shown from its second point on, and hidden
        # again when a new segment empties it: shown anew, the page builds it from the data it has.
        wanted = (snap.reference is not None or not plot.procedural_only) and x.shape[0] >= 2
        if wanted:
            handle.data = (x, y)
        handle.visible = wanted
        self.waiting.visible = not any(h.visible for _, h in self.plots.values())
