"""The desktop studio in a real DearPyGui window under Xvfb (Debian xvfb + Mesa).

Widgets are driven the way a user's edits reach the app (set the widget's value, then what DearPyGui
calls: its callback, or for a widget that commits on release its deactivated-after-edit handler); the
mouse and keys go through the X server itself (XTest), so DearPyGui sees real events (ctrl+click typing
into a slider, drags, Enter). Every check is on the session (what the user's action did, the commands
it received) or on the window's own pixels (output_frame_buffer). The viewport renders in a thread of
its own: tests wait for it (`rendered`, `settle`) before looking at its image.

One window serves the whole module, as in the app (one per process): GLFW on X11 cannot be terminated
and initialized again reliably (the second window crashed in ImGui's cursor-enter callback about one
run in two), so the window tests share it and run in file order, the closing test last.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

dpg = pytest.importorskip("dearpygui.dearpygui")

import renderers  # noqa: E402
import studio.commands as C  # noqa: E402
from studio.config import default_config, with_values  # noqa: E402
from studio.confio import ConfigError  # noqa: E402
from studio.controls import all_controls, items_of  # noqa: E402
from studio.export import load_checkpoint  # noqa: E402
from studio.render_modes import mode_image  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui import desktop_ui  # noqa: E402
from studio.ui.common import prompt_applied_text, widget_value, window_title  # noqa: E402
from studio.ui.desktop_ui import DesktopStudio, display_problem, layout_widths  # noqa: E402
from studio.ui.desktop_view import OrbitView, params_from_splats  # noqa: E402
from studio.view import ViewSettings, with_view_values  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"render.resolution": 32, "render.batch": 1, "init.num": 300, "run.psnr_every": 2,
         "densify.enabled": False}
WINDOW = ViewSettings(size=64, moving_size=32, display=256)
SCREEN = (1600, 1000)  # the Xvfb screen: room for the 1280 x 800 window at its default position


def _free_display() -> int:
    for n in range(60, 400):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number in 60..399")


def _die_with_parent() -> None:
    """Xvfb gets SIGTERM when this test process dies, even by a crash that skips fixture teardown."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM


@pytest.fixture(scope="module")
def xdisplay():
    """A private Xvfb server; DISPLAY points at it for the module's tests."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install -y xvfb libgl1 libgl1-mesa-dri, "
                    "or scripts/system_deps.sh)")
    n = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{n}"
    try:
        deadline = time.monotonic() + 15
        while display_problem() is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb :{n} did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        yield f":{n}"
    finally:
        if old is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = old
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def window(xdisplay, tmp_path_factory):
    """(studio, session): the window over a running worker, paused, with the procedural prior."""
    session = Session(with_values(default_config("sds"), SMALL), tmp_path_factory.mktemp("desktop") / "out",
                      paused=True)
    studio = DesktopStudio(session, WINDOW)
    session.start()
    yield studio, session
    studio.close()
    session.stop()


def user_sets(item, value) -> None:
    """What a user's edit does: the widget takes the value, then DearPyGui calls its callback, or for a
    widget that commits on release (no callback), the deactivated-after-edit handler bound to it."""
    dpg.set_value(item, value)
    callback = dpg.get_item_callback(item)
    if callback is not None:
        callback(item, dpg.get_value(item), dpg.get_item_user_data(item))
        return
    registry = dpg.get_item_info(item)["handlers"]
    assert registry, f"{dpg.get_item_label(item)}: neither a callback nor a release handler"
    for handler in dpg.get_item_children(registry, 1):
        dpg.get_item_callback(handler)(handler, item, None)


def user_clicks(item) -> None:
    dpg.get_item_callback(item)(item, None, dpg.get_item_user_data(item))


def frames(st: DesktopStudio, n: int = 3) -> None:
    for _ in range(n):
        st.frame()


def refusal(session: Session, cmd: C.Command) -> str:
    with pytest.raises(C.CommandError) as e:
        session.send(cmd)
    return str(e.value)


def shown_messages(st: DesktopStudio) -> list[str]:
    """The message area's lines, newest first."""
    return [dpg.get_value(item) for item in st.log_lines if dpg.get_value(item)]


def rendered(st: DesktopStudio) -> None:
    """One frame that posts what is due, the render thread's work, one frame that shows it."""
    st.frame()
    assert st.viewport.wait(60), "the viewport's render did not finish in 60 s"
    st.frame()


def settle(st: DesktopStudio, timeout: float = 60.0) -> None:
    """Frames until nothing is due, rendering or waiting to be shown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st.frame()
        if st.viewport.idle():
            return
        st.viewport.wait(timeout)
    raise AssertionError(f"the viewport did not settle in {timeout} s")


def inside_window(item) -> bool:
    """The item was drawn entirely within the window's client area."""
    (x0, y0), (x1, y1) = dpg.get_item_rect_min(item), dpg.get_item_rect_max(item)
    w, h = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
    return dpg.is_item_visible(item) and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


class Recorder:
    """Wraps session.send: every command a front-end sent, accepted or not."""

    def __init__(self, session: Session):
        self.session, self.real, self.sent = session, session.send, []

    def __enter__(self) -> "Recorder":
        def send(cmd):
            self.sent.append(cmd)
            return self.real(cmd)

        self.session.send = send
        return self

    def __exit__(self, *exc) -> None:
        del self.session.send  # the class's method again

    def settings(self) -> list[C.UpdateSettings]:
        return [c for c in self.sent if isinstance(c, C.UpdateSettings)]


# ----- without a window -----------------------------------------------------------------------------------
def test_orbit_view_gestures():
    home = OrbitView.for_config(default_config("sds"), display=400)
    view = OrbitView(home.state, display=400)
    view.orbit(50, 10)
    assert view.state.azimuth == pytest.approx(home.state.azimuth - 20) and \
        view.state.elevation == pytest.approx(home.state.elevation + 4)
    view.orbit(0, 1e4)
    assert view.state.elevation == 89.0
    view.zoom(2)
    assert view.state.radius == pytest.approx(home.state.radius * 0.81)
    # Panning moves the target so that a point at the target's depth follows the cursor: project the
    # old target with the new camera and it lands (dx, dy) pixels from the centre.
    view.reset()
    view.pan(30, -20)
    cams = view.cameras(400)
    p = cams.viewmats[0, :3, :3] @ torch.zeros(3) + cams.viewmats[0, :3, 3]
    uv = (cams.Ks[0] @ (p / p[2]))[:2]
    assert uv.tolist() == pytest.approx([200 + 30, 200 - 20], abs=1e-3)
    view.reset()
    assert view.state == home.state


def test_view_settings_name_the_field_and_range():
    with pytest.raises(ConfigError, match=r"view.moving_size: must be a divisor of size = 256"):
        ViewSettings(size=256, moving_size=100).validate()
    with pytest.raises(ConfigError, match=r"view.max_hz: must lie in \[0.1, 120\]"):
        with_view_values(ViewSettings(), {"view.max_hz": 0})
    assert with_view_values(ViewSettings(), {"view.mode": "depth"}).mode == "depth"


def test_layout_gives_each_column_room():
    for width in (MIN_WIDTH := desktop_ui.MIN_WIDTH, 1000, 1280, 1920):
        left, panel, plots = layout_widths(width)
        assert left + panel + plots + 2 * desktop_ui.PAD + 2 * desktop_ui.SPACING == width
        assert panel >= 330 and plots >= 230 and left >= 200, (width, left, panel, plots)
    assert layout_widths(1920)[0] > layout_widths(1280)[0] > layout_widths(MIN_WIDTH)[0]


def test_without_a_display_it_says_so_in_one_line(tmp_path):
    assert display_problem({}, "linux") == "no display (DISPLAY is not set)"
    assert display_problem({"DISPLAY": ":12345"}, "linux") == "cannot open display ':12345'"
    assert display_problem({}, "darwin") is None
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--ui", "desktop", "--out", str(tmp_path),
         "--set", "init.num=50", "--resolution", "16", "--batch", "1"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--ui viser" in lines[0] and "display" in lines[0], proc.stderr
    assert desktop_ui.headless_message("no display (DISPLAY is not set)") == lines[0]


class XInput:
    """Real pointer and key events on the test's X server (libXtst)."""

    def __init__(self, display: str):
        x11, xtst = ctypes.util.find_library("X11"), ctypes.util.find_library("Xtst")
        if x11 is None or xtst is None:
            pytest.skip("libXtst is not installed (apt-get install -y libxtst6): cannot send X input events")
        self.x11, self.xt = ctypes.CDLL(x11), ctypes.CDLL(xtst)
        self.x11.XOpenDisplay.restype = ctypes.c_void_p
        self.x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self.x11.XStringToKeysym.restype = ctypes.c_ulong
        self.x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
        self.x11.XKeysymToKeycode.restype = ctypes.c_ubyte
        self.x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self.d = ctypes.c_void_p(self.x11.XOpenDisplay(display.encode()))
        self.x11.XAutoRepeatOff(self.d)  # a key held over a slow frame must not type twice

    def _flush(self, st: DesktopStudio, n: int = 2) -> None:
        self.x11.XFlush(self.d)
        frames(st, n)

    def move(self, st, x: int, y: int) -> None:
        self.xt.XTestFakeMotionEvent(self.d, -1, int(x), int(y), 0)
        self._flush(st)

    def button(self, st, button: int, down: bool) -> None:
        self.xt.XTestFakeButtonEvent(self.d, button, int(down), 0)
        self._flush(st)

    def key(self, st, name: str, down: bool | None = None) -> None:
        """Press and release a key (X keysym name: "a", "Return", "Control_L"), or only one of them."""
        code = self.x11.XKeysymToKeycode(self.d, self.x11.XStringToKeysym(name.encode()))
        for d in ((1, 0) if down is None else (int(down),)):
            self.xt.XTestFakeKeyEvent(self.d, code, d, 0)
            self._flush(st)

    def type(self, st, text: str) -> None:
        names = {".": "period", "-": "minus", " ": "space"}
        for ch in text:
            self.key(st, names.get(ch, ch))

    def click(self, st, item, ctrl: bool = False, dx: int = 20) -> None:
        """Click `dx` pixels into an item (holding Ctrl: a slider then takes typed text)."""
        vx, vy = dpg.get_viewport_pos()
        (x0, y0), (_, y1) = dpg.get_item_rect_min(item), dpg.get_item_rect_max(item)
        self.move(st, vx + x0 + dx, vy + (y0 + y1) // 2)
        if ctrl:
            self.key(st, "Control_L", True)
        self.button(st, 1, True)
        self.button(st, 1, False)
        if ctrl:
            self.key(st, "Control_L", False)

    def drag(self, st, button: int, start: tuple[int, int], delta: tuple[int, int], steps: int = 4) -> None:
        self.move(st, *start)
        self.button(st, button, True)
        for i in range(1, steps + 1):
            self.move(st, start[0] + delta[0] * i // steps, start[1] + delta[1] * i // steps)
        self.button(st, button, False)


# ----- the window (shared, in file order) -----------------------------------------------------------------
def test_first_render_shows_compiling_while_the_window_keeps_drawing(window):
    """The first render waits for numba to compile the rasterizer (a minute on a cold cache): it runs in
    the render thread, the window keeps drawing and says what it waits for."""
    studio, session = window
    assert studio.viewport.renders == 0
    gate, real = threading.Event(), studio.viewport.renderer

    def slow_first_render(*args, **kwargs):
        gate.wait(60)
        return real(*args, **kwargs)

    studio.viewport.renderer = slow_first_render
    try:
        frames(studio, 5)
        assert studio.viewport.compiling and dpg.get_value(studio.render_info) == desktop_ui.COMPILING
        assert studio.grab().shape[:2] == (dpg.get_viewport_client_height(), dpg.get_viewport_client_width())
        assert inside_window(studio.render_info) and studio.viewport.renders == 0
    finally:
        gate.set()
    settle(studio)
    studio.viewport.renderer = real
    assert studio.viewport.renders >= 1 and not studio.viewport.compiling
    assert dpg.get_value(studio.render_info).startswith("view ")


def test_typed_slider_value_commits_once_and_a_refusal_reverts(window, xdisplay):
    """Ctrl+click, digits, Enter: one UpdateSettings (not one per keystroke); a drag commits once on
    release; a refused value puts the slider back and the message is in view."""
    studio, session = window
    xin = XInput(xdisplay)
    slider = studio.panel.items["sds.guidance_scale"]
    frames(studio, 2)
    with Recorder(session) as rec:
        xin.click(studio, slider, ctrl=True)
        assert dpg.is_item_active(slider) and studio.panel.typing()
        xin.type(studio, "12.5")
        assert rec.sent == [] and session.config.sds.guidance_scale == 7.5  # typing is not committing
        xin.key(studio, "Return")
        frames(studio, 2)
    assert rec.settings() == [C.UpdateSettings({"sds.guidance_scale": 12.5})], rec.sent
    assert session.config.sds.guidance_scale == 12.5

    with Recorder(session) as rec:
        vx, vy = dpg.get_viewport_pos()
        (x0, y0), (_, y1) = dpg.get_item_rect_min(slider), dpg.get_item_rect_max(slider)
        xin.drag(studio, 1, (int(vx + x0 + 20), int(vy + (y0 + y1) / 2)), (40, 0), steps=5)
        frames(studio, 2)
    assert len(rec.settings()) == 1, rec.sent
    dragged = session.config.sds.guidance_scale
    assert dragged != 12.5 and dpg.get_value(slider) == pytest.approx(dragged)

    with Recorder(session) as rec:
        xin.click(studio, slider, ctrl=True)
        xin.type(studio, "5000")
        xin.key(studio, "Return")
        frames(studio, 2)
    assert rec.settings() == [C.UpdateSettings({"sds.guidance_scale": 5000.0})], rec.sent
    assert session.config.sds.guidance_scale == dragged and dpg.get_value(slider) == pytest.approx(dragged)
    newest = studio.log_lines[0]
    assert dpg.get_value(newest) == refusal(session, C.UpdateSettings({"sds.guidance_scale": 5000.0}))
    assert "sds.guidance_scale" in dpg.get_value(newest) and inside_window(newest)
    session.send(C.UpdateSettings({"sds.guidance_scale": 7.5}))
    frames(studio, 2)


def test_panel_edits_reach_the_session_and_refusals_show_its_message(window):
    studio, session = window
    items, buttons = studio.panel.items, studio.panel.buttons
    assert studio.panel.built == items_of("desktop")  # what controls.py declares, in its order
    assert not studio.checkpoint_due()  # nothing trained yet: nothing to lose
    assert dpg.get_value(studio.panel.headers["sds"]) and not dpg.get_value(studio.panel.headers["ssd"])
    user_sets(items["run.method"], "ism")
    user_sets(items["ism.delta_t"], 80)
    assert session.config.run.method == "ism" and session.config.ism.delta_t == 80
    frames(studio)
    assert dpg.get_value(studio.panel.headers["ism"]) and not dpg.get_value(studio.panel.headers["sds"])

    # Refused edits: the session's own message is shown, the widget goes back, nothing changed.
    controls = {c.path: c for c in all_controls()}
    for path, bad, sent in (("run.steps", 0, C.UpdateSettings({"run.steps": 0})),
                            ("prompt.prompt", "a purple elephant", C.SetPrompt("a purple elephant", "")),
                            ("camera.radius", [4.0, 2.0], C.UpdateSettings({"camera.radius": (4.0, 2.0)}))):
        before = session.config
        user_sets(items[path], bad)
        assert session.config == before
        assert shown_messages(studio)[0] == refusal(session, sent)
        frames(studio, 1)
        shown = dpg.get_value(items[path])
        expected = widget_value(controls[path], before)
        assert (tuple(shown[:2]) if path == "camera.radius" else shown) == expected, shown

    user_sets(items["camera.radius"], [2.5, 3.0])
    user_sets(items["densify.enabled"], True)
    assert session.config.camera.radius == (2.5, 3.0) and session.config.densify.enabled

    # Enabled rules: the fixed μ only while μ is fixed.
    def enabled(item):
        return dpg.get_item_configuration(item)["enabled"]

    assert session.config.ssd.mu_mode != "fixed" and not enabled(items["ssd.mu"])
    user_sets(items["ssd.mu_mode"], "fixed")
    frames(studio, 1)
    assert enabled(items["ssd.mu"])

    # A change made elsewhere (another front-end, a checkpoint) shows up in the widget.
    session.send(C.UpdateSettings({"ism.delta_s": 123, "optim.means_lr": 2e-4}))
    frames(studio, 2)
    assert dpg.get_value(items["ism.delta_s"]) == 123
    assert dpg.get_value(items["optim.means_lr"]) == pytest.approx(2e-4)

    # Transport buttons drive the worker.
    user_clicks(buttons["step"])
    snap = session.wait_for(lambda s: s.iteration == 1, timeout=30)
    assert snap.paused and snap.method == "ism"
    user_clicks(buttons["resume"])
    session.wait_for(lambda s: s.iteration >= 3 and not s.paused, timeout=30)
    frames(studio, 1)
    with Recorder(session) as rec:  # Step once while training: pauses, then steps
        user_clicks(buttons["step"])
    assert rec.sent == [C.Pause(), C.StepOnce(1)]
    session.wait_for(lambda s: s.paused, timeout=30)
    user_clicks(buttons["export:ply"])
    snap = session.wait_for(lambda s: any(e.path and e.path.endswith(".ply") for e in s.events), timeout=30)
    frames(studio, 2)
    ply = next(e.path for e in snap.events if e.path and e.path.endswith(".ply"))
    assert Path(ply).is_file() and any(ply in line for line in shown_messages(studio))


def test_prompt_apply_confirms_and_retitles_and_a_refusal_reverts(window, xdisplay):
    studio, session = window
    xin = XInput(xdisplay)
    prompt, negative = studio.panel.items["prompt.prompt"], studio.panel.items["prompt.negative"]
    frames(studio, 2)
    xin.click(studio, prompt)  # real keys: select all, type, then click Apply
    xin.key(studio, "Control_L", True)
    xin.key(studio, "a")
    xin.key(studio, "Control_L", False)
    xin.type(studio, "a red ball")
    assert session.config.prompt.prompt == "a red cube"  # typed, not applied
    xin.click(studio, studio.panel.buttons["apply_prompt"])
    frames(studio, 1)
    assert session.config.prompt.prompt == "a red ball"
    assert shown_messages(studio)[0] == prompt_applied_text("a red ball", "")
    session.wait_for(lambda s: s.prompt == "a red ball", timeout=30)
    frames(studio, 2)
    assert dpg.get_viewport_title() == window_title("a red ball")

    dpg.set_value(negative, "blurry")
    user_sets(prompt, "a purple elephant")  # Enter in the field
    assert session.config.prompt.prompt == "a red ball" and shown_messages(studio)[0].startswith("prompt")
    assert dpg.get_value(prompt) == "a red ball" and dpg.get_value(negative) == ""
    assert inside_window(studio.log_lines[0])

    picker = studio.panel.pickers["known_prompt"][1]  # the procedural prior's prompts
    assert dpg.is_item_shown(picker) and "a cube" in dpg.get_item_configuration(picker)["items"]
    user_sets(picker, "a cube")
    assert session.config.prompt.prompt == "a cube" and shown_messages(studio)[0] == prompt_applied_text("a cube", "")
    session.wait_for(lambda s: s.prompt == "a cube", timeout=30)
    frames(studio, 2)
    assert dpg.get_viewport_title() == window_title("a cube") and dpg.get_value(prompt) == "a cube"
    user_sets(picker, "a red ball")
    session.wait_for(lambda s: s.prompt == "a red ball", timeout=30)
    frames(studio, 2)


def test_preset_picker_and_state_aware_transport(window):
    studio, session = window
    picker = studio.panel.pickers["preset"][1]
    user_sets(picker, "lucid")
    assert session.config.run.method == "ism" and session.config.ism.delta_t == 50  # the preset wins
    frames(studio, 2)
    assert dpg.get_value(picker) == "lucid" and dpg.get_value(studio.panel.headers["ism"])
    user_sets(studio.panel.items["ism.delta_t"], 60)
    frames(studio, 2)
    assert dpg.get_value(picker) == "custom"

    def enabled(action):
        return dpg.get_item_configuration(studio.panel.buttons[action])["enabled"]

    it = session.snapshot.iteration
    session.send(C.UpdateSettings({"run.steps": it + 2}))
    user_clicks(studio.panel.buttons["resume"])
    session.wait_for(lambda s: s.done and s.paused and s.iteration == it + 2, timeout=60)
    frames(studio, 2)
    assert enabled("continue") and not enabled("pause") and not enabled("resume")
    assert "done" in dpg.get_value(studio.status)
    user_clicks(studio.panel.buttons["continue"])
    session.wait_for(lambda s: s.done and s.paused and s.iteration == 2 * (it + 2), timeout=60)  # +the plan
    session.send(C.UpdateSettings({"run.steps": 100_000}))
    user_sets(picker, "sds")
    session.wait_for(lambda s: s.method == "sds" and s.planned_steps == 100_000, timeout=30)
    frames(studio, 2)
    assert not enabled("continue") and enabled("resume")


def reference_render(studio: DesktopStudio, size: int = WINDOW.size):
    """The snapshot's arrays seen from the orbit camera by the slow, obviously right rasterizer."""
    params = params_from_splats(studio.session.snapshot.splats, torch.device("cpu"))
    bg = torch.full((1, 3), studio.settings.background)
    with torch.no_grad():
        return renderers.make_renderer("reference")(params, studio.view.cameras(size), bg)


def upscaled(img: torch.Tensor, size: int = WINDOW.size) -> np.ndarray:
    """[s, s, 3] shown at WINDOW.size (a smaller render repeats its pixels)."""
    f = size // img.shape[0]
    return img.numpy().repeat(f, axis=0).repeat(f, axis=1)


def test_viewport_shows_the_snapshot_from_the_orbit_camera(window):
    studio, session = window
    it = session.snapshot.iteration
    session.send(C.StepOnce(2))
    session.wait_for(lambda s: s.iteration == it + 2 and s.paused, timeout=30)
    time.sleep(studio.viewport.SETTLE_S)
    settle(studio)

    def coverage(img: np.ndarray) -> float:
        return float((np.abs(img - WINDOW.background).max(axis=-1) > 0.05).mean())

    shown = studio.viewport.buffer.reshape(WINDOW.size, WINDOW.size, 4)
    assert studio.viewport.last_size == WINDOW.size
    np.testing.assert_allclose(shown[..., :3], upscaled(reference_render(studio).rgb[0]), atol=2e-3)
    before = shown[..., :3].copy()

    pixels = studio.grab()  # [H, W, 4] the window as drawn
    (x0, y0), (x1, y1) = dpg.get_item_rect_min(studio.image), dpg.get_item_rect_max(studio.image)
    region = pixels[y0:y1, x0:x1, :3]
    assert region.shape[:2] == (WINDOW.display, WINDOW.display)
    # Not blank: the Gaussians cover a good part of it, and the window shows the texture (4x upscaled).
    assert 0.05 < coverage(region) < 0.95, coverage(region)
    small = region.reshape(WINDOW.size, 4, WINDOW.size, 4, 3).mean(axis=(1, 3))
    assert np.abs(small - before).mean() < 0.03

    renders = studio.viewport.renders
    studio.view.orbit(200, -50)  # camera moves re-render at once, at moving_size while moving
    studio.view.zoom(-3)  # 1.37x farther: the object covers about half the pixels it did
    rendered(studio)
    assert studio.viewport.renders == renders + 1 and studio.viewport.last_size == WINDOW.moving_size
    np.testing.assert_allclose(shown[..., :3], upscaled(reference_render(studio, WINDOW.moving_size).rgb[0]),
                               atol=2e-3)
    time.sleep(studio.viewport.SETTLE_S)  # still again (and paused): sharpened to full size
    settle(studio)
    assert studio.viewport.renders == renders + 2 and studio.viewport.last_size == WINDOW.size
    np.testing.assert_allclose(shown[..., :3], upscaled(reference_render(studio).rgb[0]), atol=2e-3)
    assert 0.3 < coverage(shown[..., :3]) / coverage(before) < 0.8
    time.sleep(0.3)  # the paused worker keeps publishing (new versions, same scene): no new render
    frames(studio, 3)
    assert studio.viewport.idle() and studio.viewport.renders == renders + 2
    studio.view.reset()


def test_view_folder_sets_render_mode_and_refuses_bad_values(window):
    studio, session = window
    items = studio.panel.items
    assert "view.splat_hz" not in items and "view.live_splats" not in items  # browser-only
    frames(studio, 1)  # the view as the last test left it: held still, paused, renders are full size
    time.sleep(studio.viewport.SETTLE_S)
    settle(studio)
    assert studio.viewport.last_size == WINDOW.size
    shown = studio.viewport.buffer.reshape(WINDOW.size, WINDOW.size, 4)[..., :3]
    out = reference_render(studio)
    rgb = shown.copy()
    object_px = np.asarray(out.alpha[0, ..., 0]) > 0.5  # [H, W]
    empty_px = np.asarray(out.alpha[0, ..., 0]) < 1e-3
    assert object_px.mean() > 0.05 and empty_px.mean() > 0.05
    images = {}
    for mode in ("depth", "alpha", "normal"):
        user_sets(items["view.mode"], mode)
        assert studio.settings.mode == mode and session.config == session.config  # not sent to the session
        settle(studio)
        images[mode] = shown.copy()
        assert np.abs(images[mode] - rgb).mean() > 0.05, mode
        assert images[mode].min() >= 0 and images[mode].max() <= 1
    np.testing.assert_allclose(images["alpha"], upscaled(mode_image(out, "alpha")), atol=2e-3)
    assert images["alpha"][object_px].mean() > 0.5 and images["alpha"][empty_px].max() < 0.01
    depth = images["depth"][..., 0]  # near bright (1 at the nearest covered pixel), nothing black
    assert depth[empty_px].max() < 0.01 and depth[~empty_px].max() > 0.95
    assert depth[object_px].min() > 0.1 and depth[object_px].std() > 0.02
    normal = images["normal"][object_px]
    assert np.abs(normal - normal.mean(axis=-1, keepdims=True)).mean() > 0.02  # coloured, not grey
    user_sets(items["view.mode"], "rgb")
    settle(studio)
    np.testing.assert_allclose(shown, rgb, atol=1e-6)

    user_sets(items["view.max_hz"], 500.0)  # typed past the slider: refused by ViewSettings
    assert studio.settings.max_hz == WINDOW.max_hz and dpg.get_value(items["view.max_hz"]) == WINDOW.max_hz
    assert shown_messages(studio)[0].startswith("view.max_hz: must lie in [0.1, 120]")
    user_sets(items["view.background"], 0.5)
    settle(studio)
    assert studio.settings.background == 0.5 and shown[empty_px].mean() == pytest.approx(0.5, abs=1e-3)
    user_sets(items["view.background"], WINDOW.background)
    settle(studio)


def new_ply(session: Session, after: int) -> bool:
    return any(e.id > after and e.path and e.path.endswith(".ply") for e in session.snapshot.events)


def test_mouse_and_keyboard(window, xdisplay):
    studio, session = window
    xin = XInput(xdisplay)
    frames(studio, 3)
    vx, vy = dpg.get_viewport_pos()
    (x0, y0), (x1, y1) = dpg.get_item_rect_min(studio.image), dpg.get_item_rect_max(studio.image)
    centre = (int(vx + (x0 + x1) / 2), int(vy + (y0 + y1) / 2))
    home = studio.view.state

    xin.drag(studio, 1, centre, (60, 20))  # left drag: orbit, 0.4 degrees per pixel
    assert studio.view.state.azimuth == pytest.approx(home.azimuth - 24, abs=0.5)
    assert studio.view.state.elevation == pytest.approx(home.elevation + 8, abs=0.5)
    xin.drag(studio, 3, centre, (40, 0))  # right drag: pan
    assert studio.view.state.target != home.target
    radius = studio.view.state.radius
    xin.button(studio, 4, True)  # wheel up: closer
    xin.button(studio, 4, False)
    assert studio.view.state.radius == pytest.approx(radius * OrbitView.ZOOM_PER_NOTCH)
    xin.key(studio, "r")
    assert studio.view.state == home
    xin.drag(studio, 1, (int(vx + x1 + 200), centre[1]), (60, 0))  # a drag that starts off the view
    assert studio.view.state == home

    it = session.snapshot.iteration
    xin.key(studio, "space")
    session.wait_for(lambda s: not s.paused and s.iteration >= it + 2, timeout=30)
    xin.key(studio, "space")
    session.wait_for(lambda s: s.paused, timeout=30)
    it = session.snapshot.iteration
    xin.key(studio, "s")
    session.wait_for(lambda s: s.iteration == it + 1, timeout=30)
    xin.key(studio, "space")  # s while training: pauses, then one step
    session.wait_for(lambda s: not s.paused, timeout=30)
    frames(studio, 1)
    xin.key(studio, "s")
    snap = session.wait_for(lambda s: s.paused, timeout=30)
    time.sleep(0.2)
    assert session.snapshot.paused and session.snapshot.iteration >= snap.iteration
    last_event = session.snapshot.events[-1].id
    xin.key(studio, "e")
    session.wait_for(lambda s: new_ply(session, last_event), timeout=30)

    # Letters typed into a field are text, not shortcuts; Escape leaves the field unchanged.
    prompt = studio.panel.items["prompt.prompt"]
    typed = session.config.prompt.prompt
    xin.click(studio, prompt)
    assert dpg.is_item_active(prompt)
    studio.view.orbit(30, 0)
    moved, paused_at = studio.view.state, session.snapshot.iteration
    xin.key(studio, "r")
    xin.key(studio, "space")
    assert studio.view.state == moved and session.config.prompt.prompt == typed
    xin.key(studio, "Escape")
    frames(studio, 2)
    assert not dpg.is_item_active(prompt) and dpg.get_value(prompt) == typed
    time.sleep(0.3)
    assert session.snapshot.paused and session.snapshot.iteration == paused_at


def test_open_folder_loads_a_checkpoint(window, tmp_path):
    studio, session = window
    saved = tmp_path / "here.pt"
    session.send(C.SaveCheckpoint(str(saved)))
    session.wait_for(lambda s: saved.is_file() and any(e.path == str(saved) for e in s.events), timeout=30)
    it = session.snapshot.iteration
    session.send(C.StepOnce(3))
    session.wait_for(lambda s: s.iteration == it + 3, timeout=30)

    dpg.set_value(studio.panel.load_path, str(saved))  # typed path + Load
    user_clicks(studio.panel.buttons["load"])
    session.wait_for(lambda s: s.iteration == it, timeout=30)

    session.send(C.StepOnce(2))
    session.wait_for(lambda s: s.iteration == it + 2, timeout=30)
    user_clicks(studio.panel.browse)  # Browse… opens the file dialog; its OK does what a pick does
    frames(studio, 1)
    dialog = studio.panel.file_dialog
    assert dpg.is_item_shown(dialog) and studio.panel.typing()
    dpg.hide_item(dialog)
    dpg.set_value(studio.panel.load_path, "")
    dpg.get_item_callback(dialog)(dialog, {"file_path_name": str(saved), "file_name": saved.name,
                                           "current_path": str(tmp_path), "selections": {saved.name: str(saved)}},
                                  None)
    session.wait_for(lambda s: s.iteration == it, timeout=30)
    assert dpg.get_value(studio.panel.load_path) == str(saved)

    dpg.set_value(studio.panel.load_path, str(tmp_path / "notes.txt"))  # refused with the reason
    user_clicks(studio.panel.buttons["load"])
    assert "neither a checkpoint (.pt) nor a .ply" in shown_messages(studio)[0]
    frames(studio, 2)


def test_layout_fits_a_small_window(window):
    """At 1000 x 650 the messages, the transport buttons and the viewport stay in the window; the view
    shrinks to fit (up to view.display)."""
    studio, session = window
    studio.set_view(replace(studio.settings, display=800))  # larger than either window has room for
    studio.message("info", "a message at the top")
    try:
        for width, height in ((1000, 650), (1280, 800)):
            dpg.set_viewport_width(width)
            dpg.set_viewport_height(height)
            for _ in range(30):
                frames(studio, 1)
                if (dpg.get_viewport_client_width(), dpg.get_viewport_client_height()) == (width, height):
                    break
            frames(studio, 3)
            assert (dpg.get_viewport_client_width(), dpg.get_viewport_client_height()) == (width, height)
            side = dpg.get_item_rect_size(studio.image)[0]
            assert 300 <= side <= layout_widths(width)[0] - 2 * desktop_ui.PAD, side
            for item in (studio.log_lines[0], studio.status, studio.image, studio.hint, studio.reset_view,
                         *(studio.panel.buttons[a] for a in ("pause", "resume", "continue", "step", "reset"))):
                assert inside_window(item), (width, height, dpg.get_item_rect_min(item), dpg.get_item_rect_max(item))
            assert dpg.get_item_rect_max(studio.log_lines[0])[1] < dpg.get_item_rect_min(studio.image)[1]
            for plot, _, _ in studio.plots.values():
                assert inside_window(plot), (width, height)
    finally:
        studio.set_view(replace(studio.settings, display=WINDOW.display))
        frames(studio, 3)
    assert dpg.get_item_rect_size(studio.image) == [WINDOW.display, WINDOW.display]


def test_both_front_ends_build_the_same_panel_and_enable_it_alike(window):
    """The browser and the desktop panels, over the same session: the same items in the same order
    (but the viewer settings one of them lacks), and the same items enabled in each session state."""
    from studio.controls import items_of
    from studio.ui.viser_ui import ViserStudio

    studio, session = window
    web = ViserStudio(session, port=0).start()
    try:
        assert studio.panel.built == items_of("desktop") and web.panel.built == items_of("viser")
        one_sided = {c.path for c in all_controls() if len(c.front_ends) == 1}
        assert [i for i in items_of("desktop") if i[1] not in one_sided] == \
            [i for i in items_of("viser") if i[1] not in one_sided]

        def compare(what: str) -> dict[str, bool]:
            frames(studio, 2)
            web.refresh()
            desk, page = studio.panel.enabled_items(), web.panel.enabled_items()
            keys = (set(desk) & set(page))
            assert keys >= {"pause", "resume", "continue", "step", "ssd.mu", "sds.guidance_scale"}, keys
            differ = {k: (desk[k], page[k]) for k in keys if desk[k] != page[k]}
            assert not differ, f"{what}: enabled differently (desktop, browser): {differ}"
            return desk

        session.send(C.Pause())
        session.wait_for(lambda s: s.paused and not s.done)
        paused = compare("paused")
        assert not paused["pause"] and paused["resume"] and not paused["continue"]
        for mode, enabled in (("fixed", True), ("learned", False)):
            session.send(C.UpdateSettings({"ssd.mu_mode": mode}))
            session.wait_for(lambda s, m=mode: s.config.ssd.mu_mode == m)
            assert compare(f"mu_mode {mode}")["ssd.mu"] is enabled
        session.send(C.Resume())
        session.wait_for(lambda s: not s.paused)
        running = compare("running")
        assert running["pause"] and not running["resume"] and running["step"]
        it = session.snapshot.iteration
        session.send(C.UpdateSettings({"run.steps": it + 2}))
        session.wait_for(lambda s: s.done and s.paused, timeout=60)
        done = compare("done")
        assert done["continue"] and not done["resume"] and not done["pause"]
        session.send(C.UpdateSettings({"run.steps": 600}))
    finally:
        web.stop()


def test_closing_writes_a_checkpoint_when_the_scene_changed(window):
    studio, session = window
    user_clicks(studio.panel.buttons["checkpoint"])
    session.wait_for(lambda s: any(e.path and e.path.endswith(".pt") and Path(e.path).parent == session.out_dir
                                   for e in s.events), timeout=30)
    frames(studio, 1)
    assert not studio.checkpoint_due()  # saved by the user after the last step
    it = session.snapshot.iteration
    session.send(C.StepOnce(1))
    session.wait_for(lambda s: s.iteration == it + 1, timeout=30)
    assert studio.checkpoint_due()
    path = studio.close()
    assert path is not None and path.is_file() and not session.running and not studio.viewport.running
    assert load_checkpoint(path)["trainer"]["iteration"] == it + 1
    assert len(list(session.out_dir.glob("*.pt"))) == 2
