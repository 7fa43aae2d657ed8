"""What a web page may do to the browser studio (studio/ui/viser_guard.py), against a real server.

A page on another origin (any site the user visits) must not drive the studio: its websocket and its
requests are refused, the studio's own page and non-browser clients are not. Paths typed into the page
stay inside the output folder; uploads stream to disk under a size limit and never grow the server's
memory past it.
"""

from __future__ import annotations

import http.client
import os
import tracemalloc

import pytest
from websockets.exceptions import InvalidStatus

import studio.commands as C
from studio.config import default_config, with_values
from studio.session import Session
from studio.ui.viser_guard import OriginGuard, confined, normalize_origin, upload_name
from studio.ui.viser_ui import ViserStudio
from viser_wire import WireClient

SMALL = {"render.resolution": 32, "render.batch": 2, "init.num": 200, "densify.enabled": False,
         "run.psnr_every": 10}
LIMIT = 8 * 2**20


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard") / "run-20260101-000000"
    session = Session(with_values(default_config("sds"), SMALL), out, paused=True)
    studio = ViserStudio(session, port=0, upload_limit=LIMIT, allow_origins=("https://proxy.example",)).start()
    session.start()
    yield session, studio
    studio.stop()
    session.stop()


@pytest.fixture
def client(env):
    c = WireClient(env[1].port, origin=f"http://127.0.0.1:{env[1].port}")
    yield c
    c.close()


# ----- origins ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("host, origin, ok", [
    ("127.0.0.1:8080", "http://127.0.0.1:8080", True),       # the studio's own page
    ("localhost:8080", "http://localhost:8080", True),
    ("[::1]:8080", "http://[::1]:8080", True),
    ("192.168.1.5:8080", "http://192.168.1.5:8080", True),   # shared with --host 0.0.0.0, opened by IP
    ("127.0.0.1:8080", None, True),                          # not a browser
    ("127.0.0.1:8080", "http://evil.example", False),        # any page the user visits
    ("127.0.0.1:8080", "http://127.0.0.1:9999", False),      # another local server's page
    ("127.0.0.1:8080", "null", False),                       # a sandboxed frame or a file:// page
    ("localhost:8080", "http://127.0.0.1:8080", False),      # same machine, another origin
    ("evil.example:8080", "http://evil.example:8080", False),  # DNS rebinding: same origin, foreign name
    ("evil.example:8080", None, False),
    ("127.0.0.1:8080", "https://proxy.example", True),       # --allow-origin
    ("proxy.example", "https://proxy.example", True),
    ("", None, False),
])
def test_origin_guard_answers_own_page_and_non_browsers_only(host, origin, ok):
    reason = OriginGuard(("https://proxy.example",)).refusal(host, origin)
    assert (reason is None) == ok, reason
    if not ok:
        assert "\n" not in reason


def test_allow_origin_values_are_checked():
    assert normalize_origin("HTTP://Box.Local:8080/") == "http://box.local:8080"
    for bad in ("box.local", "ftp://box", "http://box/path", "http://"):
        with pytest.raises(ValueError, match="--allow-origin"):
            normalize_origin(bad)


def test_cross_origin_websocket_is_refused_and_same_origin_works(env):
    session, studio = env
    with pytest.raises(InvalidStatus) as e:
        WireClient(studio.port, origin="http://evil.example")
    assert e.value.response.status_code == 403
    assert b"--allow-origin" in e.value.response.body
    # The studio's own page and an allowed origin connect and can drive the session.
    for origin in (f"http://127.0.0.1:{studio.port}", "https://proxy.example", None):
        c = WireClient(studio.port, origin=origin)
        try:
            c.wait_for("ThemeConfigurationMessage", timeout=20)
        finally:
            c.close()
    page = WireClient(studio.port, origin=f"http://127.0.0.1:{studio.port}")
    try:
        page.click(studio.panel.buttons["step"])
        session.wait_for(lambda s: s.iteration >= 1, 60)
    finally:
        page.close()


def _get(port: int, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_page_files_refuse_foreign_host_and_origin(env):
    port = env[1].port
    assert _get(port, {"Host": f"127.0.0.1:{port}"})[0] == 200
    status, body = _get(port, {"Host": f"rebind.example:{port}"})
    assert status == 403 and b"rebind.example" in body
    assert _get(port, {"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"})[0] == 403
    # A websocket upgrade with a foreign Host is refused the same way.
    status, _ = _get(port, {"Host": f"rebind.example:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert status == 403


# ----- paths from the page ----------------------------------------------------------------------------
def test_paths_from_the_page_stay_in_the_output_folder(env, client, tmp_path):
    session, studio = env
    outside = tmp_path / "secret.ply"
    outside.write_bytes(b"ply\n")
    for path in (str(outside), "/etc/passwd.ply", str(session.out_dir / ".." / ".." / "x.pt")):
        studio.panel.load_path.value = path
        client.click(studio.panel.load_button)
        assert client.wait_notification("outside the folders")["color"] == "red"
    # A symlink inside the output folder that points out is outside too.
    link = session.out_dir.parent / "link.ply"
    link.symlink_to(outside)
    with pytest.raises(C.CommandError, match="outside"):
        confined(link, studio.panel.open_roots())
    # A sibling run's file is inside: the check refuses it for what it is (no file), not where it is.
    sibling = session.out_dir.parent / "run-20250101-000000" / "checkpoint_5.pt"
    assert confined(sibling, studio.panel.open_roots()) == sibling.resolve()


def test_export_name_cannot_leave_the_output_folder(env):
    session, _ = env
    for name in ("../escaped", "a/b", "/tmp/abs", "..", "x\x00y"):
        with pytest.raises(C.CommandError, match="export: name"):
            session.send(C.Export(("ply",), name=name))
    assert not list(session.out_dir.parent.glob("escaped*"))


# ----- uploads ----------------------------------------------------------------------------------------
def test_upload_names_are_plain_file_names():
    assert upload_name("../../etc/scene.ply") == "scene.ply"
    assert upload_name("C:\\Users\\me\\scene.ply") == "scene.ply"
    assert upload_name("sce\x00ne.ply") == "scene.ply"
    for bad in ("", "..", "/", ".hidden.ply", "\x00"):
        with pytest.raises(C.CommandError, match="upload"):
            upload_name(bad)


def _leftovers(session) -> list[str]:
    folder = session.out_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_upload_in_parts_lands_whole_and_a_bad_name_is_answered(env, client):
    session, studio = env
    ckpt = session.out_dir / "for_upload.pt"
    session.send(C.SaveCheckpoint(str(ckpt)))
    session.wait_for(lambda s: ckpt.exists(), 30)
    data = ckpt.read_bytes()
    chunk = max(1, len(data) // 3 + 1)
    client.upload_parts(studio.panel.upload, "up.pt", [data[i:i + chunk] for i in range(0, len(data), chunk)])
    client.wait_notification("resumed up.pt")
    assert (session.out_dir / "uploads" / "up.pt").read_bytes() == data
    client.upload(studio.panel.upload, "bad\x00name.txt", b"x")
    assert client.wait_notification("neither")["color"] == "red"
    client.upload(studio.panel.upload, "\x00", b"x")
    client.wait_notification("not a usable file name")
    assert _leftovers(session) == ["up.pt"]


def test_oversized_upload_is_refused_without_growing_memory(env, client):
    session, studio = env
    part = os.urandom(2**20)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        # Announced over the limit: refused at the start; the 64 parts that follow anyway are dropped.
        client.upload_parts(studio.panel.upload, "huge.ply", (part for _ in range(64)), size_bytes=64 * 2**20,
                            part_count=64)
        assert "limit is 8 MB" in client.wait_notification("huge.ply")["body"]
        # Announced small, then sending far more: cut off once past what it announced.
        client.upload_parts(studio.panel.upload, "liar.ply", (part for _ in range(64)), size_bytes=4 * 2**20,
                            part_count=64)
        assert "more than" in client.wait_notification("liar.ply")["body"]
        client.ws.ping().wait(30)  # every part has reached the server
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < LIMIT, f"the server held {peak / 2**20:.1f} MB for uploads over an {LIMIT >> 20} MB limit"
    assert studio.panel.uploads.in_flight == 0
    assert "huge.ply" not in _leftovers(session) and "liar.ply" not in _leftovers(session)
    assert not [n for n in _leftovers(session) if ".upload-" in n]


def test_a_page_that_leaves_mid_upload_leaves_no_temporary_file(env):
    session, studio = env
    page = WireClient(studio.port, origin=f"http://127.0.0.1:{studio.port}")
    page.upload_parts(studio.panel.upload, "half.ply", [b"p" * 1000], size_bytes=5000, part_count=5)
    page.wait_for("FileTransferPartAck", lambda m: (m["transferred_bytes"], m["total_bytes"]) == (1000, 5000))
    assert studio.panel.uploads.in_flight == 1
    page.close()
    session.wait_for(lambda s: studio.panel.uploads.in_flight == 0, 20)
    assert not [n for n in _leftovers(session) if "half" in n]
