"""The session's state, owned by its worker thread: the trainer and everything around it that commands
and steps change (flags, segment, timing, events, the last good copy of the scene).

Command handlers (`studio/handlers.py`) and the worker loop (`studio/session.py`) are functions of this
one object; front-ends never see it, they read snapshots built from it (`studio/publish.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .scene import to_host
from .snapshot import EventLog, MetricsLog
from .trainer import Trainer


@dataclass(frozen=True)
class GoodCopy:
    """A trainer state known to be healthy (finite), in host memory: what a failed step returns to."""

    iteration: int
    trainer: dict[str, Any]  # Trainer.state_dict(), tensors on the CPU


@dataclass
class SessionState:
    trainer: Trainer
    run_dir: Path  # where exports, checkpoints and metrics.jsonl go
    metrics: MetricsLog
    events: EventLog = field(default_factory=EventLog)
    user_set: frozenset[str] = frozenset()  # config paths the user set this run (presets leave them be)
    paused: bool = False
    pending_steps: int = 0  # StepOnce steps still to run (they run while paused and past the plan)
    last_error: str | None = None
    traceback: str | None = None
    elapsed: float = 0.0  # seconds of training in this segment
    rate_mark: tuple[float, int] = (0.0, 0)  # (time, iteration) at the start of the it/s window
    its: float = 0.0
    announced_done: bool = False  # the "done" event of the current plan was given
    latest_score: Any = None  # the last RefScore (its mode picks the reference shown)
    good: GoodCopy | None = None
    saved_iteration: int | None = None  # iteration of the last checkpoint written or loaded
    periodic: tuple[Path, ...] = ()  # checkpoints written every run.checkpoint_every steps, oldest first

    # ----- events and segments --------------------------------------------------------------------
    def event(self, level: str, text: str, path: str | None = None) -> None:
        self.events.add(level, text, path)

    @property
    def segment(self) -> int:
        return self.metrics.segment

    def new_segment(self, history: dict[str, list[tuple[int, float]]] | None = None,
                    elapsed: float = 0.0) -> None:
        """Plots, it/s and elapsed time start again (a reset, a load, a new prompt or prior, a rewind)."""
        self.metrics.next_segment(history)
        self.elapsed = elapsed
        self.rate_mark = (time.perf_counter(), self.trainer.iteration)
        self.its = 0.0
        self.latest_score = None
        self.announced_done = False

    # ----- the last good scene --------------------------------------------------------------------
    def keep_good(self) -> bool:
        """Copy the trainer's state as the one to return to, if the scene is finite. Returns whether it
        was (a non-finite scene is never kept)."""
        if not self.trainer.scene.is_finite():
            return False
        self.good = GoodCopy(self.trainer.iteration, to_host(self.trainer.state_dict()))
        return True

    def rewind(self) -> int:
        """Put the trainer back to the last good copy; a new segment holds the history up to it. Returns
        the iteration it went back to."""
        assert self.good is not None, "a session keeps a good copy from its start"
        self.trainer.load_state_dict(self.good.trainer)
        self.trainer.updating = False
        self.new_segment(self.metrics.truncate(self.good.iteration), self.elapsed)
        return self.good.iteration

    # ----- transactions ---------------------------------------------------------------------------
    def memento(self) -> dict[str, Any]:
        """What a command may change, by reference: `restore` puts it back if the command fails. The
        handlers replace objects (a new trainer, a new history) rather than edit them, and the trainer's
        own settings change rolls itself back, so references are enough. Events are not rolled back: a
        file written before a failure was written."""
        m = self.metrics
        return {
            "fields": {f.name: getattr(self, f.name) for f in fields(self) if f.name != "events"},
            "metrics": (m.segment, m.history, m.pending, m.segment_rows),
            "torch_rng": torch.get_rng_state(),  # building a scene seeds the global generator
        }

    def restore(self, saved: dict[str, Any]) -> None:
        for name, value in saved["fields"].items():
            setattr(self, name, value)
        m = self.metrics
        m.segment, m.history, m.pending, m.segment_rows = saved["metrics"]
        torch.set_rng_state(saved["torch_rng"])

