"""The browser studio against a real viser server and a real session (procedural prior, CPU renderer).

Widgets are driven over the websocket exactly as the page drives them (tests/viser_wire.py): a value
edit, a button click, Enter in a form. The checks are on the session (method switched, δT applied,
paused, files written) and on what the page receives (notifications, downloads, other tabs' values).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import studio.commands as C
from renderers.camera import look_at
from renderers.reference import quat_to_rotmat
from studio import confio
from studio.config import default_config, method_preset_values, with_values
from studio.export import read_gaussian_ply
from studio.session import Session
from studio.ui import common, viser_panel
from studio.ui.viser_scene import camera_to_world, covariances, side_by_side, upscale
from studio.ui.viser_ui import ViserStudio
from viser_wire import WireClient

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"render.resolution": 32, "render.batch": 2, "init.num": 300, "densify.enabled": False,
         "run.psnr_every": 10}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    out = tmp_path_factory.mktemp("viser_out")
    session = Session(with_values(default_config("sds"), SMALL), out, paused=True)
    studio = ViserStudio(session, port=0).start()
    session.start()
    session.send(C.Resume())
    client = WireClient(studio.port)
    session.wait_for(lambda s: s.iteration >= 3, 60)
    yield session, studio, client
    client.close()
    studio.stop()
    session.stop()


def widget(studio, path):
    return studio.panel.widgets[path][1]


def eventually(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


# ----- the page and its widgets ---------------------------------------------------------------------
def test_page_is_served_on_localhost_with_the_panel_from_controls(env):
    session, studio, client = env
    html = urllib.request.urlopen(studio.url, timeout=10).read().decode()
    assert "<html" in html.lower()
    assert studio.url.startswith("http://127.0.0.1:")
    from studio.controls import all_controls

    assert set(studio.panel.widgets) == {c.path for c in all_controls("viser")}
    client.wait_for("GaussianSplatsMessage")  # the splats reached the page
    client.wait_for("GuiUplotMessage")


def test_method_switch_and_ism_delta_t_follow_the_widgets(env):
    session, studio, client = env
    client.set_value(widget(studio, "run.method"), "ism")
    session.wait_for(lambda s: s.method == "ism" and s.config.run.method == "ism")
    eventually(lambda: studio.panel.folders["ISM"].visible and not studio.panel.folders["SDS"].visible,
               what="ISM folder shown, SDS hidden")
    client.set_value(widget(studio, "ism.delta_t"), 80)
    snap = session.wait_for(lambda s: s.config.ism.delta_t == 80)
    assert session.trainer.estimator.settings.delta_t == 80
    it = snap.iteration
    session.wait_for(lambda s: s.iteration > it + 2)  # still training with the new settings
    client.set_value(widget(studio, "camera.radius"), [2.5, 3.0])
    session.wait_for(lambda s: s.config.camera.radius == (2.5, 3.0))
    client.set_value(widget(studio, "run.method"), "sds")
    session.wait_for(lambda s: s.method == "sds")


def test_refused_value_is_a_notification_and_the_widget_reverts(env):
    session, studio, client = env
    batch = widget(studio, "render.batch")
    client.set_value(batch, 0)
    note = client.wait_notification("render.batch")
    assert note["color"] == "red" and note["title"] == "Refused"
    eventually(lambda: batch.value == SMALL["render.batch"], what="batch widget reverted")
    assert session.config.render.batch == SMALL["render.batch"]
    it = session.snapshot.iteration
    session.wait_for(lambda s: s.iteration > it)  # the session is unharmed


def test_prompt_applies_on_enter_not_per_keystroke_and_bad_prompts_are_refused(env):
    session, studio, client = env
    form = studio.panel.folders["Prompt"]
    prompt = widget(studio, "prompt.prompt")
    client.set_value(prompt, "a sph")
    client.set_value(prompt, "a sphere")
    eventually(lambda: prompt.value == "a sphere", what="typed text reached the server")
    assert session.config.prompt.prompt == "a red cube"  # typing alone changes nothing
    client.submit(form)
    session.wait_for(lambda s: s.prompt == "a sphere")
    client.set_value(prompt, "a purple elephant")
    eventually(lambda: prompt.value == "a purple elephant")
    client.submit(form)
    note = client.wait_notification("purple elephant")
    assert note["color"] == "red"
    assert session.config.prompt.prompt == "a sphere"
    client.set_value(prompt, "a red cube")
    client.submit(form)
    session.wait_for(lambda s: s.prompt == "a red cube")


def test_pause_step_resume_buttons(env):
    session, studio, client = env
    client.click(studio.panel.buttons["pause"])
    snap = session.wait_for(lambda s: s.paused)
    it = snap.iteration
    session.wait_for(lambda s: s.version > snap.version + 3)  # a few publishes later ...
    assert session.snapshot.iteration == it  # ... still not training
    eventually(lambda: studio.panel.buttons["pause"].disabled and not studio.panel.buttons["resume"].disabled,
               what="transport buttons follow the pause")
    client.click(studio.panel.buttons["step"])
    session.wait_for(lambda s: s.iteration == it + 1)
    client.click(studio.panel.buttons["resume"])
    session.wait_for(lambda s: not s.paused and s.iteration > it + 2)


def test_splats_follow_snapshots_and_are_not_resent_while_paused(env):
    session, studio, client = env
    client.click(studio.panel.buttons["pause"])
    session.wait_for(lambda s: s.paused)
    eventually(lambda: not studio.scene._changed(studio.scene._last_splats, session.snapshot.splats),
               what="the paused scene shown")
    handle = studio.scene._splats
    np.testing.assert_allclose(handle.centers, session.snapshot.splats.means, rtol=0, atol=0)
    sends = studio.scene.splat_sends
    refreshes = studio.refresh_count
    eventually(lambda: studio.refresh_count > refreshes + 5, what="more UI refreshes")
    assert studio.scene.splat_sends == sends  # new snapshot versions, same splats: nothing re-sent
    client.click(studio.panel.buttons["resume"])
    eventually(lambda: studio.scene.splat_sends > sends, what="splats re-sent once training resumed")


def test_second_tab_sees_the_same_session(env):
    session, studio, client = env
    other = WireClient(studio.port)
    try:
        ds = widget(studio, "ism.delta_s")
        other.wait_for("GuiSliderMessage", lambda m: m["uuid"] == ds._impl.uuid)  # tab 2 got the panel
        client.set_value(ds, 150)
        session.wait_for(lambda s: s.config.ism.delta_s == 150)
        other.wait_for("GuiUpdateMessage", lambda m: m["uuid"] == ds._impl.uuid and m["updates"].get("value") == 150)
        # A change from elsewhere (a script, a checkpoint) reaches both tabs' widgets too.
        session.send(C.UpdateSettings({"ism.delta_s": 220}))
        for c in (client, other):
            c.wait_for("GuiUpdateMessage", lambda m: m["uuid"] == ds._impl.uuid and m["updates"].get("value") == 220)
    finally:
        other.close()


def test_export_buttons_write_files_and_offer_them_as_downloads(env):
    session, studio, client = env
    client.click(studio.panel.buttons["export:ply"])
    name, content = client.download(".ply")
    path = session.out_dir / name
    assert path.read_bytes() == content
    scene = read_gaussian_ply(path)
    assert scene["means"].shape == (SMALL["init.num"], 3) and torch.isfinite(scene["means"]).all()
    client.click(studio.panel.buttons["checkpoint"])
    ckpt_name, ckpt = client.download(".pt")
    assert (session.out_dir / ckpt_name).read_bytes() == ckpt
    # Loading it back through the path field and button continues from its iteration.
    studio.panel.load_path.value = str(session.out_dir / ckpt_name)
    client.click(studio.panel.load_button)
    client.wait_notification(f"resumed {ckpt_name}")
    # Uploading the PLY from "this computer" continues from it; a file of another kind is refused.
    client.upload(studio.panel.upload, "from_disk.ply", content)
    client.wait_notification(f"loaded {SMALL['init.num']} Gaussians from from_disk.ply")
    assert (session.out_dir / "uploads" / "from_disk.ply").read_bytes() == content
    client.upload(studio.panel.upload, "notes.txt", b"hello")
    assert client.wait_notification("notes.txt is neither")["color"] == "red"


def test_failed_step_and_unwritable_export_are_notifications_not_a_dead_page(env):
    session, studio, client = env
    client.click(studio.panel.buttons["pause"])
    session.wait_for(lambda s: s.paused)
    real_step = session.trainer.step

    def broken_step():
        raise RuntimeError("injected failure 7431")

    session.trainer.step = broken_step
    try:
        client.click(studio.panel.buttons["step"])
        note = client.wait_notification("injected failure 7431")
        assert note["color"] == "red"
    finally:
        session.trainer.step = real_step
    blocker = session.out_dir / "a_file"
    blocker.write_text("not a folder")
    real_out = session.out_dir
    session.out_dir = blocker / "exports"
    try:
        client.click(studio.panel.buttons["export:splat"])
        assert client.wait_notification("a_file is a file")["color"] == "red"
    finally:
        session.out_dir = real_out
    client.click(studio.panel.buttons["resume"])
    it = session.snapshot.iteration
    session.wait_for(lambda s: s.iteration > it + 1 and s.last_error is None)
    assert studio.refresh_errors == 0


def test_preset_picker_and_continue_at_the_end_of_the_plan(env):
    session, studio, client = env
    picker = studio.panel.pickers["preset"][1]
    client.set_value(picker, "stein")
    session.wait_for(lambda s: s.config.run.method == "ssd" and s.method == "ssd")
    assert all(confio.get_path(session.config, p) == v for p, v in method_preset_values("ssd").items())
    eventually(lambda: picker.value == "stein" and studio.panel.folders["SSD"].visible, what="stein shown")
    client.set_value(widget(studio, "ssd.guidance_scale"), 9.0)  # a field of the preset: it no longer matches
    eventually(lambda: picker.value == "custom", what="picker says custom")

    session.send(C.Pause())  # a snapshot trails the worker by a step or more: read the iteration paused
    it = session.wait_for(lambda s: s.paused).iteration
    session.send(C.UpdateSettings({"run.steps": it + 3}))
    session.send(C.Resume())
    done = session.wait_for(lambda s: s.done and s.paused, timeout=60)
    assert done.iteration == it + 3 and "done" in common.status_line(done)
    buttons = studio.panel.buttons
    eventually(lambda: not buttons["continue"].disabled and buttons["pause"].disabled
               and buttons["resume"].disabled, what="only Continue offered at the plan's end")
    client.click(buttons["continue"])
    session.wait_for(lambda s: s.planned_steps == 2 * (it + 3) and s.iteration > it + 4 and not s.paused)
    assert buttons["continue"].disabled or not session.snapshot.done
    session.send(C.UpdateSettings({"run.steps": 100_000}))
    client.set_value(picker, "sds")  # a preset picked while running leaves the plan alone
    session.wait_for(lambda s: s.method == "sds" and s.planned_steps == 100_000)


def recording_sends(session):
    """Wrap session.send to record every command it accepts or refuses; returns (list, undo)."""
    sent, real = [], session.send

    def send(cmd):
        sent.append(cmd)
        return real(cmd)

    session.send = send
    return sent, lambda: setattr(session, "send", real)


def test_a_slider_dragged_or_typed_commits_once_when_it_settles(env, monkeypatch):
    session, studio, client = env
    cfg = widget(studio, "sds.guidance_scale")
    sent, undo = recording_sends(session)
    try:
        for value in (5.0, 50.0, 150.0):  # typing "150" (or a drag): the page sends every value
            client.set_value(cfg, value)
            time.sleep(0.05)
        eventually(lambda: session.config.sds.guidance_scale == 150.0, what="the settled value applied")
        time.sleep(viser_panel.COMMIT_QUIET_S + 0.3)
        edits = [c for c in sent if isinstance(c, C.UpdateSettings) and "sds.guidance_scale" in c.values]
        assert [c.values["sds.guidance_scale"] for c in edits] == [150.0]
        # An edit is held while it moves: a drag that keeps going commits nothing.
        monkeypatch.setattr("studio.ui.viser_panel.COMMIT_QUIET_S", 60.0)
        client.set_value(cfg, 12.0)
        eventually(lambda: "sds.guidance_scale" in studio.panel.pending, what="the edit held")
        time.sleep(1.0)
        assert session.config.sds.guidance_scale == 150.0
        monkeypatch.undo()
        eventually(lambda: session.config.sds.guidance_scale == 12.0, what="committed once still")
    finally:
        undo()
    # A refused typed value is answered, and the widget goes back to what the session has.
    client.set_value(cfg, 5000.0)
    note = client.wait_notification("sds.guidance_scale")
    assert note["color"] == "red"
    eventually(lambda: cfg.value == 12.0, what="slider reverted")
    assert session.config.sds.guidance_scale == 12.0


def test_known_prompts_are_choices_and_a_refused_prompt_reverts_the_box(env):
    session, studio, client = env
    picker = studio.panel.pickers["known_prompt"][1]
    assert "a ball" in picker.options and picker.visible
    client.set_value(picker, "a ball")
    session.wait_for(lambda s: s.prompt == "a ball")
    assert client.wait_notification("now optimizing “a ball”")["color"] == "green"
    eventually(lambda: widget(studio, "prompt.prompt").value == "a ball", what="the box shows the pick")
    eventually(lambda: any("a ball" in m["source"] and "document.title" in m["source"]
                           for m in client.received("RunJavascriptMessage")), what="the page title follows")
    prompt = widget(studio, "prompt.prompt")
    client.set_value(prompt, "a purple elephant")
    eventually(lambda: prompt.value == "a purple elephant")
    client.click(studio.panel.buttons["apply_prompt"])
    assert client.wait_notification("purple elephant")["color"] == "red"
    eventually(lambda: prompt.value == "a ball", what="the refused prompt replaced by the one in use")
    client.set_value(picker, "a red cube")
    session.wait_for(lambda s: s.prompt == "a red cube")


def test_step_once_while_training_pauses_then_steps(env):
    session, studio, client = env
    client.click(studio.panel.buttons["resume"])
    session.wait_for(lambda s: not s.paused)
    client.click(studio.panel.buttons["step"])
    snap = session.wait_for(lambda s: s.paused)
    it = snap.iteration
    session.wait_for(lambda s: s.version > snap.version + 3)
    assert session.snapshot.iteration in (it, it + 1) and session.snapshot.paused
    client.click(studio.panel.buttons["resume"])
    session.wait_for(lambda s: not s.paused)


def test_view_settings_render_mode_and_live_splat_cap(env):
    session, studio, client = env
    client.set_value(widget(studio, "view.mode"), "alpha")
    eventually(lambda: studio.view.mode == "alpha" and studio.live.mode == "alpha", what="alpha mode")
    snap = session.wait_for(lambda s: "alpha" in s.previews)
    alpha, rgb = snap.previews["alpha"], snap.previews["rgb"]
    assert alpha.shape == rgb.shape and not np.array_equal(alpha, rgb)
    assert (alpha[..., 0] == alpha[..., 1]).all()  # grey
    client.set_value(widget(studio, "view.mode"), "rgb")
    # Fewer splats while training, all of them once paused.
    client.set_value(widget(studio, "view.live_splats"), 100)
    eventually(lambda: studio.scene._last_splats is not None and studio.scene._last_splats[0].shape[0] == 100,
               what="100 splats sent while training")
    sent = studio.scene._last_splats
    full = studio.scene._source
    top = np.sort(full[4].reshape(-1))[-100:]
    np.testing.assert_array_equal(np.sort(sent[4].reshape(-1)), top)  # the most opaque ones
    client.click(studio.panel.buttons["pause"])
    session.wait_for(lambda s: s.paused)
    eventually(lambda: studio.scene._last_splats[0].shape[0] == SMALL["init.num"], what="all splats when paused")
    client.set_value(widget(studio, "view.live_splats"), -5)
    assert client.wait_notification("view.live_splats")["color"] == "red"
    eventually(lambda: widget(studio, "view.live_splats").value == 100, what="reverted")
    client.set_value(widget(studio, "view.live_splats"), 20_000)
    client.click(studio.panel.buttons["resume"])


def test_splat_updates_wait_for_a_page_that_has_not_taken_the_last_one(env):
    session, studio, client = env
    scene = studio.scene
    session.wait_for(lambda s: not s.paused)
    slow = WireClient(studio.port, answer_reads=False)
    old_timeout = scene.pacer.timeout
    scene.pacer.timeout = 3.0
    try:
        eventually(lambda: len(studio.server.get_clients()) == 2, what="the second page connected")
        sends = scene.splat_sends
        eventually(lambda: scene.splat_sends > sends, what="an update")
        t0, sends = time.monotonic(), scene.splat_sends
        eventually(lambda: scene.splat_sends > sends, timeout=10, what="the next update")
        assert time.monotonic() - t0 > 2.0  # held until the silent page's wait ran out, not sent at 2 Hz
        slow.close()
        eventually(lambda: len(studio.server.get_clients()) == 1, what="the silent page gone")
        time.sleep(scene.pacer.timeout)
        t0, sends = time.monotonic(), scene.splat_sends
        eventually(lambda: scene.splat_sends >= sends + 3, timeout=10, what="updates at the page's pace")
        assert time.monotonic() - t0 < 2.5 + 3 / studio.view.splat_hz
        assert scene.pacer.last_rtt is not None and scene.pacer.last_rtt < 1.0
    finally:
        scene.pacer.timeout = old_timeout


def test_page_identity_and_one_click_downloads(env):
    session, studio, client = env
    assert any("Gaussian Dreamer Studio" in m["source"] and "rel = 'icon'" in m["source"]
               for m in client.received("RunJavascriptMessage"))
    from PIL import Image
    import io

    from studio.ui.viser_ui import favicon_png
    icon = Image.open(io.BytesIO(favicon_png()))
    assert icon.size == (32, 32) and icon.mode == "RGBA"
    client.click(studio.panel.buttons["export:gif"])
    client.download(".gif", timeout=60)
    start = [m for m in client.received("FileTransferStartDownload") if m["filename"].endswith(".gif")]
    assert start and start[-1]["save_immediately"] is True


# ----- shared front-end logic and the scene's math ---------------------------------------------------
def test_button_and_load_commands():
    assert common.button_command("pause") == C.Pause()
    assert common.button_command("step") == C.StepOnce(1)
    assert common.button_command("export:mp4") == C.Export(formats=("mp4",))
    assert common.button_command("checkpoint") == C.SaveCheckpoint()
    with pytest.raises(ValueError, match="unknown button action"):
        common.button_command("explode")
    assert common.load_command(" run/ckpt.pt ") == C.LoadCheckpoint("run/ckpt.pt")
    assert common.load_command("scene.PLY") == C.LoadPly("scene.PLY")
    with pytest.raises(C.CommandError, match="neither"):
        common.load_command("notes.txt")
    with pytest.raises(C.CommandError, match="type the path"):
        common.load_command("  ")


def test_plot_series_thins_by_block_means_and_drops_nonfinite():
    from dataclasses import replace

    session_free = _fake_snapshot({"loss": tuple((i, float(i)) for i in range(1000)) + ((1000, math.nan),)})
    x, y = common.plot_series(session_free, "loss", max_points=100)
    assert len(x) == 100
    np.testing.assert_allclose(x[:3], [4.5, 14.5, 24.5])  # means of blocks of 10 steps
    np.testing.assert_allclose(y, x)
    x, y = common.plot_series(replace(session_free, metrics={}), "loss")
    assert x.shape == (0,) and y.shape == (0,)


def _fake_snapshot(metrics):
    from studio.snapshot import Snapshot

    return Snapshot(version=1, iteration=1500, planned_steps=600, segment=1, done=True, elapsed=3725.0,
                    its=7.25, paused=False,
                    method="sds", prompt="a cube", negative="", num_gaussians=12345, metrics=metrics,
                    latest={"mu": 0.5}, splats=None, preview=None, previews={}, reference=None, cameras=None, config=None,
                    events=(), last_error=None, publish_ms=0.0)


def test_status_line_progress_and_events():
    from dataclasses import replace

    from studio.snapshot import Event

    snap = _fake_snapshot({})
    assert common.status_line(snap) == "running · it 1,500 / 600 · 7.2 it/s · 12,345 Gaussians · 1:02:05"
    assert common.progress_percent(snap) == 100.0
    assert common.progress_percent(replace(snap, iteration=150)) == 25.0
    e1, e2 = Event(1, "info", "a"), Event(2, "error", "b")
    tracker = common.EventTracker(replace(snap, events=(e1,)))
    assert tracker.new(replace(snap, events=(e1, e2))) == [e2]
    assert tracker.new(replace(snap, events=(e1, e2))) == []


def test_covariances_match_the_reference_rotation():
    g = torch.Generator().manual_seed(0)
    quats = torch.nn.functional.normalize(torch.randn(50, 4, generator=g), dim=-1)
    scales = torch.rand(50, 3, generator=g) + 0.05
    R = quat_to_rotmat(quats).double()
    expected = R @ torch.diag_embed(scales.double() ** 2) @ R.transpose(-1, -2)
    got = covariances(scales.numpy(), quats.numpy())
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-7)


def test_camera_to_world_inverts_look_at():
    eye = torch.tensor([[2.0, -1.0, 1.5]])
    viewmat = look_at(eye, torch.zeros(1, 3))[0].numpy()  # [4, 4] world-to-camera
    wxyz, pos = camera_to_world(viewmat)
    np.testing.assert_allclose(pos, eye[0].numpy(), atol=1e-5)
    import viser.transforms as vtf

    forward = vtf.SO3(wxyz).as_matrix() @ np.array([0.0, 0.0, 1.0])  # OpenCV +z looks at the target
    np.testing.assert_allclose(forward, -eye[0].numpy() / np.linalg.norm(eye[0].numpy()), atol=1e-5)


def test_preview_composition():
    a = np.zeros((32, 32, 3), np.uint8)
    b = np.full((64, 64, 3), 7, np.uint8)
    both = side_by_side(a, b, gap=4)
    assert both.shape == (32, 68, 3) and both[0, 40, 0] == 7 and both[0, 33, 0] == 255
    assert upscale(both, 256).shape == (256, 68 * 8, 3)


# ----- python app.py ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_serves_the_browser_studio_by_default_and_quits_on_ctrl_c(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--out", str(tmp_path), "--resolution", "16",
         "--batch", "1", "--set", "init.num=100"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        eventually(lambda: any(f"open http://127.0.0.1:{port}" in line for line in lines) or proc.poll() is not None,
                   timeout=90, what="the studio's address printed")
        assert proc.poll() is None, "".join(lines)[-3000:]
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10).status == 200
        eventually(lambda: any(len(p.read_text().splitlines()) >= 2 for p in tmp_path.glob("run-*/metrics.jsonl")),
                   timeout=90, what="two training steps in the run folder")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        reader.join(5)
        text = "".join(lines)
        assert rc == 0, text[-3000:]
        assert "stopping" in text
        # Ctrl-C saved the scene: a checkpoint in the run folder, named in the output, that loads.
        saved = next(line for line in lines if "checkpoint written to" in line)
        ckpt = Path(saved.split("checkpoint written to ")[1].split(" (")[0])
        assert ckpt.parent.parent == tmp_path and ckpt.parent.name.startswith("run-")
        payload = torch.load(ckpt, weights_only=True)
        assert payload["trainer"]["iteration"] >= 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
