"""What the worker publishes for the front-ends: an immutable snapshot, and the metrics log behind it.

The training loop accumulates per-step diagnostics as tensors (no host sync in the hot loop); only when
a snapshot is due are they read, turned into plain floats, appended to the history and written to
metrics.jsonl.
"""

from __future__ import annotations

import json
import math
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
    elapsed: float  # seconds of training (paused time excluded)
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
    reference: np.ndarray | None  # [H, W, 3] uint8: the nearest reference mode (procedural prior)
    cameras: dict[str, np.ndarray] | None  # last batch: viewmats [B,4,4], Ks [B,3,3], width, height
    config: Any  # StudioConfig
    events: tuple[Event, ...]
    last_error: str | None
    publish_ms: float  # what building this snapshot cost


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> uint8 numpy."""
    return (img.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


@dataclass
class MetricsLog:
    """Per-step scalars, kept as tensors until `flush()` reads them in one go."""

    path: Path | None = None
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    pending: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    nonfinite_warned: bool = False

    def add(self, step: int, values: dict[str, Any]) -> None:
        self.pending.append((step, values))

    def flush(self) -> dict[str, float]:
        """Read pending tensors (one host sync), extend the history, append to metrics.jsonl."""
        if not self.pending:
            return {}
        rows = []
        for step, values in self.pending:
            row: dict[str, Any] = {"step": step}
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
        latest = {}
        for row in rows:
            for k, v in row.items():
                if k == "step" or not isinstance(v, float):
                    continue
                series = self.history.setdefault(k, [])
                series.append((row["step"], v))
                if len(series) > HISTORY_LIMIT:
                    del series[: len(series) - HISTORY_LIMIT]
                latest[k] = v
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                        for k, v in row.items()}) + "\n")
        return latest

    def frozen(self) -> dict[str, tuple[tuple[int, float], ...]]:
        return {k: tuple(v) for k, v in self.history.items()}

    def state_dict(self) -> dict:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
