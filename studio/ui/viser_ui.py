"""The browser studio: a viser server showing a running Session.

Threads: the session's worker trains; viser's event loop and thread pool serve clients and run widget
callbacks (which only `session.send`); one UI thread here polls `session.snapshot` at ~10 Hz and pushes
what changed (status, images, plots at a few Hz, splats only when they changed and the pages have taken
the last ones: viser_scene.py). So the training loop never waits on the browser, and the page never
falls behind the session.

`serve(session, host, port)` runs it until Ctrl-C (what `python app.py` does); `ViserStudio` has
start()/stop() for tests and scripts.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
import traceback
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import viser

from .. import commands as C
from ..export import SUFFIXES
from ..session import Session
from ..snapshot import Event
from ..view import ViewSettings
from .common import EventTracker, progress_percent, status_parts, window_title
from .viser_guard import UPLOAD_LIMIT, OriginGuard, guarded_serving
from .viser_panel import PanelView
from .viser_scene import LiveView, SceneView

LEVEL_COLOURS = {"info": "green", "warning": "yellow", "error": "red"}
LEVEL_TITLES = {"info": "Done", "warning": "Warning", "error": "Error"}
DOWNLOAD_LIMIT = 256 * 1024 * 1024  # larger exports stay on disk (the notification names the path)


@lru_cache(maxsize=1)
def favicon_png() -> bytes:
    """The studio's 32 px icon: three soft Gaussian blobs (blue, orange, green) on transparent ground."""
    from PIL import Image

    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) + 0.5
    rgba = np.zeros((32, 32, 4), np.float32)
    for (cx, cy, sx, sy), colour in (((12, 13, 7, 5), (66, 99, 235)), ((21, 12, 5, 6), (232, 89, 12)),
                                     ((17, 22, 8, 5), (43, 138, 62))):
        a = 0.95 * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None]
        rgba[..., :3] = rgba[..., :3] * (1 - a) + np.asarray(colour, np.float32) * a  # "over" compositing
        rgba[..., 3:] = rgba[..., 3:] * (1 - a) + 255.0 * a
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def page_identity_js(title: str) -> str:
    """JavaScript that gives the page the studio's title and icon (viser's page says "Viser")."""
    icon = "data:image/png;base64," + base64.b64encode(favicon_png()).decode()
    return ("document.title = " + repr(title) + ";"
            "document.querySelectorAll(\"link[rel~='icon']\").forEach(l => l.remove());"
            "const l = document.createElement('link'); l.rel = 'icon'; l.type = 'image/png';"
            f"l.href = '{icon}'; document.head.appendChild(l);")


class ViserStudio:
    """The browser front-end of one session.

    Args:
        session: the session to show and drive (started or not; the caller starts and stops it).
        host: address to bind; 127.0.0.1 keeps it on this machine (there is no authentication).
        port: port to bind; 0 picks a free one (see `.port` after start()).
        poll_hz: how often the UI thread reads the snapshot.
        view: the viewer settings (view.splat_hz, view.live_splats, view.mode); the View folder changes
            them live.
        allow_origins: origins (scheme://host[:port]) besides the studio's own whose pages may connect
            (viser_guard.py: any other page is refused)
        upload_limit: the most bytes one upload may have
    """

    def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 8080, *,
                 poll_hz: float = 10.0, view: ViewSettings = ViewSettings(), verbose: bool = False,
                 allow_origins: tuple[str, ...] = (), upload_limit: int = UPLOAD_LIMIT):
        self.session, self.host, self.requested_port = session, host, port
        self.guard, self.upload_limit = OriginGuard(tuple(allow_origins)), upload_limit
        self.poll_period, self.verbose = 1.0 / poll_hz, verbose
        self._view = view.validate()
        self.server: viser.ViserServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._downloads: deque[tuple[int | None, str]] = deque()  # (client id, file suffix) awaited
        self._downloads_lock = threading.Lock()
        self._last_version = -1
        self._title = ""
        self._updating = True
        self.refresh_count = 0
        self.refresh_errors = 0

    @property
    def port(self) -> int:
        assert self.server is not None, "start() the studio first"
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    # ----- life cycle -------------------------------------------------------------------------------
    def start(self) -> "ViserStudio":
        """Bind the server, build the page and start the UI thread (returns at once)."""
        with guarded_serving(self.guard):
            server = viser.ViserServer(host=self.host, port=self.requested_port, verbose=self.verbose,
                                       label="Gaussian Dreamer Studio")
        self.server = server
        server.gui.configure_theme(show_share_button=False, brand_color=(66, 99, 235), control_width="medium")
        server.initial_camera.position = (2.2, -2.2, 1.55)
        server.initial_camera.look_at = (0.0, 0.0, 0.0)
        server.initial_camera.fov = 0.75
        snap = self.session.snapshot
        self.events = EventTracker(snap)
        self.scene = SceneView(server, self._view)
        self._build_gui(server)
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="studio-viser-ui", daemon=True)
        self._thread.start()
        return self

    def _build_gui(self, server: viser.ViserServer) -> None:
        gui = server.gui
        self.status = gui.add_markdown("")
        self.progress = gui.add_progress_bar(0.0, color="blue")
        self.panel = PanelView(server, self.session, self.notify, self._expect_download, self._view,
                               self.set_view, page_delay=lambda: min(self.scene.pacer.last_rtt or 0.0, 5.0),
                               upload_limit=self.upload_limit)
        with gui.add_folder("View", expand_by_default=False):
            frusta = gui.add_checkbox("Training cameras", True, hint="the cameras of the last batch")
            frusta.on_update(lambda _: self.scene.set_frusta_visible(frusta.value))
            grid = gui.add_checkbox("Ground grid", True)
            grid.on_update(lambda _: setattr(self.scene.grid, "visible", grid.value))
        gui.main_panel.dock_right()
        gui.main_panel.set_width(340)
        live = gui.add_panel()
        with live.add_tab("Live", viser.Icon.CHART_LINE):
            self.live = LiveView(server, mode=self._view.mode)
        live.dock_left()
        live.set_width(330)

    @property
    def view(self) -> ViewSettings:
        return self._view

    def set_view(self, view: ViewSettings) -> None:
        """New viewer settings (validated by the caller), in effect from the next poll."""
        self._view = view
        self.scene.view = view
        self.live.mode = view.mode

    def stop(self) -> None:
        """Stop the UI thread and the server (the session keeps running; stop it yourself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if getattr(self, "scene", None) is not None:
            self.scene.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> "ViserStudio":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- the UI thread ----------------------------------------------------------------------------
    def set_updates(self, enabled: bool) -> None:
        """Stop (False) or restart pushing snapshots to the pages; server and widgets stay up. The viewer
        benchmark uses it to time the same session with and without the studio's work."""
        self._updating = enabled

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_period):
            if not self._updating:
                continue
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 -- a bad frame must not freeze the page; count and report it
                self.refresh_errors += 1
                if self.refresh_errors <= 3:
                    print(f"studio: UI update failed:\n{traceback.format_exc(limit=4)}", file=sys.stderr)

    def refresh(self) -> None:
        """One poll of the UI thread: show what changed since the last snapshot."""
        self.panel.sync()
        snap = self.session.snapshot
        if snap.version != self._last_version:
            self._last_version = snap.version
            self.refresh_count += 1
            state, *rest = status_parts(snap)
            self.status.content = " · ".join([f"**{state.capitalize()}**", *rest])
            self.progress.value = progress_percent(snap)
            self.panel.update(snap)
            if snap.prompt != self._title:
                self._set_title(snap.prompt)
            for event in self.events.new(snap):
                self._show_event(event)
        # Rate-limited inside, so also called for an unchanged snapshot: what a limit held back goes out
        # later even if no new snapshot comes (a stopped session).
        self.scene.update(snap)
        self.live.update(snap)

    def _set_title(self, prompt: str) -> None:
        """Page title and icon; the message is kept by viser and replayed to pages that connect later."""
        assert self.server is not None
        self._title = prompt
        # viser has no public call for page JavaScript; its plotly support queues this message the same way.
        from viser import _messages

        self.server._websock_server.queue_message(_messages.RunJavascriptMessage(
            source=page_identity_js(window_title(prompt))))

    # ----- notifications and downloads --------------------------------------------------------------
    def notify(self, client: Any, title: str, body: str, level: str = "info") -> None:
        """A notification in one client's page, or in every page when client is None."""
        if self.server is None:
            return
        targets = [client] if client is not None else list(self.server.get_clients().values())
        for c in targets:
            c.add_notification(title, body, color=LEVEL_COLOURS.get(level, "blue"),
                               auto_close_seconds=None if level == "error" else 6.0)

    def _expect_download(self, client: Any, cmd: C.Command) -> None:
        """Remember who asked for an export, to offer them the file when its event arrives."""
        if isinstance(cmd, C.Export):
            suffixes = [SUFFIXES[f] for f in cmd.formats]
        else:
            suffixes = [SUFFIXES["checkpoint"]]
        with self._downloads_lock:
            for suffix in suffixes:
                self._downloads.append((getattr(client, "client_id", None), suffix))

    def _show_event(self, event: Event) -> None:
        self.notify(None, LEVEL_TITLES.get(event.level, "Studio"), event.text, event.level)
        if event.path is None or event.level != "info":
            return
        with self._downloads_lock:
            match = next((d for d in self._downloads if event.path.endswith(d[1])), None)
            if match is None:
                return
            self._downloads.remove(match)
        self._offer(match[0], Path(event.path))

    def _offer(self, client_id: int | None, path: Path) -> None:
        assert self.server is not None
        client = self.server.get_clients().get(client_id) if client_id is not None else None
        if client is None:
            return  # the tab that asked has gone; the file stays in the output folder
        try:
            size = path.stat().st_size
            if size > DOWNLOAD_LIMIT:
                self.notify(client, "Download", f"{path.name} is {size >> 20} MB; it stays at {path}", "warning")
                return
            client.send_file_download(path.name, path.read_bytes(), save_immediately=True)
        except OSError as e:
            self.notify(client, "Download", f"could not read {path}: {e.strerror}", "error")


def serve(session: Session, host: str = "127.0.0.1", port: int = 8080,
          stop: threading.Event | None = None, view: ViewSettings = ViewSettings(),
          allow_origins: tuple[str, ...] = ()) -> int:
    """Run the browser studio until Ctrl-C / SIGTERM (`stop`, see studio.signals): start training, print
    the address, block; on the way out stop the worker and write a checkpoint if the scene changed.

    Returns the exit status (0 after a stop request, 1 if the port cannot be bound)."""
    from ..run import save_on_exit

    stop = stop or threading.Event()
    studio: ViserStudio | None = None
    status = 0
    try:
        studio = ViserStudio(session, host, port, view=view, allow_origins=allow_origins).start()
        session.start()
        session.send(C.Resume())
        print(f"Gaussian Dreamer Studio: open {studio.url} in a browser (Ctrl-C to quit)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("\nstopping...", file=sys.stderr)
    except OSError as e:
        print(f"error: cannot serve on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        status = 1
    finally:
        if studio is not None:
            studio.stop()
        session.stop()
    if not session.running:
        save_on_exit(session, "stopped")
    return status
