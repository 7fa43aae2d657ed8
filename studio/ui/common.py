"""What both front-ends share, independent of any widget toolkit: the behaviour `studio/controls.py`
declares, turned into commands, enabled states and texts.

- `session_state`, `button_enabled`, `control_enabled`: what is enabled in the session's state now.
- `button_commands`, `button_command`, `load_command`, `prompt_command`: an action -> the Commands to send.
- `widget_value`, `config_value`, `slider_is_int`: a Control's value as the widget holds it <-> as the
  config holds it (so a front-end can compare, revert a refused edit, or show a change made elsewhere).
- `status_parts`, `status_line`, `progress_percent`, `format_duration`, `readout_text`: the transport line's text.
- `PLOTS`, `plot_series`: which metrics are plotted and their (step, value) arrays, thinned for drawing.
- `EventTracker`: which session events a front-end has not shown yet.
- `changed_paths`: which controls a config change touched (to refresh only those widgets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import commands as C
from .. import config as cfgmod
from .. import confio
from .. import view as viewmod
from ..controls import CUSTOM, PANEL, Button, Control, Picker, Readout, State
from ..snapshot import Event, Snapshot

CHECKPOINT_SUFFIXES = (".pt", ".ckpt")
PLY_SUFFIXES = (".ply",)


def session_state(snap: Snapshot) -> State:
    """The state controls.STATES names: error (stopped on one), done (paused at the plan's end), paused
    or running."""
    if snap.last_error is not None:
        return "error"
    if snap.paused:
        return "done" if snap.done else "paused"
    return "running"


def find_button(action: str) -> Button:
    """The panel's Button for `action` (ValueError for an action the panel does not declare)."""
    for folder in PANEL:
        for item in folder.items:
            if isinstance(item, Button) and item.action == action:
                return item
    raise ValueError(f"no button {action!r} in studio/controls.py")


def button_enabled(action: str, snap: Snapshot) -> bool:
    """Whether a button does something in the session's state now (its `enabled_in`)."""
    return session_state(snap) in find_button(action).enabled_in


def button_commands(action: str, snap: Snapshot) -> list[C.Command]:
    """What a click sends in the session's state now: its command, after a Pause while training for a
    button that `pauses_first`. Empty when the button is disabled in this state (a click that raced a
    state change does nothing)."""
    button = find_button(action)
    state = session_state(snap)
    if state not in button.enabled_in:
        return []
    cmd = button_command(action)
    return [C.Pause(), cmd] if button.pauses_first and state == "running" else [cmd]


def control_enabled(control: Control, cfg: Any) -> bool:
    """Whether a control is enabled for config `cfg` (its `enabled_when`)."""
    if control.enabled_when is None:
        return True
    path, value = control.enabled_when
    return str(confio.get_path(cfg, path)) == value


def prompt_command(prompt: str, negative: str, cfg: Any) -> C.SetPrompt | None:
    """The command of an Apply with these texts (None when they are what the session has already)."""
    if prompt == cfg.prompt.prompt and negative == cfg.prompt.negative:
        return None
    return C.SetPrompt(prompt, negative)


def prompt_applied_text(prompt: str, negative: str) -> str:
    """The confirmation both front-ends show for an accepted prompt."""
    return f"now optimizing “{prompt}”" + (f" (negative: “{negative}”)" if negative else "")


def window_title(prompt: str) -> str:
    return f"Gaussian Dreamer Studio: {prompt}"


def button_command(action: str) -> C.Command:
    """The Command behind a panel Button's action (see controls.Button); ValueError for unknown ones."""
    simple: dict[str, C.Command] = {
        "pause": C.Pause(), "resume": C.Resume(), "continue": C.Continue(), "step": C.StepOnce(1),
        "reset": C.Reset(), "checkpoint": C.SaveCheckpoint(),
    }
    if action in simple:
        return simple[action]
    if action.startswith("export:"):
        return C.Export(formats=(action.split(":", 1)[1],))
    raise ValueError(f"unknown button action {action!r}; expected pause, resume, continue, step, reset, "
                     "checkpoint or export:<format>")


def picker_options(picker: Picker, known_prompts: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """A Picker's choices: the declared ones, or for "known_prompt" CUSTOM and the prior's prompts."""
    if picker.action == "known_prompt":
        return (CUSTOM, *known_prompts)
    return picker.options


def picker_value(picker: Picker, cfg: Any) -> str:
    """What a Picker shows for config `cfg`: the preset it matches, the prompt (a known prompt picker
    shows CUSTOM for one not in its list: the widget refuses values outside its options), or CUSTOM."""
    if picker.action == "known_prompt":
        return cfg.prompt.prompt
    assert picker.action == "preset", picker
    return cfgmod.matching_preset(cfg) or CUSTOM


def picker_shown(picker: Picker, cfg: Any, options: tuple[str, ...]) -> str:
    """picker_value, or CUSTOM when that is not one of the widget's options."""
    value = picker_value(picker, cfg)
    return value if value in options else CUSTOM


def picker_command(picker: Picker, choice: str, cfg: Any) -> C.Command | None:
    """The command a pick sends (None for CUSTOM, which is a state, not an action)."""
    if choice == CUSTOM:
        return None
    if picker.action == "known_prompt":
        return prompt_command(choice, cfg.prompt.negative, cfg)
    assert picker.action == "preset", picker
    return C.ApplyPreset(choice)


def load_command(path: str | Path) -> C.LoadCheckpoint | C.LoadPly:
    """Loading a file to continue from: a studio checkpoint (.pt) or a 3DGS PLY, chosen by suffix.

    Raises CommandError (shown to the user) for an empty path or another suffix."""
    text = str(path).strip()
    if not text:
        raise C.CommandError("load: type the path of a checkpoint (.pt) or a 3DGS .ply file")
    suffix = Path(text).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return C.LoadCheckpoint(text)
    if suffix in PLY_SUFFIXES:
        return C.LoadPly(text)
    raise C.CommandError(f"load: {Path(text).name} is neither a checkpoint (.pt) nor a .ply file")


def source_value(control: Control, source: Any) -> Any:
    """The value at control.path in `source`: the session's config, or for a viewer setting (view.*)
    the front-end's ViewSettings."""
    if control.is_view:
        return viewmod.view_value(source, control.path)
    return confio.get_path(source, control.path)


def slider_is_int(control: Control, cfg: Any) -> bool:
    """Whether a slider / number widget holds ints: the config field's value decides, not the bounds."""
    value = source_value(control, cfg)
    return control.kind == "int" or (isinstance(value, int) and not isinstance(value, bool))


def widget_value(control: Control, cfg: Any) -> Any:
    """The value at control.path (of the config, or of the ViewSettings for view.*) as the widget holds
    it (str for dropdowns, tuple for ranges)."""
    value = source_value(control, cfg)
    if control.kind == "dropdown":
        return str(value)
    if control.kind == "range":
        return tuple(float(v) for v in value)
    if control.kind == "checkbox":
        return bool(value)
    if control.kind == "text":
        return str(value)
    return int(value) if slider_is_int(control, cfg) else float(value)


def config_value(control: Control, value: Any) -> Any:
    """A widget's value as sent in UpdateSettings (the session coerces and validates it)."""
    if control.kind == "range":
        return tuple(value)
    return value


def control_command(control: Control, value: Any) -> C.Command:
    """The command a committed edit of a config control sends (SetMethod for the estimator)."""
    assert not control.is_view, control.path
    if control.path == "run.method":
        return C.SetMethod(value)
    return C.UpdateSettings({control.path: config_value(control, value)})


def view_with(view: Any, control: Control, value: Any) -> Any:
    """ViewSettings with a viewer control's committed value (ConfigError naming the field and range)."""
    assert control.is_view, control.path
    return viewmod.with_view_values(view, {control.path: config_value(control, value)})


def same_value(a: Any, b: Any) -> bool:
    """Widget values are equal (floats within a relative 1e-9: widgets round-trip through JSON)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def changed_paths(controls: list[Control], old: Any, new: Any) -> list[Control]:
    """The controls whose config value differs between configs `old` and `new`."""
    if old is new:
        return []
    return [c for c in controls if not same_value(widget_value(c, old), widget_value(c, new))]


# ----- status ---------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """12.3 -> '0:12', 3725 -> '1:02:05'."""
    s = int(max(0.0, seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def run_state(snap: Snapshot) -> str:
    state = session_state(snap)
    return "stopped on error" if state == "error" else state


def status_parts(snap: Snapshot) -> list[str]:
    """['running', 'it 120 / 600', '7.1 it/s', '2,000 Gaussians', '0:17']: the transport line's pieces."""
    its = f"{snap.its:.1f} it/s" if not snap.paused else "– it/s"
    return [run_state(snap), f"it {snap.iteration:,} / {snap.planned_steps:,}", its,
            f"{snap.num_gaussians:,} Gaussians", format_duration(snap.elapsed)]


def status_line(snap: Snapshot) -> str:
    """'running · it 120 / 600 · 7.1 it/s · 2,000 Gaussians · 0:17' (plain text, one line)."""
    return " · ".join(status_parts(snap))


def progress_percent(snap: Snapshot) -> float:
    """Progress towards the planned steps, in [0, 100] (a run continued past its plan shows 100)."""
    if snap.planned_steps <= 0:
        return 0.0
    return float(min(100.0, 100.0 * snap.iteration / snap.planned_steps))


def readout_text(snap: Snapshot, readout: Readout) -> str:
    value = snap.latest.get(readout.metric)
    if value is None or not isinstance(value, float):
        return "–"
    return format(value, readout.fmt)


# ----- plots ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plot:
    metric: str  # key of Snapshot.metrics
    title: str
    log_y: bool = False
    procedural_only: bool = False  # only meaningful with the procedural prior (a known answer)


PLOTS: tuple[Plot, ...] = (
    Plot("loss", "Loss", log_y=True),
    Plot("grad_var", "Gradient variance", log_y=True),
    Plot("psnr_ref", "PSNR to nearest reference, dB", procedural_only=True),
)


def plot_series(snap: Snapshot, metric: str, max_points: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """(steps [P], values [P]) of one metric, P <= max_points: thinned by block means so that a long run
    still draws quickly and noise is averaged rather than aliased. Non-finite values are dropped (and so
    absent from the plot, which is visible); empty arrays when the metric has no points yet."""
    series = snap.metrics.get(metric, ())
    if not series:
        return np.zeros(0), np.zeros(0)
    arr = np.asarray(series, dtype=np.float64)  # [P, 2]
    arr = arr[np.isfinite(arr[:, 1])]
    n = arr.shape[0]
    if n > max_points:
        block = math.ceil(n / max_points)
        usable = (n // block) * block
        head = arr[:usable].reshape(-1, block, 2).mean(axis=1)
        tail = arr[usable:].mean(axis=0, keepdims=True) if usable < n else np.zeros((0, 2))
        arr = np.concatenate([head, tail], axis=0)
    return arr[:, 0].copy(), arr[:, 1].copy()


# ----- events ---------------------------------------------------------------------------------------
class EventTracker:
    """Hands out each session event once. Events published before the front-end started are skipped
    (they belong to an earlier window), unless `replay=True`."""

    def __init__(self, snap: Snapshot, replay: bool = False):
        self.last_id = 0 if replay or not snap.events else snap.events[-1].id

    def new(self, snap: Snapshot) -> list[Event]:
        fresh = [e for e in snap.events if e.id > self.last_id]
        if fresh:
            self.last_id = fresh[-1].id
        return fresh
