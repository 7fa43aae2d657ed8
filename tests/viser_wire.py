"""A minimal viser client speaking the browser's wire protocol, for tests that drive the real server.

It connects over a websocket with the browser's subprotocol, decodes what the server sends (zstd-
compressed msgpack windows of messages) and sends what the page would send when a user edits a widget
(`GuiUpdateMessage`), clicks a button (the same, with value True), presses Enter in a form
(`GuiFormSubmitMessage`) or uploads a file (`FileTransferStartUpload` and its parts). Like a page, it
answers localStorage reads (the studio's splat pacing round trip) unless `answer_reads` is False.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import msgspec
import viser
import zstandard
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


class WireClient:
    def __init__(self, port: int, answer_reads: bool = True, origin: str | None = None):
        """`origin`: the Origin header a browser sends (a page's scheme://host:port); None sends none."""
        self.answer_reads = answer_reads
        self.ws = connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"],
                          max_size=None, open_timeout=10, origin=origin)
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()
        # The page reports its camera first; viser counts a client as connected from then on.
        self._send({"type": "ViewerCameraMessage", "wxyz": (1.0, 0.0, 0.0, 0.0), "position": (3.0, 3.0, 3.0),
                    "fov": 0.8, "near": 0.01, "far": 100.0, "image_height": 600, "image_width": 800,
                    "look_at": (0.0, 0.0, 0.0), "up_direction": (0.0, 0.0, 1.0)})

    def _send(self, message: dict[str, Any]) -> None:
        self.ws.send(msgspec.msgpack.encode(message))

    def _receive(self) -> None:
        unzip = zstandard.ZstdDecompressor()
        try:
            while True:
                raw = self.ws.recv()
                size = int.from_bytes(raw[0:8], "little")
                compressed = int.from_bytes(raw[8:16], "little")
                window = msgspec.msgpack.decode(unzip.decompress(raw[16:16 + compressed], max_output_size=size))
                with self._lock:
                    self.messages.extend(window["messages"])
                for m in window["messages"]:
                    if m.get("type") == "LocalStorageGetItemRequestMessage" and self.answer_reads:
                        self._send({"type": "LocalStorageGetItemResponseMessage", "value": None, "error": None,
                                    "request_uuid": m["request_uuid"]})
        except ConnectionClosed:
            return

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)

    # ----- what a user does -------------------------------------------------------------------------
    def set_value(self, handle: Any, value: Any) -> None:
        """Edit a widget (or click a button with value=True) as the page does."""
        self._send({"type": "GuiUpdateMessage", "uuid": handle._impl.uuid, "updates": {"value": value}})

    def click(self, handle: Any) -> None:
        self.set_value(handle, True)

    def submit(self, form: Any) -> None:
        """Press Enter in a form's text field."""
        self._send({"type": "GuiFormSubmitMessage", "uuid": form._impl.uuid})

    def upload(self, handle: Any, filename: str, content: bytes) -> None:
        """Pick a file in an upload button, as the page sends it (one part)."""
        self.upload_parts(handle, filename, [content])

    def upload_parts(self, handle: Any, filename: str, parts: Any, size_bytes: int | None = None,
                     part_count: int | None = None) -> None:
        """An upload in parts (an iterable of bytes, sent in order). `size_bytes` / `part_count` are
        what the start message announces (default: the truth), so a lying client can be played."""
        parts = list(parts) if size_bytes is None or part_count is None else parts
        common = {"source_component_uuid": handle._impl.uuid, "transfer_uuid": f"upload-{filename}-{time.time()}"}
        self._send({"type": "FileTransferStartUpload", **common, "filename": filename,
                    "mime_type": "application/octet-stream",
                    "part_count": len(parts) if part_count is None else part_count,
                    "size_bytes": sum(map(len, parts)) if size_bytes is None else size_bytes})
        for i, content in enumerate(parts):
            self._send({"type": "FileTransferPart", **common, "part_index": i, "content": content})

    # ----- what the page receives -------------------------------------------------------------------
    def received(self, type_name: str, where: Callable[[dict], bool] = lambda m: True) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if m["type"] == type_name and where(m)]

    def wait_for(self, type_name: str, where: Callable[[dict], bool] = lambda m: True,
                 timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.received(type_name, where)
            if found:
                return found[-1]
            time.sleep(0.02)
        raise TimeoutError(f"no {type_name} matching the condition within {timeout} s; got types "
                           f"{sorted({m['type'] for m in self.messages})}")

    def notifications(self) -> list[dict]:
        return [m["props"] for m in self.received("NotificationShowMessage")]

    def wait_notification(self, contains: str, timeout: float = 20.0) -> dict:
        msg = self.wait_for("NotificationShowMessage", lambda m: contains in m["props"]["body"], timeout)
        return msg["props"]

    def download(self, suffix: str, timeout: float = 30.0) -> tuple[str, bytes]:
        """(file name, content) of the file the server offered for download."""
        start = self.wait_for("FileTransferStartDownload", lambda m: m["filename"].endswith(suffix), timeout)
        uid, count = start["transfer_uuid"], start["part_count"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parts = {m["part_index"]: m["content"] for m in self.received(
                "FileTransferPart", lambda m: m["transfer_uuid"] == uid)}
            if len(parts) == count:
                return start["filename"], b"".join(bytes(parts[i]) for i in range(count))
            time.sleep(0.02)
        raise TimeoutError(f"download of {start['filename']} incomplete after {timeout} s")
