"""The desktop studio in a real DearPyGui window under Xvfb (Debian xvfb + Mesa).

Widgets are driven the way a user's edits reach the app (set the widget's value, then its callback);
the mouse and keys go through the X server itself (XTest), so DearPyGui sees real events. Every check
is on the session (what the user's action did) or on the window's own pixels (output_frame_buffer).

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
import time
from pathlib import Path

import numpy as np
import pytest
import torch

dpg = pytest.importorskip("dearpygui.dearpygui")

import renderers  # noqa: E402
import studio.commands as C  # noqa: E402
from studio.config import default_config, with_values  # noqa: E402
from studio.controls import all_controls  # noqa: E402
from studio.export import load_checkpoint  # noqa: E402
from studio.session import Session  # noqa: E402
from studio.ui import desktop_ui  # noqa: E402
from studio.ui.common import widget_value  # noqa: E402
from studio.ui.desktop_ui import DesktopStudio, display_problem  # noqa: E402
from studio.ui.desktop_view import OrbitView, WindowSettings, params_from_splats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"render.resolution": 32, "render.batch": 1, "init.num": 300, "run.psnr_every": 2,
         "densify.enabled": False}
WINDOW = WindowSettings(size=64, moving_size=32, display=256)


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
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
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
    """What a user's edit does: the widget takes the value, then DearPyGui calls its callback."""
    dpg.set_value(item, value)
    dpg.get_item_callback(item)(item, dpg.get_value(item), dpg.get_item_user_data(item))


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
    return [dpg.get_value(item) for item in st.log_lines]


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


def test_window_settings_name_the_field_and_range():
    with pytest.raises(ValueError, match=r"window.moving_size: must be a divisor of size = 256"):
        WindowSettings(size=256, moving_size=100).validate()
    with pytest.raises(ValueError, match=r"window.max_hz: must lie in \[0.1, 120\]"):
        WindowSettings(max_hz=0).validate()
    WindowSettings().validate()


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


# ----- the window (shared, in file order) -----------------------------------------------------------------
def test_panel_edits_reach_the_session_and_refusals_show_its_message(window):
    studio, session = window
    items, buttons = studio.panel.items, studio.panel.buttons
    assert not studio.checkpoint_due()  # nothing trained yet: nothing to lose
    user_sets(items["run.method"], "ism")
    user_sets(items["ism.delta_t"], 80)
    assert session.config.run.method == "ism" and session.config.ism.delta_t == 80
    frames(studio)
    assert dpg.get_value(studio.panel.headers["ism"]) and not dpg.get_value(studio.panel.headers["sds"])

    # Refused edits: the session's own message is shown, the widget goes back, nothing changed.
    controls = {c.path: c for c in all_controls()}
    for path, bad, sent in (("run.steps", 0, 0), ("prompt.prompt", "a purple elephant", "a purple elephant"),
                            ("camera.radius", [4.0, 2.0], (4.0, 2.0))):
        before = session.config
        user_sets(items[path], bad)
        assert session.config == before
        assert shown_messages(studio)[-1] == refusal(session, C.UpdateSettings({path: sent}))
        frames(studio, 1)
        shown = dpg.get_value(items[path])
        expected = widget_value(controls[path], before)
        assert (tuple(shown[:2]) if path == "camera.radius" else shown) == expected, shown

    user_sets(items["prompt.prompt"], "a red ball")
    user_sets(items["camera.radius"], [2.5, 3.0])
    user_sets(items["densify.enabled"], True)
    assert session.config.prompt.prompt == "a red ball" and session.config.camera.radius == (2.5, 3.0)
    assert session.config.densify.enabled

    # A change made elsewhere (another front-end, a checkpoint) shows up in the widget.
    session.send(C.UpdateSettings({"ism.delta_s": 123, "optim.means_lr": 2e-4}))
    frames(studio, 2)
    assert dpg.get_value(items["ism.delta_s"]) == 123
    assert dpg.get_value(items["optim.means_lr"]) == pytest.approx(2e-4)

    # Transport buttons drive the worker.
    user_clicks(buttons["step"])
    snap = session.wait_for(lambda s: s.iteration == 1, timeout=30)
    assert snap.paused and snap.method == "ism" and snap.prompt == "a red ball"
    user_clicks(buttons["resume"])
    session.wait_for(lambda s: s.iteration >= 3 and not s.paused, timeout=30)
    user_clicks(buttons["pause"])
    session.wait_for(lambda s: s.paused, timeout=30)
    user_clicks(buttons["export:ply"])
    snap = session.wait_for(lambda s: any(e.path and e.path.endswith(".ply") for e in s.events), timeout=30)
    frames(studio, 2)
    ply = next(e.path for e in snap.events if e.path and e.path.endswith(".ply"))
    assert Path(ply).is_file() and any(ply in line for line in shown_messages(studio))


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


def test_viewport_shows_the_snapshot_from_the_orbit_camera(window):
    studio, session = window
    it = session.snapshot.iteration
    session.send(C.StepOnce(2))
    session.wait_for(lambda s: s.iteration == it + 2 and s.paused, timeout=30)
    frames(studio, 3)
    snap = session.snapshot

    def reference_image(size: int = WINDOW.size) -> np.ndarray:
        """The snapshot's arrays seen from the orbit camera by the slow, obviously right rasterizer,
        shown at WINDOW.size (a smaller render repeats its pixels)."""
        params = params_from_splats(snap.splats, torch.device("cpu"))
        bg = torch.full((1, 3), WINDOW.background)
        with torch.no_grad():
            img = renderers.make_renderer("reference")(params, studio.view.cameras(size), bg).rgb[0].numpy()
        f = WINDOW.size // size
        return img.repeat(f, axis=0).repeat(f, axis=1)

    def coverage(img: np.ndarray) -> float:
        return float((np.abs(img - WINDOW.background).max(axis=-1) > 0.05).mean())

    shown = studio.viewport.buffer.reshape(WINDOW.size, WINDOW.size, 4)
    np.testing.assert_allclose(shown[..., :3], reference_image(), atol=2e-3)
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
    frames(studio, 1)
    assert studio.viewport.renders == renders + 1 and studio.viewport.last_size == WINDOW.moving_size
    np.testing.assert_allclose(shown[..., :3], reference_image(WINDOW.moving_size), atol=2e-3)
    time.sleep(studio.viewport.SETTLE_S)  # still again (and paused): sharpened to full size
    frames(studio, 1)
    assert studio.viewport.renders == renders + 2 and studio.viewport.last_size == WINDOW.size
    np.testing.assert_allclose(shown[..., :3], reference_image(), atol=2e-3)
    assert 0.3 < coverage(shown[..., :3]) / coverage(before) < 0.8
    time.sleep(0.3)  # the paused worker keeps publishing (new versions, same scene): no new render
    frames(studio, 3)
    assert studio.viewport.renders == renders + 2
    studio.view.reset()


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

    def _flush(self, st: DesktopStudio, n: int = 2) -> None:
        self.x11.XFlush(self.d)
        frames(st, n)

    def move(self, st, x: int, y: int) -> None:
        self.xt.XTestFakeMotionEvent(self.d, -1, int(x), int(y), 0)
        self._flush(st)

    def button(self, st, button: int, down: bool) -> None:
        self.xt.XTestFakeButtonEvent(self.d, button, int(down), 0)
        self._flush(st)

    def key(self, st, name: str) -> None:
        code = self.x11.XKeysymToKeycode(self.d, self.x11.XStringToKeysym(name.encode()))
        for down in (1, 0):
            self.xt.XTestFakeKeyEvent(self.d, code, down, 0)
            self._flush(st)

    def drag(self, st, button: int, start: tuple[int, int], delta: tuple[int, int], steps: int = 4) -> None:
        self.move(st, *start)
        self.button(st, button, True)
        for i in range(1, steps + 1):
            self.move(st, start[0] + delta[0] * i // steps, start[1] + delta[1] * i // steps)
        self.button(st, button, False)


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
    last_event = session.snapshot.events[-1].id
    xin.key(studio, "e")
    session.wait_for(lambda s: new_ply(session, last_event), timeout=30)

    # Letters typed into a field are text, not shortcuts; Escape leaves the field unchanged.
    prompt = studio.panel.items["prompt.prompt"]
    px, py = dpg.get_item_rect_min(prompt)
    xin.move(studio, vx + px + 20, vy + py + 5)
    xin.button(studio, 1, True)
    xin.button(studio, 1, False)
    assert dpg.is_item_active(prompt)
    studio.view.orbit(30, 0)
    moved, paused_at = studio.view.state, session.snapshot.iteration
    xin.key(studio, "r")
    xin.key(studio, "space")
    assert studio.view.state == moved and session.config.prompt.prompt == "a red ball"
    xin.key(studio, "Escape")
    frames(studio, 2)
    assert not dpg.is_item_active(prompt) and dpg.get_value(prompt) == "a red ball"
    time.sleep(0.3)
    assert session.snapshot.paused and session.snapshot.iteration == paused_at


def test_closing_writes_a_checkpoint_when_the_scene_changed(window):
    studio, session = window
    user_clicks(studio.panel.buttons["checkpoint"])
    session.wait_for(lambda s: any(e.path and e.path.endswith(".pt") for e in s.events), timeout=30)
    frames(studio, 1)
    assert not studio.checkpoint_due()  # saved by the user after the last step
    it = session.snapshot.iteration
    session.send(C.StepOnce(1))
    session.wait_for(lambda s: s.iteration == it + 1, timeout=30)
    assert studio.checkpoint_due()
    path = studio.close()
    assert path is not None and path.is_file() and not session.running
    assert load_checkpoint(path)["trainer"]["iteration"] == it + 1
    assert len(list(session.out_dir.glob("*.pt"))) == 2
