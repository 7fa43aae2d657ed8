"""Session: the trainer in a worker thread, a command queue in front of it, snapshots behind it.

Threads (STYLE.md rule 6): the worker owns every tensor. Front-ends call `send()` (validates at once,
raises CommandError, changes nothing on refusal) and read `snapshot` (the latest immutable Snapshot;
never blocks the worker). Commands are applied between steps, never mid-step. A failing step pauses the
session, keeps the last good scene and puts the error in the snapshot.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from . import commands as C
from . import config as cfgmod
from .actions import Actions
from .confio import ConfigError
from .snapshot import Event, MetricsLog, Snapshot
from .publish import build_snapshot
from .trainer import Trainer


class Session:
    """Owns one Trainer. `start()` runs it in a worker thread; `run_steps()` runs it in the caller's."""

    def __init__(self, config: cfgmod.StudioConfig, out_dir: str | Path = "out", *, prior: Any = None,
                 metrics_file: bool = True, paused: bool = False):
        self.out_dir = Path(out_dir)
        self.trainer = Trainer(cfgmod.validate(config), prior=prior)
        self.metrics = MetricsLog(path=self._metrics_path() if metrics_file else None)
        self.actions = Actions(self)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._requested = config  # the config after every accepted command, for validating the next
        self._paused = paused
        self._pending_steps = 0
        self._events: list[Event] = []
        self._event_id = 0
        self.last_error: str | None = None
        self._elapsed = 0.0
        self._rate = (time.perf_counter(), 0)  # (time, iteration) at the start of the it/s window
        self._its = 0.0
        self._last_publish = 0.0
        self._version = 0
        self._latest_score = None
        self._snapshot: Snapshot | None = None
        self.publish(force=True)

    # ----- the front-end side -----------------------------------------------------------------------
    @property
    def config(self) -> cfgmod.StudioConfig:
        """The config as of every accepted command (what the UI should show)."""
        with self._lock:
            return self._requested

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def send(self, cmd: C.Command) -> None:
        """Validate `cmd` now and queue it for the worker. Raises CommandError; on refusal nothing changes."""
        with self._lock:
            prepared, new_cfg = self.actions.validate(cmd, self._requested)
            self._requested = new_cfg
            self._queue.put(prepared)
        self._wake.set()

    def update(self, **values: Any) -> None:
        """Shorthand: session.update(**{"ism.delta_t": 80})."""
        self.send(C.UpdateSettings(values))

    # ----- the worker side --------------------------------------------------------------------------
    def start(self) -> "Session":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="studio-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain()
                if self._should_step():
                    self._one_step()
                else:
                    self.publish()
                    self._wake.wait(0.05)
                    self._wake.clear()
            except Exception as e:  # noqa: BLE001 -- outside the step (publishing, a command): pause, keep going
                self._fail(e)
                self._wake.wait(0.05)
        self.drain()
        self.publish(force=True)

    def _should_step(self) -> bool:
        return self._pending_steps > 0 or (not self._paused and self.last_error is None)

    def drain(self) -> None:
        """Apply every queued command (worker thread, between steps)."""
        while True:
            try:
                cmd = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self.actions.apply(cmd)
            except (ConfigError, C.CommandError, OSError, ValueError) as e:
                self.event("error", f"{type(cmd).__name__}: {e}")
            self.publish(force=True)

    def run_steps(self, n: int, callback=None) -> None:
        """Run n steps in the caller's thread (headless runs, tests), applying queued commands between."""
        for _ in range(n):
            self.drain()
            if self.last_error is not None:
                break
            self._one_step()
            if callback is not None:
                callback(self)
        self.publish(force=True)

    def _one_step(self) -> None:
        tr = self.trainer
        t0 = time.perf_counter()
        try:
            diag = tr.step()
        except Exception as e:  # noqa: BLE001 -- any failure must pause, not kill, the studio
            self._fail(e)
            return
        self._elapsed += time.perf_counter() - t0
        if self._pending_steps > 0:
            self._pending_steps -= 1
        every = tr.cfg.run.psnr_every
        if every and tr.is_procedural and tr.iteration % every == 0:
            self._latest_score = tr.score()
            diag["psnr_ref"] = self._latest_score.psnr
            diag["ref_mode"] = self._latest_score.mode_name
        diag["gaussians"] = tr.scene.num_gaussians
        self.metrics.add(tr.iteration, diag)
        if diag.get("skipped"):
            self.event("warning", f"step {tr.iteration}: {int(diag['nonfinite_grads'])} non-finite gradient "
                                  "entries; the step was skipped")
        self.publish()

    def _fail(self, e: BaseException) -> None:
        tb = traceback.format_exc(limit=6)
        self.trainer.scene.zero_grad()
        restored = self.trainer.scene.restore_if_corrupt()
        self.last_error = f"{type(e).__name__}: {e}"
        self._paused = True
        self._pending_steps = 0
        note = " (the scene was restored to its last good state)" if restored else ""
        self.event("error", f"step {self.trainer.iteration} failed and the session paused{note}: "
                            f"{self.last_error}")
        self.traceback = tb
        try:
            self.publish(force=True)
        except Exception as pub:  # noqa: BLE001 -- the snapshot keeps its last good state
            self.event("error", f"publishing a snapshot failed: {type(pub).__name__}: {pub}")

    # ----- events and snapshots ---------------------------------------------------------------------
    def event(self, level: str, text: str, path: str | None = None) -> Event:
        self._event_id += 1
        ev = Event(self._event_id, level, text, path)
        self._events = (self._events + [ev])[-50:]
        return ev

    def publish(self, force: bool = False) -> None:
        now = time.perf_counter()
        hz = self.trainer.cfg.run.publish_hz
        if not force and now - self._last_publish < 1.0 / hz:
            return
        t0, it0 = self._rate
        if now - t0 >= 1.0:
            self._its = (self.trainer.iteration - it0) / (now - t0)
            self._rate = (now, self.trainer.iteration)
        snap = build_snapshot(self, now)
        with self._lock:
            self._snapshot = snap
        self._last_publish = time.perf_counter()

    def next_version(self) -> int:
        self._version += 1
        return self._version

    def _metrics_path(self) -> Path | None:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return self.out_dir / "metrics.jsonl"

    def wait_for(self, predicate, timeout: float = 30.0, poll: float = 0.02) -> Snapshot:
        """Block until predicate(snapshot) holds (tests, scripts); raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.snapshot
            if predicate(snap):
                return snap
            time.sleep(poll)
        raise TimeoutError(f"condition not reached in {timeout} s; last snapshot at iteration "
                           f"{self.snapshot.iteration}, error {self.snapshot.last_error!r}")

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        if not paused:
            self.last_error = None

    def add_steps(self, n: int) -> None:
        self._pending_steps += n
