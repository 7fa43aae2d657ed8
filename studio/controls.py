"""The control panel, described once: what each item sends, when it commits and when it is enabled.
The browser and desktop front-ends are both generated from it and add only widgets.

A `Control` is bound to one config path (`ism.delta_t`), or to a viewer setting (`view.mode`, see
studio/view.py, which stays in the front-end); its help text is the field's docstring, so `--help`,
tooltips and this panel say the same thing. A committed edit sends `UpdateSettings({path: value})`
(`SetMethod` for the estimator, `SetPrompt` for the prompt pair); the session validates and refuses bad
values with a message that the front-end shows, and the widget goes back to the accepted value.

When an edit commits (`Control.commit`):
- "change": a pick or a toggle (dropdown, checkbox) commits at once;
- "release": a slider commits when the drag is released or a typed value is entered (Enter, or leaving
  the field), a number field on Enter or leaving it: never per keystroke or per drag step (the browser
  page reports neither a release nor Enter there, so its panel commits once the value has been still
  for a moment: studio/ui/viser_panel.py);
- "apply": the prompt's text fields commit together, on Enter or the folder's Apply button.

When an item is enabled: a Button in the session states of `enabled_in` (`STATES`), a Control while
`enabled_when` holds (another field's value). What a button does in each state: its action, preceded by
a pause while training when `pauses_first` (Step once stops a running session and steps once).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from . import confio
from .config import StudioConfig, preset_names
from .view import RenderMode, view_field_doc


def view_modes() -> tuple[str, ...]:
    return typing.get_args(RenderMode)

Kind = Literal["text", "number", "int", "slider", "dropdown", "checkbox", "range"]
Commit = Literal["change", "release", "apply"]
State = Literal["running", "paused", "done", "error"]
STATES: tuple[State, ...] = ("running", "paused", "done", "error")
"""the session's states, as front-ends show them: training; paused before the plan's end; paused at the
plan's end; stopped on an error (paused too)"""
FrontEnd = Literal["viser", "desktop"]
FRONT_ENDS: tuple[FrontEnd, ...] = ("viser", "desktop")
COMMIT_OF_KIND: dict[str, Commit] = {"text": "apply", "dropdown": "change", "checkbox": "change",
                                     "slider": "release", "range": "release", "number": "release",
                                     "int": "release"}


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
    enabled_when: tuple[str, str] | None = None  # (path, value): enabled only while that field has that value
    front_ends: tuple[FrontEnd, ...] = FRONT_ENDS  # a viewer setting one front-end does not have

    @property
    def commit(self) -> Commit:
        return COMMIT_OF_KIND[self.kind]

    @property
    def is_view(self) -> bool:
        """A viewer setting (view.*), kept by the front-end, not sent to the session."""
        return self.path.startswith("view.")

    def help_text(self) -> str:
        return self.help or field_help(self.path)


@dataclass(frozen=True)
class Button:
    action: str  # "pause" | "resume" | "continue" | "step" | "reset" | "apply_prompt" | "export:<fmt>" | "checkpoint"
    label: str
    help: str = ""
    enabled_in: tuple[State, ...] = STATES
    pauses_first: bool = False  # while training, pause before the action (Step once)


@dataclass(frozen=True)
class Picker:
    """A dropdown that sends a command rather than editing one field. "preset" sends ApplyPreset(choice)
    and shows the preset the config matches now, or CUSTOM; "known_prompt" offers the prior's known
    prompts (shown only for a prior that has them) and applies the one picked as the prompt."""

    action: str  # "preset" | "known_prompt"
    label: str
    options: tuple[str, ...] = ()  # () for known_prompt: the session's prior supplies them
    help: str = ""


@dataclass(frozen=True)
class FileInput:
    """Opening a file to continue from: a path on the studio's machine (browser: typed or uploaded;
    desktop: typed or picked in a file dialog), loaded by suffix (common.load_command)."""

    action: str  # "load"
    label: str
    suffixes: tuple[str, ...]
    help: str = ""


CUSTOM = "custom"  # a Picker's value when the config matches none of its options


@dataclass(frozen=True)
class Folder:
    label: str
    items: tuple[Control | Button | Picker | FileInput, ...]
    method: str | None = None  # only relevant while this estimator is active (shown expanded)


def field_help(path: str) -> str:
    """The docstring of the dataclass field at `path`, for tooltips."""
    if path.startswith("view."):
        return view_field_doc(path)
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
        Button("apply_prompt", "Apply prompt", "optimize for the prompt and negative prompt as typed (or press "
               "Enter in either field)"),
        Picker("known_prompt", "Known prompts", (), "the built-in prior's prompts: pick one to optimize for it"),
        _choice("run.method", "Estimator"),
        Picker("preset", "Preset", (CUSTOM, *preset_names()),
               "lay a preset over the settings (sds; lucid: ISM as LucidDreamer; stein: SSD as SteinDreamer); "
               "the prompt stays. Switching the estimator applies its own preset section unless you set "
               "those fields"),
    )),
    Folder("Transport", (
        Button("pause", "Pause", enabled_in=("running",)),
        Button("resume", "Resume", enabled_in=("paused", "error")),
        Button("continue", "Continue", "the plan is done: extend it by as many steps again and go on",
               enabled_in=("done",)),
        Button("step", "Step once", "one optimization step (pauses a running session first)", pauses_first=True),
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
        Control("ssd.mu", "μ (fixed)", "slider", 0.0, 2.0, 0.01, enabled_when=("ssd.mu_mode", "fixed")),
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
    Folder("View", (
        Control("view.mode", "Render mode", "dropdown", options=view_modes()),
        Control("view.splat_hz", "Splat updates / s", "slider", 0.1, 10.0, 0.1, front_ends=("viser",)),
        Control("view.live_splats", "Splats while training", "int", 0, 1_000_000, 1000, front_ends=("viser",)),
        Control("view.max_hz", "View renders / s", "slider", 0.5, 30.0, 0.5, front_ends=("desktop",)),
        Control("view.background", "Background", "slider", 0.0, 1.0, 0.01, front_ends=("desktop",)),
    )),
    Folder("Open", (
        FileInput("load", "Checkpoint or PLY", (".pt", ".ckpt", ".ply"),
                  "a studio checkpoint (.pt) or a 3DGS .ply to continue from"),
    )),
    Folder("Export", (
        Button("export:ply", "PLY"),
        Button("export:splat", ".splat"),
        Button("export:ply_compressed", "Compressed PLY"),
        Button("export:glb", "Mesh GLB", "the density's iso-surface (mesh.* settings), vertex colours"),
        Button("export:obj", "Mesh OBJ", "the density's iso-surface (mesh.* settings), one file with vertex colours"),
        Control("mesh.iso", "Mesh iso-level", "number", 1e-4, 100.0, 0.01),
        Control("mesh.grid", "Mesh grid", "int", 16, 512, 16),
        Button("export:mp4", "Turntable MP4"),
        Button("export:gif", "Turntable GIF"),
        Button("checkpoint", "Checkpoint"),
    )),
)


def all_controls(front_end: FrontEnd | None = None) -> list[Control]:
    """The Controls of PANEL (those `front_end` has, when given)."""
    return [item for folder in PANEL for item in folder.items
            if isinstance(item, Control) and (front_end is None or front_end in item.front_ends)]


def items_of(front_end: FrontEnd) -> list[tuple[str, str]]:
    """(folder label, item key) of everything `front_end` builds, in panel order: the list both
    front-ends must agree on. An item's key is its config path or its action."""
    out = []
    for folder in PANEL:
        for item in folder.items:
            if isinstance(item, Control):
                if front_end in item.front_ends:
                    out.append((folder.label, item.path))
            else:
                out.append((folder.label, item.action))
    return out


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
