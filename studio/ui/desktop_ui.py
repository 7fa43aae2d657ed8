"""The desktop studio: a DearPyGui window with the renderer's view of the scene, the control panel
generated from `studio/controls.py`, live plots, and keyboard shortcuts.

    python app.py --ui desktop

`open_window(session)` blocks until the window closes. `DesktopStudio(session)` is the same window
driven one `frame()` at a time (tests, benchmarks); one per process (GLFW on X11 does not survive
being terminated and initialized again). Threads: left alone, DearPyGui 2 runs callbacks on a thread of
its own, racing `frame()`; here they are queued (manual callback management) and run inside `frame()` on
the main thread, so the view state needs no lock. They only send commands, never touch the session's
tensors. The viewport is rendered from the snapshot's numpy arrays by a render thread of its own
(desktop_view.py): the UI thread posts requests and uploads finished images, so the window keeps
drawing while a render (or the first one's kernel compilation) runs. Closing stops the render thread and
the worker and writes a checkpoint when the scene changed since the last one, so nothing is lost.

Layout (recomputed whenever the window's size changes, `layout_widths`): the left column holds the
transport line, the messages (newest first, always in view at the top) and the viewport, which shrinks
to fit what is left (up to view.display); the middle column the panel (scrolling); the right the plots.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections import deque
from pathlib import Path

import dearpygui.dearpygui as dpg
import numpy as np

from .. import commands as C
from ..session import Session
from ..snapshot import Event, Snapshot
from ..startup import display_problem, headless_message  # noqa: F401 -- checked at start-up, and here
from ..view import ViewSettings
from . import common
from .desktop_panel import LEVEL_COLOUR, Panel, disabled_theme
from .desktop_view import OrbitView, ViewportRenderer

HINT = "drag: orbit · wheel: zoom · right-drag: pan · space: pause/resume · s: step · e: export PLY · r: reset view"
COMPILING = "compiling the renderer… (first render only)"
LOG_LINES = 8  # messages kept (newest first, the area scrolls)
PAD, SPACING = 8, 8  # DearPyGui's window padding and horizontal item spacing
LINE_H = 21  # a text line and the vertical spacing after it at FONT_SIZE
MESSAGES_MIN, MESSAGES_MAX = 3 * LINE_H + 2 * PAD, 5 * LINE_H + 2 * PAD  # message area heights: rows in view
MIN_VIEW, MIN_WIDTH, MIN_HEIGHT = 96, 900, 560
FONT_SIZE = 14
FONT_CANDIDATES = (  # a font with Greek (δT, μ) and typographic dashes; DearPyGui's own has neither
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/segoeui.ttf",
)
IDLE_AFTER_S = 1.0  # seconds without input before the window drops to idle_fps
PLOT_HZ = 2.0  # plot redraws per second while training


def font_file() -> Path | None:
    """The first font of FONT_CANDIDATES (or matplotlib's DejaVu Sans) that exists here, else None."""
    paths = [Path(p) for p in FONT_CANDIDATES]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        paths.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    return next((p for p in paths if p.is_file()), None)


def layout_widths(width: int) -> tuple[int, int, int]:
    """(left column, panel, plots) widths in pixels for a window `width` pixels wide: the panel keeps
    room for its inputs and labels, the plots a readable width, the viewport column the rest."""
    usable = width - 2 * PAD - 2 * SPACING
    panel = int(min(max(0.30 * usable, 330), 400))
    plots = int(min(max(0.28 * usable, 230), 420))
    return usable - panel - plots, panel, plots


def open_window(session: Session, settings: ViewSettings = ViewSettings(),
                stop: threading.Event | None = None) -> int:
    """Open the studio window, start training, block until the window is closed (or `stop` is set: Ctrl-C
    / SIGTERM, see studio.signals). Returns the exit code (2 without a display, after one line on stderr)."""
    problem = display_problem()
    if problem is not None:
        print(headless_message(problem), file=sys.stderr)
        return 2
    studio = DesktopStudio(session, settings)
    try:
        session.send(C.Resume())
        session.start()
        while dpg.is_dearpygui_running() and not (stop is not None and stop.is_set()):
            studio.frame()
            studio.pace()
    except KeyboardInterrupt:  # Ctrl-C in the terminal closes the window like its close button
        pass
    finally:
        saved = studio.close()
    if saved is not None:
        print(f"checkpoint written on close: {saved}")
    return 0


class DesktopStudio:
    """The window's pieces. Tests drive it: `frame()`, `panel` (desktop_panel.Panel), `view` (OrbitView),
    `viewport` (ViewportRenderer), `log_lines` (the message area, newest first), `render_info`,
    `set_view(settings)`, `grab()` (the window's pixels), `close()`."""

    def __init__(self, session: Session, settings: ViewSettings = ViewSettings(), *,
                 width: int = 1280, height: int = 800):
        settings.validate()
        self.session = session
        self.settings = settings
        cfg = session.config
        self.view = OrbitView.for_config(cfg, settings.display)  # display: the side shown, see _fit
        self.viewport = ViewportRenderer(settings, cfg.render.renderer)
        snap = session.snapshot
        self.events = common.EventTracker(snap)
        self.frame_ms: deque[float] = deque(maxlen=600)
        self._seen_version = -1
        self._plotted, self._last_plot = (0, -1), -float("inf")  # (segment, iteration) and time last plotted
        self._buttons_down = {dpg.mvMouseButton_Left: False, dpg.mvMouseButton_Right: False}
        self._drag = dict.fromkeys(self._buttons_down, False)
        self._mouse = (0.0, 0.0)
        self._last_frame = self._last_input = time.perf_counter()
        self._log: deque[tuple[str, str]] = deque(maxlen=LOG_LINES)
        self._closed = False
        self._client = (0, 0)  # window size the layout was made for
        self._side = 0  # viewport side on screen
        self._title = snap.prompt
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        dpg.create_viewport(title=common.window_title(snap.prompt), width=width, height=height,
                            min_width=MIN_WIDTH, min_height=MIN_HEIGHT)
        self._build()
        dpg.setup_dearpygui()
        dpg.show_viewport()

    # ----- layout -----------------------------------------------------------------------------------
    def _build(self) -> None:
        n = self.settings.size
        path = font_file()
        if path is not None:
            with dpg.font_registry():
                font = dpg.add_font(str(path), FONT_SIZE)  # glyph ranges load on demand (DearPyGui 2)
            dpg.bind_font(font)
        dpg.bind_theme(disabled_theme())
        with dpg.texture_registry():
            self.texture = dpg.add_raw_texture(n, n, self.viewport.buffer, format=dpg.mvFormat_Float_rgba)
        with dpg.window(tag="studio") as self.window:
            with dpg.group(horizontal=True):
                with dpg.child_window(border=False) as self.left:
                    self.status = dpg.add_text("")
                    self.progress = dpg.add_progress_bar(width=-1)
                    with dpg.child_window(height=MESSAGES_MIN, border=True) as self.messages:
                        self.log_lines = [dpg.add_text("", show=False) for _ in range(LOG_LINES)]
                    self.image = dpg.add_image(self.texture, width=self.settings.display,
                                               height=self.settings.display)
                    self.hint = dpg.add_text(HINT)
                    with dpg.group(horizontal=True) as self.info_row:
                        self.reset_view = dpg.add_button(label="Reset view",
                                                         callback=lambda s, a, u=None: self.view.reset())
                        self.render_info = dpg.add_text("")
                with dpg.child_window(border=False) as self.panel_window:
                    self.panel = Panel(self.session, self.message, lambda: self.settings, self.set_view)
                with dpg.child_window(width=-1, border=False):
                    self.plots = self._build_plots()
        self.panel.build_dialogs()
        dpg.set_primary_window(self.window, True)
        with dpg.handler_registry():
            dpg.add_mouse_wheel_handler(callback=self._on_wheel)
            for key, action in ((dpg.mvKey_Spacebar, "toggle"), (dpg.mvKey_S, "step"),
                                (dpg.mvKey_E, "export"), (dpg.mvKey_R, "view")):
                dpg.add_key_press_handler(key=key, callback=self._on_key, user_data=action)

    def _build_plots(self) -> dict[str, tuple[int | str, int | str, bool]]:
        """One plot per common.PLOTS entry: {metric: (plot, line series, log y)}."""
        procedural = self.session.config.prior.model == "procedural"
        wanted = [p for p in common.PLOTS if procedural or not p.procedural_only]
        out = {}
        for p in wanted:
            with dpg.plot(label=p.title, height=200, width=-1) as plot:
                dpg.add_plot_axis(dpg.mvXAxis, label="step", auto_fit=True)
                scale = dpg.mvPlotScale_Log10 if p.log_y else dpg.mvPlotScale_Linear
                with dpg.plot_axis(dpg.mvYAxis, scale=scale, auto_fit=True):
                    series = dpg.add_line_series([], [], label=p.metric)
            out[p.metric] = (plot, series, p.log_y)
        return out

    def _fit(self) -> None:
        """Columns, wraps and plot heights for the window's size; the viewport's side for the height
        its column has left (measured from the last frame's items, so wrapped text counts)."""
        w, h = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        if (w, h) != self._client:
            self._client = (w, h)
            left, panel, _ = layout_widths(w)
            dpg.configure_item(self.left, width=left)
            dpg.configure_item(self.panel_window, width=panel)
            for item in (self.status, self.hint, *self.log_lines):
                dpg.configure_item(item, wrap=left - 2 * PAD)
            plot_h = (h - 2 * PAD - (len(self.plots) - 1) * 4) // max(1, len(self.plots))
            for plot, _, _ in self.plots.values():
                dpg.configure_item(plot, height=max(120, plot_h))
        left = layout_widths(w)[0]
        # Heights above the view (transport line, messages) and below it (hint, info row), as last drawn;
        # the view takes what is left, the message area any height the view cannot use (up to a limit).
        used = (dpg.get_item_rect_min(self.image)[1] - dpg.get_item_rect_min(self.status)[1]) + \
            (dpg.get_item_rect_max(self.reset_view)[1] - dpg.get_item_rect_max(self.image)[1])
        messages = dpg.get_item_height(self.messages)
        room = h - 3 * PAD - (used - messages)  # for the messages and the view (a margin: no scroll bar)
        side = int(max(MIN_VIEW, min(self.settings.display, left - 2 * PAD, room - MESSAGES_MIN)))
        grown = int(min(max(room - side, MESSAGES_MIN), MESSAGES_MAX))
        if grown != messages:
            dpg.configure_item(self.messages, height=grown)
        if side != self._side:
            self._side = side
            dpg.configure_item(self.image, width=side, height=side)
            self.view.display = side

    def set_view(self, settings: ViewSettings) -> None:
        """New viewer settings from the View folder (validated there): the next render uses them."""
        self.viewport.configure(settings)
        self.settings = settings
        self.mark_input()

    # ----- one frame --------------------------------------------------------------------------------
    def frame(self) -> None:
        """Run queued callbacks, follow the mouse and the session, draw one frame."""
        t0 = time.perf_counter()
        dpg.run_callbacks(dpg.get_callback_queue())
        self.panel.commit_pending()
        self._poll_mouse()
        snap = self.session.snapshot
        if snap.version != self._seen_version:
            self._on_snapshot(snap)
        self.panel.sync(snap)
        self._fit()
        if self.viewport.update(snap, self.view):
            dpg.set_value(self.texture, self.viewport.buffer)
        self._show_render_info()
        dpg.render_dearpygui_frame()
        self.frame_ms.append((time.perf_counter() - t0) * 1000.0)

    def _show_render_info(self) -> None:
        vp = self.viewport
        if vp.compiling:
            text, level = COMPILING, "warning"
        elif vp.last_error:
            text, level = vp.last_error, "error"
        else:
            text, level = (f"view {vp.last_size} px, {vp.last_ms:.0f} ms", "info") if vp.renders else ("", "info")
        if dpg.get_value(self.render_info) != text:
            dpg.set_value(self.render_info, text)
            dpg.configure_item(self.render_info, color=LEVEL_COLOUR[level] if level != "info" else (200, 200, 200))

    def pace(self) -> None:
        """Sleep out the rest of the frame budget so the window leaves the CPU to training: 1 / fps
        within a second of the last input, 1 / idle_fps after."""
        interacting = time.perf_counter() - self._last_input < IDLE_AFTER_S
        budget = 1.0 / (self.settings.fps if interacting else self.settings.idle_fps)
        spare = budget - (time.perf_counter() - self._last_frame)
        if spare > 0:
            time.sleep(spare)
        self._last_frame = time.perf_counter()

    def mark_input(self) -> None:
        """The user did something: draw at the interactive fps for the next second."""
        self._last_input = time.perf_counter()

    def _on_snapshot(self, snap: Snapshot) -> None:
        self._seen_version = snap.version
        dpg.set_value(self.status, common.status_line(snap))
        dpg.set_value(self.progress, common.progress_percent(snap) / 100.0)
        dpg.configure_item(self.progress, overlay=f"{common.progress_percent(snap):.0f} %")
        for event in self.events.new(snap):
            self._on_event(event, snap)
        if snap.prompt != self._title:  # a prompt applied here, by a load, by the known-prompt picker
            self._title = snap.prompt
            dpg.set_viewport_title(common.window_title(snap.prompt))
        now = time.perf_counter()
        drawn = (snap.segment, snap.iteration)
        if drawn != self._plotted and (snap.paused or now - self._last_plot >= 1.0 / PLOT_HZ):
            self._update_plots(snap)
            self._plotted, self._last_plot = drawn, now

    def _update_plots(self, snap: Snapshot) -> None:
        """Redraw the curves (a long history takes milliseconds to convert: at most PLOT_HZ while training)."""
        for metric, (_, series, log_y) in self.plots.items():
            xs, ys = common.plot_series(snap, metric)
            if log_y:  # a log axis cannot show 0 (grad_var of a batch of one camera)
                xs, ys = xs[ys > 0], ys[ys > 0]
            dpg.set_value(series, [xs.tolist(), ys.tolist()])

    def _on_event(self, event: Event, snap: Snapshot) -> None:
        where = f" -> {event.path}" if event.path else ""
        self.message(event.level, event.text + where)

    def message(self, level: str, text: str) -> None:
        """Show a message at the top of the message area (newest first, older ones dimmed); refusals,
        confirmations and the session's events arrive here."""
        self._log.appendleft((level, text))
        lines = list(self._log) + [("info", "")] * (LOG_LINES - len(self._log))
        for i, (item, (lvl, txt)) in enumerate(zip(self.log_lines, lines)):
            dpg.set_value(item, txt)
            r, g, b = LEVEL_COLOUR.get(lvl, LEVEL_COLOUR["info"])
            dpg.configure_item(item, color=(r, g, b, 255 if i == 0 else 150), show=bool(txt))
        dpg.set_y_scroll(self.messages, 0.0)

    # ----- input ------------------------------------------------------------------------------------
    def _poll_mouse(self) -> None:
        """Left-drag orbits, right-drag pans, for drags that began over the viewport image."""
        x, y = dpg.get_mouse_pos(local=False)
        dx, dy = x - self._mouse[0], y - self._mouse[1]
        if dx or dy or any(self._buttons_down.values()) or self.panel.typing():
            self.mark_input()
        for button, was_down in self._buttons_down.items():
            down = dpg.is_mouse_button_down(button)
            if down and not was_down:
                self._drag[button] = bool(dpg.is_item_hovered(self.image))
            elif down and self._drag[button] and (dx or dy):
                (self.view.orbit if button == dpg.mvMouseButton_Left else self.view.pan)(dx, dy)
            self._buttons_down[button] = down
        self._mouse = (x, y)

    def _on_wheel(self, sender, notches, user_data=None) -> None:
        self.mark_input()
        if dpg.is_item_hovered(self.image):
            self.view.zoom(float(notches))

    def _on_key(self, sender, key, action: str) -> None:
        self.mark_input()
        if self.panel.typing():
            return
        snap = self.session.snapshot
        if action == "view":
            self.view.reset()
            return
        if action == "toggle":  # the transport button that does something in this state
            button = {"running": "pause", "done": "continue"}.get(common.session_state(snap), "resume")
        else:
            button = {"step": "step", "export": "export:ply"}[action]
        self.panel.send_all(common.button_commands(button, snap))

    # ----- pixels and closing -----------------------------------------------------------------------
    def grab(self, max_frames: int = 20) -> np.ndarray:
        """The window's pixels after the next frame: [H, W, 4] float32 in [0, 1] (DearPyGui's
        output_frame_buffer)."""
        box: dict[str, object] = {}
        dpg.output_frame_buffer(callback=lambda s, buf, u=None: box.__setitem__("buf", buf))
        for _ in range(max_frames):
            self.frame()
            dpg.run_callbacks(dpg.get_callback_queue())
            if "buf" in box:
                buf = box["buf"]
                return np.array(buf, dtype=np.float32).reshape(buf.get_height(), buf.get_width(), 4)
        raise RuntimeError(f"output_frame_buffer gave no pixels in {max_frames} frames")

    def checkpoint_due(self) -> bool:
        """Whether the scene changed since it was last saved or loaded (closing would write one)."""
        return self.session.checkpoint_due()

    def close(self) -> Path | None:
        """Stop the worker, write a checkpoint if the scene changed since the last one, close the window.
        Returns the checkpoint written, if any. One window per process: GLFW on X11 does not survive
        being terminated and initialized again."""
        if self._closed:
            return None
        self._closed = True
        try:
            if not self.viewport.close():
                print("warning: the viewport's render did not finish in time", file=sys.stderr)
            self.session.stop()
            if self.session.running:
                print("warning: the training step did not finish in time; no checkpoint written on close",
                      file=sys.stderr)
                return None
            try:
                return self.session.save_if_due()
            except OSError as e:
                print(f"error: the checkpoint could not be written on close: {e}", file=sys.stderr)
                return None
        finally:
            dpg.destroy_context()
