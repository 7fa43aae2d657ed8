"""The browser studio: a viser server showing a running Session.

Threads: the session's worker trains; viser's event loop and thread pool serve clients and run widget
callbacks (which only `session.send`); one UI thread here polls `session.snapshot` at ~10 Hz and pushes
what changed (status, images, plots at a few Hz, splats only when they changed and at most `splat_hz`).
So the training loop never waits on the browser.

`serve(session, host, port)` runs it until Ctrl-C (what `python app.py` does); `ViserStudio` has
start()/stop() for tests and scripts.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import viser

from .. import commands as C
from ..export import SUFFIXES
from ..session import Session
from ..snapshot import Event
from .common import EventTracker, progress_percent, status_parts
from .viser_panel import PanelView
from .viser_scene import LiveView, SceneView

LEVEL_COLOURS = {"info": "green", "warning": "yellow", "error": "red"}
LEVEL_TITLES = {"info": "Done", "warning": "Warning", "error": "Error"}
DOWNLOAD_LIMIT = 256 * 1024 * 1024  # larger exports stay on disk (the notification names the path)


class ViserStudio:
    """The browser front-end of one session.

    Args:
        session: the session to show and drive (started or not; the caller starts and stops it).
        host: address to bind; 127.0.0.1 keeps it on this machine (there is no authentication).
        port: port to bind; 0 picks a free one (see `.port` after start()).
        poll_hz: how often the UI thread reads the snapshot.
        splat_hz: most 3D-scene updates (splats and frusta) sent per second. Each is 32 bytes per Gaussian
            per client, and makes the page re-sort and redraw for a quarter second: cheap on a GPU, but
            a software-WebGL page on a small CPU machine spends about that share of a core on it.
    """

    def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 8080, *,
                 poll_hz: float = 10.0, splat_hz: float = 2.0, verbose: bool = False):
        self.session, self.host, self.requested_port = session, host, port
        self.poll_period, self.splat_hz, self.verbose = 1.0 / poll_hz, splat_hz, verbose
        self.server: viser.ViserServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._downloads: deque[tuple[int | None, str]] = deque()  # (client id, file suffix) awaited
        self._downloads_lock = threading.Lock()
        self._last_version = -1
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
        server = viser.ViserServer(host=self.host, port=self.requested_port, verbose=self.verbose,
                                   label="Gaussian Dreamer Studio")
        self.server = server
        server.gui.configure_theme(show_share_button=False, brand_color=(66, 99, 235), control_width="medium")
        server.initial_camera.position = (2.2, -2.2, 1.55)
        server.initial_camera.look_at = (0.0, 0.0, 0.0)
        server.initial_camera.fov = 0.75
        snap = self.session.snapshot
        self.events = EventTracker(snap)
        self.scene = SceneView(server, splat_hz=self.splat_hz)
        self._build_gui(server)
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="studio-viser-ui", daemon=True)
        self._thread.start()
        return self

    def _build_gui(self, server: viser.ViserServer) -> None:
        gui = server.gui
        self.status = gui.add_markdown("")
        self.progress = gui.add_progress_bar(0.0, color="blue")
        self.panel = PanelView(server, self.session, self.notify, self._expect_download)
        with gui.add_folder("View", expand_by_default=False):
            frusta = gui.add_checkbox("Training cameras", True, hint="the cameras of the last batch")
            frusta.on_update(lambda _: self.scene.set_frusta_visible(frusta.value))
            grid = gui.add_checkbox("Ground grid", True)
            grid.on_update(lambda _: setattr(self.scene.grid, "visible", grid.value))
        gui.main_panel.dock_right()
        gui.main_panel.set_width(340)
        live = gui.add_panel()
        with live.add_tab("Live", viser.Icon.CHART_LINE):
            self.live = LiveView(server)
        live.dock_left()
        live.set_width(330)

    def stop(self) -> None:
        """Stop the UI thread and the server (the session keeps running; stop it yourself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
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
            for event in self.events.new(snap):
                self._show_event(event)
        # Rate-limited inside, so also called for an unchanged snapshot: what a limit held back goes out
        # later even if no new snapshot comes (a stopped session).
        self.scene.update(snap)
        self.live.update(snap)

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
            client.send_file_download(path.name, path.read_bytes())
        except OSError as e:
            self.notify(client, "Download", f"could not read {path}: {e.strerror}", "error")


def serve(session: Session, host: str = "127.0.0.1", port: int = 8080,
          stop: threading.Event | None = None) -> int:
    """Run the browser studio until Ctrl-C / SIGTERM (`stop`, see studio.signals): start training, print
    the address, block; on the way out stop the worker and write a checkpoint if the scene changed.

    Returns the exit status (0 after a stop request, 1 if the port cannot be bound)."""
    from ..run import save_on_exit

    stop = stop or threading.Event()
    studio: ViserStudio | None = None
    status = 0
    try:
        studio = ViserStudio(session, host, port).start()
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
