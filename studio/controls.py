"""The control panel, described once; the browser and desktop front-ends are both generated from it.

A `Control` is bound to one config path (`ism.delta_t`); its help text is the field's docstring in
`studio/config.py` or the settings dataclass it lives in, so `--help`, tooltips and this panel say the
same thing. Changing a control sends `UpdateSettings({path: value})` (or the command its `action` names);
the session validates and refuses bad values with a message the front-end shows.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from . import confio
from .config import StudioConfig, preset_names

Kind = Literal["text", "number", "int", "slider", "dropdown", "checkbox", "range"]


@dataclass(frozen=True)
class Control:
    path: str  # config path the control edits
    label: str
    kind: Kind
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    help: str = ""

    def help_text(self) -> str:
        return self.help or field_help(self.path)


@dataclass(frozen=True)
class Button:
    action: str  # "pause" | "resume" | "step" | "reset" | "export:<fmt>" | "checkpoint" | "load"
    label: str
    help: str = ""


@dataclass(frozen=True)
class Picker:
    """A dropdown that sends a command rather than editing one field: `action` "preset" sends
    ApplyPreset(choice). It shows the choice the config matches now, or CUSTOM."""

    action: str  # "preset"
    label: str
    options: tuple[str, ...]
    help: str = ""


CUSTOM = "custom"  # a Picker's value when the config matches none of its options


@dataclass(frozen=True)
class Folder:
    label: str
    items: tuple[Control | Button | Picker, ...]
    method: str | None = None  # only relevant while this estimator is active (shown expanded)


def field_help(path: str) -> str:
    """The docstring of the dataclass field at `path`, for tooltips."""
    parts = path.split(".")
    owner: Any = StudioConfig
    for part in parts[:-1]:
        owner = typing.get_type_hints(owner)[part]
    return confio.field_doc(owner, parts[-1])


def options_of(path: str) -> tuple[str, ...]:
    tp = confio.field_type(StudioConfig, path)
    if typing.get_origin(tp) is Literal:
        return tuple(str(a) for a in typing.get_args(tp))
    raise TypeError(f"{path} is not a choice field")


def _choice(path: str, label: str) -> Control:
    return Control(path, label, "dropdown", options=options_of(path))


PANEL: tuple[Folder, ...] = (
    Folder("Prompt", (
        Control("prompt.prompt", "Prompt", "text"),
        Control("prompt.negative", "Negative", "text"),
        _choice("run.method", "Estimator"),
        Picker("preset", "Preset", (CUSTOM, *preset_names()),
               "lay a preset over the settings (sds; lucid: ISM as LucidDreamer; stein: SSD as SteinDreamer); "
               "the prompt stays. Switching the estimator applies its own preset section unless you set "
               "those fields"),
    )),
    Folder("Transport", (
        Button("pause", "Pause"),
        Button("resume", "Resume"),
        Button("continue", "Continue", "the plan is done: extend it by as many steps again and go on"),
        Button("step", "Step once"),
        Button("reset", "Reset scene", "re-initialize the Gaussians with the current settings"),
        Control("run.steps", "Planned steps", "int", 1, 100_000, 1),
        Control("run.seed", "Seed", "int", 0, 2**31 - 1, 1),
    )),
    Folder("SDS", (
        Control("sds.guidance_scale", "CFG scale", "slider", 1.0, 200.0, 0.5),
        Control("sds.t_range", "t range (fraction of T)", "range", 0.0, 1.0, 0.01),
        _choice("sds.weighting", "Weighting"),
    ), method="sds"),
    Folder("ISM", (
        Control("ism.delta_t", "δT", "slider", 1, 200, 1),
        Control("ism.delta_s", "δS", "slider", 1, 500, 1),
        Control("ism.inv_steps", "Inversion steps", "slider", 1, 10, 1),
        Control("ism.guidance_scale", "CFG scale", "slider", 1.0, 50.0, 0.5),
        Control("ism.warmup_steps", "Warm-up steps", "int", 0, 10_000, 1),
    ), method="ism"),
    Folder("SSD", (
        _choice("ssd.baseline", "Baseline"),
        _choice("ssd.mu_mode", "μ"),
        Control("ssd.mu", "μ (fixed)", "slider", 0.0, 2.0, 0.01),
        Control("ssd.lam", "Baseline weight λ", "slider", 0.0, 10.0, 0.05),
        Control("ssd.guidance_scale", "CFG scale", "slider", 1.0, 200.0, 0.5),
    ), method="ssd"),
    Folder("Cameras", (
        Control("camera.radius", "Radius", "range", 0.5, 10.0, 0.05),
        Control("camera.elevation_deg", "Elevation °", "range", -89.0, 89.0, 1.0),
        Control("camera.fovy_deg", "FoV y °", "range", 5.0, 120.0, 1.0),
    )),
    Folder("Learning rates", (
        Control("optim.means_lr", "Position", "number", 0.0, 1.0, 1e-5),
        Control("optim.sh0_lr", "Colour", "number", 0.0, 1.0, 1e-4),
        Control("optim.opacities_lr", "Opacity", "number", 0.0, 1.0, 1e-3),
        Control("optim.scales_lr", "Scale", "number", 0.0, 1.0, 1e-4),
        Control("optim.quats_lr", "Rotation", "number", 0.0, 1.0, 1e-4),
    )),
    Folder("Densification", (
        Control("densify.enabled", "Densify", "checkbox"),
        Control("densify.grow_grad2d", "Grow threshold", "number", 0.0, 1.0, 1e-5),
        Control("densify.prune_opa", "Prune opacity", "number", 0.0, 1.0, 1e-3),
    )),
    Folder("Render", (
        Control("render.resolution", "Resolution", "int", 8, 2048, 8),
        Control("render.batch", "Batch", "int", 1, 64, 1),
    )),
    Folder("Export", (
        Button("export:ply", "PLY"),
        Button("export:splat", ".splat"),
        Button("export:mp4", "Turntable MP4"),
        Button("checkpoint", "Checkpoint"),
    )),
)


def all_controls() -> list[Control]:
    return [item for folder in PANEL for item in folder.items if isinstance(item, Control)]


@dataclass(frozen=True)
class Readout:
    """A live, read-only value shown inside a folder: the latest value of a snapshot metric."""

    metric: str  # key of Snapshot.latest, e.g. "mu"
    label: str
    fmt: str = ".4g"
    help: str = ""


# Read-only values shown at the end of a folder, by folder label. Kept beside PANEL (not inside it) so
# that code walking PANEL's items sees only Controls and Buttons.
READOUTS: dict[str, tuple[Readout, ...]] = {
    "SSD": (Readout("mu", "μ (live)", ".4f", "the control-variate weight μ in use (learned or fixed)"),),
}
