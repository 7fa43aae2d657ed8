"""What a web page may do to the browser studio: who may connect, which files it may open, what it may upload.

Any page the user visits can open ws://127.0.0.1:8080 from its own script; a browser sends that page's
Origin with the handshake but lets the connection through. So every request the server answers (the
page's files and the websocket) passes `OriginGuard` first:

- Host must name this machine the way a user types it: an IP literal, "localhost", this machine's host
  name, or a host named by an `--allow-origin` origin. (A DNS-rebinding page reaches 127.0.0.1 under
  its own name, and is refused here.)
- Origin, when sent (browsers always send it on websockets), must be the studio's own origin (the
  scheme-less host:port the request was sent to) or one of `--allow-origin`. Clients that are not
  browsers send none, and are let through: they could forge any header anyway.

A refused request gets 403 and a line saying what to add. `UploadReceiver` replaces viser's upload
handling (which buffers every part in memory before any size check): a declared size over the limit is
refused at once, parts are written in order to a temporary file beside the target, a client that sends
more than it declared is cut off, a disconnect removes its temporary file, and a complete file is renamed
into place. `confined` keeps a path typed into the page inside the folders the page may open.
"""

from __future__ import annotations

import http
import ipaddress
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

import viser
import websockets.asyncio.server
from viser import _messages

from .. import commands as C
from ..startup import normalize_origin
from .common import load_command

UPLOAD_LIMIT = 512 * 1024 * 1024
OUT_OF_ORDER_LIMIT = 64 * 1024 * 1024  # parts buffered ahead of a missing one (the page sends them in order)


# ----- origins ----------------------------------------------------------------------------------------
def _split_host(value: str) -> tuple[str, str]:
    """'Box:8080' -> ('box', '8080'); '[::1]:80' -> ('::1', '80'); no port -> ''."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if value.count(":") > 1:  # a bare IPv6 literal
        return value, ""
    host, _, port = value.partition(":")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class OriginGuard:
    """Decides, from a request's Host and Origin headers, whether the studio answers it.

    Args:
        allowed: extra origins (scheme://host[:port]) whose pages may connect, e.g. a reverse proxy's
    """

    allowed: tuple[str, ...] = ()
    names: frozenset[str] = field(default_factory=lambda: frozenset(
        {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", tuple(normalize_origin(o) for o in self.allowed))

    def refusal(self, host: str | None, origin: str | None) -> str | None:
        """None when the request may be answered, else the reason (one line)."""
        if not host:
            return "no Host header"
        name, port = _split_host(host)
        allowed_names = self.names | {urlsplit(o).hostname or "" for o in self.allowed}
        if not (_is_ip(name) or name in allowed_names):
            return (f"Host {host!r} is not this machine's address; open the studio by its IP address or "
                    f"localhost, or start it with --allow-origin http://{host}")
        if origin is None:
            return None  # not a browser
        try:
            normalized = normalize_origin(origin)
        except ValueError:
            return f"Origin {origin!r} may not drive the studio"
        if normalized in self.allowed:
            return None
        parts = urlsplit(normalized)
        default = {"http": "80", "https": "443"}[parts.scheme]
        if (parts.hostname or "", str(parts.port or default)) == (name, port or default):
            return None  # the studio's own page
        return (f"Origin {origin!r} may not drive the studio at {host}; start it with "
                f"--allow-origin {normalized} to let that page connect")

    def wrap(self, inner: Callable[..., Any] | None) -> Callable[..., Any]:
        """A websockets `process_request` that refuses first and then defers to `inner` (viser's)."""

        def process_request(connection: Any, request: Any) -> Any:
            reason = self.refusal(request.headers.get("Host"), request.headers.get("Origin"))
            if reason is not None:
                return connection.respond(http.HTTPStatus.FORBIDDEN, f"Gaussian Dreamer Studio: {reason}\n")
            return inner(connection, request) if inner is not None else None

        return process_request


_serve_lock = threading.Lock()


@contextmanager
def guarded_serving(guard: OriginGuard) -> Iterator[None]:
    """While a `viser.ViserServer` is constructed inside, its websocket server checks `guard` first.

    viser binds inside its constructor (it waits for the bind) through `websockets.asyncio.server.serve`
    and passes its page server as `process_request`, which websockets calls for every request, plain HTTP
    and websocket handshakes alike. Viser has no hook for it, so the factory is wrapped for that moment
    (one construction at a time)."""
    with _serve_lock:
        original = websockets.asyncio.server.serve

        def serve(*args: Any, **kwargs: Any) -> Any:
            kwargs["process_request"] = guard.wrap(kwargs.get("process_request"))
            return original(*args, **kwargs)

        websockets.asyncio.server.serve = serve  # type: ignore[assignment]
        try:
            yield
        finally:
            websockets.asyncio.server.serve = original  # type: ignore[assignment]


# ----- paths ------------------------------------------------------------------------------------------
def confined(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """`path` resolved (symlinks followed), if it lies inside one of `roots`; else CommandError."""
    roots = [Path(r).resolve() for r in roots]
    resolved = Path(path).expanduser().resolve()
    if any(resolved == r or r in resolved.parents for r in roots):
        return resolved
    listed = " or ".join(str(r) for r in roots)
    raise C.CommandError(f"path: {path} is outside the folders the browser may open ({listed}); "
                         f"upload the file instead, or copy it there")


def upload_name(name: str) -> str:
    """The file name an upload is saved under: its last path part, without control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", "..") or base.startswith("."):
        raise C.CommandError(f"upload: the name {name!r} is not a usable file name")
    return base[:200]


# ----- uploads ----------------------------------------------------------------------------------------
@dataclass
class _Transfer:
    client_id: int
    name: str
    target: Path
    temp: Path
    part_count: int
    size: int
    file: Any
    next_part: int = 0
    written: int = 0
    ahead: dict[int, bytes] = field(default_factory=dict)
    closed: bool = False  # discarded or finished: later parts are dropped
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ahead_bytes(self) -> int:
        return sum(len(p) for p in self.ahead.values())


class UploadReceiver:
    """Receives the uploads of one upload button, streaming them to disk (see the module docstring).

    Args:
        server: the viser server (its upload handlers are taken over for `button`)
        button: the upload button handle
        folder: where uploads go (called per upload: the run folder may change)
        on_done: (client, path) when a file is complete and in place
        on_refused: (client, message) when an upload is refused or cut off
        limit: the most bytes one upload may have
    """

    def __init__(self, server: viser.ViserServer, button: Any, folder: Callable[[], Path],
                 on_done: Callable[[Any, Path], None], on_refused: Callable[[Any, str], None],
                 limit: int = UPLOAD_LIMIT):
        self.server, self.uuid, self.folder = server, button._impl.uuid, folder
        self.on_done, self.on_refused, self.limit = on_done, on_refused, limit
        self._transfers: dict[str, _Transfer] = {}
        self._lock = threading.Lock()
        gui = server.gui
        self._iface = gui._websock_interface
        self._viser_start, self._viser_part = gui._handle_file_transfer_start, gui._handle_file_transfer_part
        self._iface.unregister_handler(_messages.FileTransferStartUpload, self._viser_start)
        self._iface.unregister_handler(_messages.FileTransferPart, self._viser_part)
        self._iface.register_handler(_messages.FileTransferStartUpload, self._start)
        self._iface.register_handler(_messages.FileTransferPart, self._part)
        server.on_client_disconnect(lambda client: self.drop_client(client.client_id))

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._transfers)

    def _client(self, client_id: int) -> Any:
        return self.server.get_clients().get(client_id)

    def _ack(self, transfer_uuid: str, done: int, total: int) -> None:
        self._iface.queue_message(_messages.FileTransferPartAck(
            source_component_uuid=self.uuid, transfer_uuid=transfer_uuid, transferred_bytes=done,
            total_bytes=total))

    def _refuse(self, client_id: int, transfer_uuid: str, text: str) -> None:
        """Tell the page the transfer is over (an ack of 0 of 0 bytes ends its progress) and why."""
        self._ack(transfer_uuid, 0, 0)
        self.on_refused(self._client(client_id), text)

    def _start(self, client_id: int, message: Any) -> None:
        if message.source_component_uuid != self.uuid:
            return self._viser_start(client_id, message)
        try:
            name = upload_name(message.filename)
            load_command(name)  # a suffix the studio opens, before anything is written
            size, count = int(message.size_bytes), int(message.part_count)
            if size > self.limit:
                raise C.CommandError(f"upload: {name} has {size / 2**20:.0f} MB; the limit is "
                                     f"{self.limit / 2**20:.0f} MB (copy larger files next to the studio "
                                     f"and open them by path)")
            if size < 0 or count < 0 or (count == 0) != (size == 0) or count > size + 1:
                raise C.CommandError(f"upload: {name} announces {size} bytes in {count} parts")
        except C.CommandError as e:
            return self._refuse(client_id, message.transfer_uuid, str(e))
        folder = self.folder()
        target = folder / name
        temp = folder / f".{name}.upload-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            file = open(temp, "wb")
        except OSError as e:
            return self._refuse(client_id, message.transfer_uuid,
                                f"upload: cannot save {name} under {folder}: {e.strerror}")
        transfer = _Transfer(client_id, name, target, temp, count, size, file)
        with self._lock:
            old = self._transfers.pop(message.transfer_uuid, None)
            self._transfers[message.transfer_uuid] = transfer
        if old is not None:
            self._discard(old)
        if count == 0:
            self._ack(message.transfer_uuid, 0, 0)
            with transfer.lock:
                self._finish(message.transfer_uuid, transfer)

    def _part(self, client_id: int, message: Any) -> None:
        with self._lock:
            transfer = self._transfers.get(message.transfer_uuid)
        if transfer is None:
            return self._viser_part(client_id, message)  # another button's, or one already refused
        if transfer.client_id != client_id:
            return
        with transfer.lock:
            if transfer.closed:
                return
            index = message.part_index
            if not (transfer.next_part <= index < transfer.part_count) or index in transfer.ahead:
                return  # a duplicate or out of range
            transfer.ahead[index] = bytes(message.content)
            try:
                while transfer.next_part in transfer.ahead:
                    chunk = transfer.ahead.pop(transfer.next_part)
                    transfer.written += len(chunk)
                    if transfer.written > transfer.size:
                        return self._cut(message.transfer_uuid, transfer, f"upload: {transfer.name} sent more "
                                         f"than the {transfer.size} bytes it announced; discarded")
                    transfer.file.write(chunk)
                    transfer.next_part += 1
            except OSError as e:
                return self._cut(message.transfer_uuid, transfer,
                                 f"upload: cannot save {transfer.name}: {e.strerror}")
            if transfer.ahead_bytes > OUT_OF_ORDER_LIMIT:
                return self._cut(message.transfer_uuid, transfer,
                                 f"upload: {transfer.name} arrived too far out of order; discarded")
            self._ack(message.transfer_uuid, transfer.written, transfer.size)
            if transfer.next_part == transfer.part_count:
                self._finish(message.transfer_uuid, transfer)

    def _cut(self, transfer_uuid: str, transfer: _Transfer, text: str) -> None:
        with self._lock:
            self._transfers.pop(transfer_uuid, None)
        self._discard(transfer)
        self._refuse(transfer.client_id, transfer_uuid, text)

    def _finish(self, transfer_uuid: str, transfer: _Transfer) -> None:
        """Rename a complete upload into place (called holding transfer.lock)."""
        with self._lock:
            self._transfers.pop(transfer_uuid, None)
        if transfer.closed:
            return
        if transfer.written != transfer.size:
            self._discard(transfer)
            return self._refuse(transfer.client_id, transfer_uuid, f"upload: {transfer.name} had "
                                f"{transfer.written} bytes, not the {transfer.size} it announced; discarded")
        try:
            transfer.file.flush()
            os.fsync(transfer.file.fileno())
            transfer.file.close()
            os.replace(transfer.temp, transfer.target)
            transfer.closed = True
        except OSError as e:
            self._discard(transfer)
            return self._refuse(transfer.client_id, transfer_uuid, f"upload: cannot save {transfer.name}: "
                                f"{e.strerror}")
        client = self._client(transfer.client_id)
        # Off the event loop: loading checks the file, which may take a moment.
        self.server.gui._thread_executor.submit(self.on_done, client, transfer.target)

    def _discard(self, transfer: _Transfer) -> None:
        transfer.closed = True
        transfer.ahead.clear()
        try:
            transfer.file.close()
        finally:
            transfer.temp.unlink(missing_ok=True)

    def drop_client(self, client_id: int) -> None:
        """Discard what a client that left had in flight (its temporary files too)."""
        with self._lock:
            gone = {k: t for k, t in self._transfers.items() if t.client_id == client_id}
        for transfer in gone.values():
            with transfer.lock:
                self._discard(transfer)
        with self._lock:  # only now: once in_flight drops, the temporary files are gone
            for k in gone:
                self._transfers.pop(k, None)
