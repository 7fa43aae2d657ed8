"""The commands a front-end sends to a session.

Front-ends never touch tensors: they build one of these, `Session.send()` validates it at once (a bad
value raises `CommandError` with a message the UI shows, and nothing changes), and the worker applies
it between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXPORT_FORMATS = ("ply", "splat", "ply_compressed", "glb", "obj", "mp4", "gif", "checkpoint")


class CommandError(ValueError):
    """A command refused when sent; the session is untouched. The message names the field and range."""


@dataclass(frozen=True)
class SetPrompt:
    prompt: str
    negative: str | None = None  # None keeps the current negative prompt


@dataclass(frozen=True)
class SetMethod:
    method: str  # "sds" | "ism" | "ssd"


@dataclass(frozen=True)
class UpdateSettings:
    values: dict[str, Any] = field(default_factory=dict)  # dotted path -> value, e.g. {"ism.delta_t": 80}


@dataclass(frozen=True)
class ApplyPreset:
    """Lay a preset (assets/presets/<name>.json) over the current settings; the prompt and the plan stay."""

    name: str


@dataclass(frozen=True)
class Continue:
    """Extend a finished plan by `count` steps (None: as many as the plan had) and resume."""

    count: int | None = None


@dataclass(frozen=True)
class Pause:
    pass


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class StepOnce:
    count: int = 1


@dataclass(frozen=True)
class Reset:
    """Re-initialize the scene and optimizer with the current settings (iteration back to 0)."""


@dataclass(frozen=True)
class SetSeed:
    seed: int


@dataclass(frozen=True)
class Export:
    formats: tuple[str, ...] = ("ply",)
    out_dir: str | None = None  # None: the session's output folder
    name: str | None = None  # file stem; None: "<prompt>_<iteration>"


@dataclass(frozen=True)
class SaveCheckpoint:
    path: str | None = None  # None: <out>/checkpoint_<iteration>.pt


@dataclass(frozen=True)
class LoadCheckpoint:
    path: str


@dataclass(frozen=True)
class LoadPly:
    path: str


Command = (
    SetPrompt | SetMethod | UpdateSettings | ApplyPreset | Continue | Pause | Resume | StepOnce | Reset
    | SetSeed | Export | SaveCheckpoint | LoadCheckpoint | LoadPly
)


def describe(cmd: Command) -> str:
    """How an event names a command: 'Load checkpoint x.pt', 'Settings ism.delta_t'."""
    if isinstance(cmd, UpdateSettings):
        return "Settings " + ", ".join(cmd.values)
    if isinstance(cmd, (LoadCheckpoint, LoadPly)):
        return f"{'Load checkpoint' if isinstance(cmd, LoadCheckpoint) else 'Load PLY'} {cmd.path}"
    if isinstance(cmd, SetMethod):
        return f"Estimator {cmd.method}"
    if isinstance(cmd, ApplyPreset):
        return f"Preset {cmd.name}"
    if isinstance(cmd, Export):
        return "Export " + ",".join(cmd.formats)
    names = {SetPrompt: "Prompt", Continue: "Continue", Pause: "Pause", Resume: "Resume", StepOnce: "Step",
             Reset: "Reset", SetSeed: "Seed", SaveCheckpoint: "Checkpoint"}
    return names.get(type(cmd), type(cmd).__name__)
