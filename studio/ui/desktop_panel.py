"""The desktop control panel, generated from `studio/controls.py` (the browser panel's source too).

Each widget commits as its Control declares (`Control.commit`): a dropdown or checkbox at once (its
callback); a slider, range or number field once, when the edit ends (a drag released, a typed value
entered with Enter or by leaving the field: DearPyGui's deactivated-after-edit handler, never a
per-change callback); the prompt's two fields together, on Enter or the Apply button. A commit builds a
Command and sends it: `Session.send` validates at once, and a refusal shows the session's own message
(the one the browser studio shows) and puts the widget back to the accepted value. Viewer settings
(`view.*`) never reach the session: they replace the window's ViewSettings (`with_view_values`), which
refuses bad values the same way. Widgets follow the session's config when it changes elsewhere (a key,
a load, another front-end), and are enabled as `common.button_enabled` / `control_enabled` say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import dearpygui.dearpygui as dpg

from .. import commands as C
from ..confio import ConfigError
from ..controls import PANEL, READOUTS, Button, Control, FileInput, Folder, Picker, all_controls
from ..session import Session
from ..snapshot import Snapshot
from ..view import ViewSettings
from . import common

ERROR_COLOUR = (255, 110, 100)
INFO_COLOUR = (170, 210, 170)
WARNING_COLOUR = (240, 200, 90)
LEVEL_COLOUR = {"error": ERROR_COLOUR, "warning": WARNING_COLOUR, "info": INFO_COLOUR}
DISABLED_TEXT, DISABLED_FRAME = (115, 115, 120), (32, 32, 35)
LABEL_WIDTH = 150  # room right of each input for its label (inputs fill the rest of the panel's width)
BUTTONS_PER_ROW = 3  # a narrow panel still shows every button
COLLAPSED = ("Learning rates", "Densification", "Render")  # closed at start: View, Open, Export stay in view
TOOLTIP_WRAP = 320


def disabled_theme() -> int | str:
    """A theme that dims disabled widgets (DearPyGui draws them like enabled ones otherwise): bind it
    with dpg.bind_theme."""
    kinds = (dpg.mvButton, dpg.mvSliderFloat, dpg.mvSliderInt, dpg.mvInputInt, dpg.mvInputDouble,
             dpg.mvInputText, dpg.mvCombo, dpg.mvCheckbox, dpg.mvInputFloatMulti)
    with dpg.theme() as theme:
        for kind in kinds:
            with dpg.theme_component(kind, enabled_state=False):
                dpg.add_theme_color(dpg.mvThemeCol_Text, DISABLED_TEXT)
                for col in (dpg.mvThemeCol_Button, dpg.mvThemeCol_ButtonHovered, dpg.mvThemeCol_ButtonActive,
                            dpg.mvThemeCol_FrameBg, dpg.mvThemeCol_FrameBgHovered, dpg.mvThemeCol_FrameBgActive):
                    dpg.add_theme_color(col, DISABLED_FRAME)
                dpg.add_theme_color(dpg.mvThemeCol_SliderGrab, DISABLED_TEXT)
                dpg.add_theme_color(dpg.mvThemeCol_CheckMark, DISABLED_TEXT)
    return theme


class Panel:
    """The widgets of PANEL inside the current DearPyGui container.

    Attributes tests drive: `items[path]` (a control's widget), `buttons[action]`, `headers[method]`
    (an estimator's folder), `pickers[action] = (picker, combo)`, `load_path` / `browse` / `file_dialog`
    (the Open folder), `built` (what was built, as controls.items_of lists it), `send(cmd) -> bool`
    (refusals go to `on_message(level, text)`). `build_dialogs()` adds the file dialog; call it outside
    any window. View controls read and replace the window's settings through `get_view` / `set_view`.
    """

    def __init__(self, session: Session, on_message: Callable[[str, str], None],
                 get_view: Callable[[], ViewSettings], set_view: Callable[[ViewSettings], None]):
        self.session = session
        self.on_message = on_message  # (level, text)
        self.get_view, self.set_view = get_view, set_view
        self.items: dict[str, int | str] = {}
        self.buttons: dict[str, int | str] = {}
        self.headers: dict[str, int | str] = {}  # method -> its folder's header
        self.readouts: list[tuple[Any, int | str]] = []  # (Readout, text item)
        self.pickers: dict[str, tuple[Picker, int | str]] = {}  # action -> (picker, combo)
        self.load_path: int | str = 0  # the Open folder's path field, its Browse… button and dialog
        self.browse: int | str = 0
        self.file_dialog: int | str = 0
        self.built: list[tuple[str, str]] = []  # (folder label, item key) in build order: controls.items_of
        self._enabled: dict[int | str, bool] = {}  # item -> whether it is enabled now
        self.inputs: list[int | str] = []  # widgets that take typed keys (shortcuts wait while active)
        self._controls = [c for c in all_controls("desktop") if not c.is_view]  # bound to the config
        self._by_item: dict[int | str, Control] = {}
        self._pending: set[int | str] = set()  # release widgets edited, to commit once inactive
        self._shown = session.config
        self._method = self._shown.run.method
        self._known = common.picker_options(Picker("known_prompt", ""), session.known_prompts)
        with dpg.item_handler_registry() as self._release_handlers:
            dpg.add_item_deactivated_after_edit_handler(callback=self._on_released)
        for folder in PANEL:
            self._build_folder(folder)

    # ----- building ---------------------------------------------------------------------------------
    def _build_folder(self, folder: Folder) -> None:
        open_ = folder.method == self._method if folder.method is not None else folder.label not in COLLAPSED
        with dpg.collapsing_header(label=folder.label, default_open=open_) as header:
            if folder.method is not None:
                self.headers[folder.method] = header
            row: list[Button] = []  # consecutive buttons share rows of BUTTONS_PER_ROW
            for item in (*folder.items, None):
                if isinstance(item, Control) and "desktop" not in item.front_ends:
                    continue
                if item is not None:
                    self.built.append((folder.label, item.path if isinstance(item, Control) else item.action))
                if isinstance(item, Button):
                    row.append(item)
                    continue
                for start in range(0, len(row), BUTTONS_PER_ROW):
                    with dpg.group(horizontal=True):
                        for b in row[start:start + BUTTONS_PER_ROW]:
                            self._build_button(b)
                row = []
                if isinstance(item, Control):
                    self._build_control(item)
                elif isinstance(item, Picker):
                    self._build_picker(item)
                elif isinstance(item, FileInput):
                    self._build_file_input(item)
            for readout in READOUTS.get(folder.label, ()):
                with dpg.group(horizontal=True):
                    dpg.add_text(f"{readout.label}:")
                    text = dpg.add_text("–")
                self.readouts.append((readout, text))

    def _tooltip(self, item: int | str, text: str) -> None:
        if text:
            with dpg.tooltip(item):
                dpg.add_text(text, wrap=TOOLTIP_WRAP)

    def _build_button(self, button: Button) -> None:
        item = dpg.add_button(label=button.label, callback=self._on_button, user_data=button.action)
        self._tooltip(item, button.help)
        self.buttons[button.action] = item

    def _build_picker(self, p: Picker) -> None:
        options = self._known if p.action == "known_prompt" else common.picker_options(p)
        item = dpg.add_combo(list(options), default_value=common.picker_shown(p, self._shown, options),
                             label=p.label, callback=self._on_picker, user_data=p, width=-LABEL_WIDTH,
                             show=len(options) > 1)  # a prior without known prompts: nothing to pick
        self._tooltip(item, p.help)
        self.pickers[p.action] = (p, item)

    def _build_file_input(self, f: FileInput) -> None:
        self.load_path = dpg.add_input_text(hint=f"path of a {' / '.join(f.suffixes)} file", width=-1,
                                            on_enter=True, callback=lambda s, a, u=None: self.load())
        self._tooltip(self.load_path, f"{f.label}: {f.help}; Enter or Load opens it")
        self.inputs.append(self.load_path)
        self._file_input = f
        with dpg.group(horizontal=True):
            self.buttons["load"] = dpg.add_button(label="Load", callback=lambda s, a, u=None: self.load())
            self._tooltip(self.buttons["load"], f.help)
            self.browse = dpg.add_button(label="Browse…", callback=lambda s, a, u=None: dpg.show_item(self.file_dialog))
            self._tooltip(self.browse, "pick the file in a dialog")

    def build_dialogs(self) -> None:
        """The Open folder's file dialog (a top-level item: call outside any window)."""
        f = self._file_input
        start = self.session.out_dir if self.session.out_dir.is_dir() else Path.cwd()
        with dpg.file_dialog(label="Open a checkpoint or PLY", show=False, modal=True, width=700, height=420,
                             callback=self._on_file_picked, default_path=str(start)) as self.file_dialog:
            dpg.add_file_extension(f"{f.label} ({' '.join('*' + s for s in f.suffixes)}){{{','.join(f.suffixes)}}}",
                                   color=(150, 220, 150, 255))
            for suffix in f.suffixes:
                dpg.add_file_extension(suffix)

    def _build_control(self, c: Control) -> None:
        source = self.get_view() if c.is_view else self._shown
        value = common.widget_value(c, source)
        kw: dict[str, Any] = dict(label=c.label, width=-LABEL_WIDTH)
        if c.commit == "change":
            kw.update(callback=self._on_changed, user_data=c)
        elif c.commit == "apply":
            kw.update(callback=lambda s, a, u=None: self.apply_prompt(), on_enter=True)
        is_int = common.slider_is_int(c, source)
        if c.kind == "text":
            item = dpg.add_input_text(default_value=value, **kw)
        elif c.kind == "dropdown":
            item = dpg.add_combo(list(c.options), default_value=value, **kw)
        elif c.kind == "checkbox":
            kw.pop("width")
            item = dpg.add_checkbox(default_value=value, **kw)
        elif c.kind == "range":
            item = dpg.add_input_floatx(size=2, default_value=value, format="%.3g", **kw)
        elif c.kind == "slider" and is_int:
            item = dpg.add_slider_int(default_value=value, min_value=int(c.min), max_value=int(c.max), **kw)
        elif c.kind == "slider":
            item = dpg.add_slider_float(default_value=value, min_value=float(c.min), max_value=float(c.max),
                                        format="%.3g", **kw)
        elif is_int:
            item = dpg.add_input_int(default_value=value, step=int(c.step or 1), **kw)
        else:
            item = dpg.add_input_double(default_value=value, step=float(c.step or 0.0), format="%.6g", **kw)
        if c.commit == "release":
            dpg.bind_item_handler_registry(item, self._release_handlers)
        if not c.is_view:
            self._enable(item, common.control_enabled(c, source))
        if c.kind not in ("dropdown", "checkbox"):
            self.inputs.append(item)  # sliders too: ctrl+click types into them
        hint = "drag, or ctrl+click to type; applied on release / Enter" if c.kind == "slider" else ""
        self._tooltip(item, f"{c.path}: {c.help_text()}" + (f"\n({hint})" if hint else ""))
        self.items[c.path] = item
        self._by_item[item] = c

    # ----- committing (main thread, manual callback management) -------------------------------------
    def send(self, cmd: C.Command) -> bool:
        """Send a command; a refusal is shown as the session worded it. Returns whether it was accepted."""
        try:
            self.session.send(cmd)
        except C.CommandError as e:
            self.on_message("error", str(e))
            return False
        return True

    def send_all(self, cmds: list[C.Command]) -> bool:
        """Send in order, stopping at the first refusal."""
        return all(self.send(cmd) for cmd in cmds)

    def _on_button(self, sender, app_data, action: str) -> None:
        if action == "apply_prompt":
            self.apply_prompt()
            return
        try:
            cmds = common.button_commands(action, self.session.snapshot)
        except ValueError as e:  # a Button added to controls.py that this front-end does not know yet
            self.on_message("error", str(e))
            return
        self.send_all(cmds)

    def _on_picker(self, sender, app_data, picker: Picker) -> None:
        cfg = self.session.config
        cmd = common.picker_command(picker, dpg.get_value(self.pickers[picker.action][1]), cfg)
        if cmd is not None and self.send(cmd):
            if isinstance(cmd, C.SetPrompt):
                self.on_message("info", common.prompt_applied_text(cmd.prompt, cmd.negative or ""))
            return
        self._show_picker(picker, self.session.config)

    def apply_prompt(self) -> None:
        """The Prompt folder's Apply (or Enter in either field): both texts as one SetPrompt."""
        prompt, negative = dpg.get_value(self.items["prompt.prompt"]), dpg.get_value(self.items["prompt.negative"])
        cmd = common.prompt_command(prompt, negative, self.session.config)
        if cmd is None:
            return
        if self.send(cmd):
            self.on_message("info", common.prompt_applied_text(prompt, negative))
        else:
            cfg = self.session.config
            for path in ("prompt.prompt", "prompt.negative"):
                dpg.set_value(self.items[path], common.widget_value(self._control(path), cfg))

    def _on_changed(self, sender, app_data, control: Control) -> None:
        self.commit(control)

    def _on_released(self, sender, item, user_data=None) -> None:
        """A release widget's edit ended (deactivated after edit). A range whose second field took the
        keyboard (Tab) is still active: it commits when it is left."""
        if item not in self._by_item:
            return
        if dpg.is_item_active(item):
            self._pending.add(item)
        else:
            self._pending.discard(item)
            self.commit(self._by_item[item])

    def commit_pending(self) -> None:
        """Commit release widgets whose edit ended while still active (each frame)."""
        for item in [i for i in self._pending if not dpg.is_item_active(i)]:
            self._pending.discard(item)
            self.commit(self._by_item[item])

    def commit(self, control: Control) -> None:
        """Send the widget's value (unchanged values send nothing); a refusal puts it back."""
        value = self.read(control)
        if control.is_view:
            self._commit_view(control, value)
            return
        cfg = self.session.config
        if common.same_value(value, common.widget_value(control, cfg)):
            return
        if not self.send(common.control_command(control, value)):
            self._show(control, self.session.config)

    def _commit_view(self, control: Control, value: Any) -> None:
        view = self.get_view()
        if common.same_value(value, common.widget_value(control, view)):
            return
        try:
            new = common.view_with(view, control, value)
        except ConfigError as e:
            self.on_message("error", str(e))
            self._show(control, view)
            return
        self.set_view(new)

    def load(self, path: str | None = None) -> bool:
        """Open a checkpoint or PLY (the Open folder's path, or `path`) to continue from."""
        text = dpg.get_value(self.load_path) if path is None else path
        try:
            cmd = common.load_command(text)
        except C.CommandError as e:
            self.on_message("error", str(e))
            return False
        return self.send(cmd)

    def _on_file_picked(self, sender, app_data: dict, user_data=None) -> None:
        """The file dialog's OK: the file goes into the path field and is opened."""
        picked = list((app_data.get("selections") or {}).values())
        path = picked[0] if picked else app_data.get("file_path_name", "")
        dpg.set_value(self.load_path, str(Path(path)))
        self.load(path)

    def read(self, control: Control) -> Any:
        """The widget's value as common.widget_value would give it."""
        value = dpg.get_value(self.items[control.path])
        if control.kind == "range":
            return tuple(float(v) for v in value[:2])
        return value

    # ----- following the session --------------------------------------------------------------------
    def sync(self, snap: Snapshot) -> None:
        """Show config changes made elsewhere (widgets being edited keep what the user types), enable
        what the session's state allows."""
        cfg = self.session.config
        deferred = False
        for control in common.changed_paths(self._controls, self._shown, cfg):
            item = self.items[control.path]
            if dpg.is_item_active(item) or item in self._pending:
                deferred = True  # shown once the user leaves the widget
            else:
                self._show(control, cfg)
        if cfg.run.method != self._method:
            self._method = cfg.run.method
            for method, header in self.headers.items():
                dpg.set_value(header, method == self._method)
        if cfg is not self._shown:
            for picker, item in self.pickers.values():
                if not dpg.is_item_active(item):
                    self._show_picker(picker, cfg)
            for control in self._controls:
                self._enable(self.items[control.path], common.control_enabled(control, cfg))
        if not deferred:
            self._shown = cfg
        for action, item in self.buttons.items():
            if action != "load":
                self._enable(item, common.button_enabled(action, snap))
        for readout, text in self.readouts:
            dpg.set_value(text, common.readout_text(snap, readout))

    def enabled_items(self) -> dict[str, bool]:
        """{config path or action: enabled} of the buttons and controls as the window shows them now."""
        out = {action: self._enabled.get(item, True) for action, item in self.buttons.items()}
        out.update({path: self._enabled.get(item, True) for path, item in self.items.items()})
        return out

    def _enable(self, item: int | str, enabled: bool) -> None:
        if self._enabled.get(item) != enabled:
            dpg.configure_item(item, enabled=enabled)
            self._enabled[item] = enabled

    def _show(self, control: Control, source: Any) -> None:
        value = common.widget_value(control, source)
        dpg.set_value(self.items[control.path], list(value) if control.kind == "range" else value)

    def _show_picker(self, picker: Picker, cfg: Any) -> None:
        options = self._known if picker.action == "known_prompt" else common.picker_options(picker)
        dpg.set_value(self.pickers[picker.action][1], common.picker_shown(picker, cfg, options))

    def _control(self, path: str) -> Control:
        return next(c for c in self._controls if c.path == path)

    def typing(self) -> bool:
        """Whether a text or number field (or a slider typed into) has the keyboard, or the file dialog is
        open: letters are text then, not shortcuts."""
        return any(dpg.is_item_active(item) for item in self.inputs) or \
            bool(self.file_dialog and dpg.is_item_shown(self.file_dialog))
