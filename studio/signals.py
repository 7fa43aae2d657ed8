"""Ctrl-C and SIGTERM as a request to stop cleanly: the run finishes its step, writes a checkpoint and
says where. A second signal stops at once (KeyboardInterrupt), for a step that never ends."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Within `with StopSignals() as stop:`, SIGINT / SIGTERM set the event `stop` (main thread only;
    elsewhere the handlers stay as they are and `stop` is set by nobody)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self.requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()
        print(f"\n{signal.Signals(signum).name}: stopping after the current step and writing a checkpoint "
              "(send it again to quit at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
