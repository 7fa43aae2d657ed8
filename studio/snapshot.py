"""What the worker publishes for the front-ends: an immutable snapshot, the events, and the metrics log.

The training loop accumulates per-step diagnostics as tensors (no host sync in the hot loop); only when
a snapshot is due are they read, turned into plain floats, appended to the history and written to
metrics.jsonl. Every row carries its segment: a reset, a load or a prompt / prior change starts a new
one, so (segment, step) never repeats and plots show one segment's curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HISTORY_LIMIT = 20_000  # points kept per metric for plots; metrics.jsonl keeps everything


@dataclass(frozen=True)
class Event:
    """A message for the user: an export done, a value refused, a step failed."""

    id: int
    level: str  # "info" | "warning" | "error"
    text: str
    path: str | None = None  # a file the event is about (an export to offer for download)


@dataclass
class EventLog:
    """The last `keep` events, numbered from 1 for the whole session (front-ends show each id once)."""

    keep: int = 50
    events: tuple[Event, ...] = ()
    last_id: int = 0

    def add(self, level: str, text: str, path: str | None = None) -> Event:
        self.last_id += 1
        ev = Event(self.last_id, level, text, path)
        self.events = (self.events + (ev,))[-self.keep:]
        return ev


@dataclass(frozen=True)
class Splats:
    """The scene as numpy arrays for viewers (activated values)."""

    means: np.ndarray  # [N, 3]
    scales: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] wxyz, normalized
    opacities: np.ndarray  # [N]
    rgbs: np.ndarray  # [N, 3] base colour (degree-0 SH) in [0, 1]
    sh: np.ndarray  # [N, K, 3] all SH coefficients (for viewers that shade by view)


@dataclass(frozen=True)
class Snapshot:
    version: int
    iteration: int
    planned_steps: int
    segment: int  # a reset, load or prompt / prior change starts a new one (plots show one segment)
    done: bool  # iteration reached planned_steps (the session paused there; Continue extends the plan)
    elapsed: float  # seconds of training in this segment (paused time excluded)
    its: float  # iterations per second over the last window
    paused: bool
    method: str
    prompt: str
    negative: str
    num_gaussians: int
    metrics: dict[str, tuple[tuple[int, float], ...]]  # name -> ((step, value), ...)
    latest: dict[str, float]  # last value of each metric
    splats: Splats | None
    preview: np.ndarray | None  # [H, W, 3] uint8: the current training view
    previews: dict[str, np.ndarray]  # render mode (view.mode) -> [H, W, 3] uint8 of that view; {} before a step
    reference: np.ndarray | None  # [H, W, 3] uint8: the nearest reference mode (procedural prior)
    cameras: dict[str, np.ndarray] | None  # last batch: viewmats [B,4,4], Ks [B,3,3], width, height
    config: Any  # StudioConfig
    events: tuple[Event, ...]
    last_error: str | None
    publish_ms: float  # what building this snapshot cost


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 numpy."""
    return (img.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


UNWRITTEN_LIMIT = 100_000  # rows kept for metrics.jsonl while it cannot be written (then the oldest go)


@dataclass
class MetricsLog:
    """Per-step scalars, kept as tensors until `flush()` reads them in one go.

    A failure to write metrics.jsonl (a full disk, a removed folder) never raises: the rows stay in memory
    and go out with the next flush that can write, and `flush` reports the change (see `write_error`)."""

    path: Path | None = None
    segment: int = 1
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pending: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    unwritten: list[str] = field(default_factory=list)  # JSON lines not yet in the file
    write_error: str | None = None  # why the last write failed; None while writing works
    segment_rows: int = 0  # rows flushed in the current segment


    def add(self, step: int, values: dict[str, Any]) -> None:
        self.pending.append((step, values))

    def next_segment(self, history: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Rows from now on belong to a new segment (the current one is reused while it has no rows); the
        history (what plots show) restarts, from `history` when given (a loaded checkpoint's curves)."""
        if self.segment_rows or self.pending:
            self.segment += 1
        self.segment_rows = 0
        self.pending = []
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def truncate(self, step: int) -> dict[str, list[tuple[int, float]]]:
        """The history up to and including `step` (a rewind to an earlier scene)."""
        return {k: [p for p in v if p[0] <= step] for k, v in self.history.items()}

    def flush(self) -> tuple[dict[str, float], str | None]:
        """Read pending tensors (one host sync), extend the history, append to metrics.jsonl.

        Returns the latest value of each metric, and a message when writing the file failed or works
        again (None otherwise)."""
        if not self.pending:
            return {}, None
        rows = []
        for step, values in self.pending:
            row: dict[str, Any] = {"segment": self.segment, "step": step}
            for k, v in values.items():
                if isinstance(v, torch.Tensor):
                    v = v.detach().float()
                    v = v.mean().item() if v.numel() > 1 else v.item()
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    row[k] = float(v)
                else:
                    row[k] = v
            rows.append(row)
        self.pending.clear()
        self.segment_rows += len(rows)
        latest = {}
        for row in rows:
            for k, v in row.items():
                if k in ("step", "segment") or not isinstance(v, float):
                    continue
                series = self.history.setdefault(k, [])
                series.append((row["step"], v))
                if len(series) > HISTORY_LIMIT:
                    del series[: len(series) - HISTORY_LIMIT]
                latest[k] = v
        return latest, self._write(rows)

    def _write(self, rows: list[dict[str, Any]]) -> str | None:
        if self.path is None:
            return None
        self.unwritten.extend(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                          for k, v in row.items()}) + "\n" for row in rows)  # each row once
        del self.unwritten[: max(0, len(self.unwritten) - UNWRITTEN_LIMIT)]
        text = "".join(self.unwritten)
        start = None
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                start = f.tell()
                f.write(text)
                f.flush()
        except OSError as e:
            if start is not None:  # no half rows: cut what part of this write reached the file
                with contextlib.suppress(OSError):
                    os.truncate(self.path, start)
            first = self.write_error is None
            self.write_error = e.strerror or str(e)
            if first:
                return (f"cannot write {self.path}: {self.write_error}; training goes on and the rows are "
                        f"kept in memory (up to {UNWRITTEN_LIMIT:,}) until the file can be written")
            return None
        late = len(self.unwritten) - len(rows)
        self.unwritten.clear()
        if self.write_error is not None:
            self.write_error = None
            return f"{self.path} can be written again; {late:,} rows written late"
        return None

    def frozen(self) -> dict[str, tuple[tuple[int, float], ...]]:
        return {k: tuple(v) for k, v in self.history.items()}

    def state_dict(self) -> dict:
        return {"segment": self.segment, "history": {k: list(v) for k, v in self.history.items()}}


def last_segment(path: Path) -> int:
    """The highest segment number in an existing metrics.jsonl (0 if none or unreadable)."""
    best = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    best = max(best, int(json.loads(line).get("segment", 0)))
                except (ValueError, TypeError, AttributeError):
                    continue
    except OSError:
        return 0
    return best
