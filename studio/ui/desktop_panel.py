"""The desktop control panel, generated from `studio/controls.py` (the browser panel's source too).

Every widget callback only builds a Command and sends it: `Session.send` validates at once, and a
refusal shows the session's own message (the one the browser studio shows) and puts the widget back to
the accepted value. Widgets follow the session's config when it changes elsewhere (a key, a checkpoint).
"""

from __future__ import annotations

from typing import Any, Callable

import dearpygui.dearpygui as dpg

from .. import commands as C
from ..controls import PANEL, READOUTS, Button, Control, Folder, Picker, all_controls
from ..session import Session
from ..snapshot import Snapshot
from . import common

ERROR_COLOUR = (255, 110, 100)
INFO_COLOUR = (170, 210, 170)
WARNING_COLOUR = (240, 200, 90)
LEVEL_COLOUR = {"error": ERROR_COLOUR, "warning": WARNING_COLOUR, "info": INFO_COLOUR}
INPUT_WIDTH = 200


class Panel:
    """The widgets of PANEL inside the current DearPyGui container.

    Attributes tests drive: `items[path]` (a control's widget), `buttons[action]`, `headers[method]`
    (an estimator's folder), `send(cmd) -> bool` (refusals go to `on_message(level, text)`).
    """

    def __init__(self, session: Session, on_message: Callable[[str, str], None]):
        self.session = session
        self.on_message = on_message  # (level, text)
        self.items: dict[str, int | str] = {}
        self.buttons: dict[str, int | str] = {}
        self.headers: dict[str, int | str] = {}  # method -> its folder's header
        self.readouts: list[tuple[Any, int | str]] = []  # (Readout, text item)
        self.pickers: dict[str, tuple[Picker, int | str]] = {}  # action -> (picker, combo)
        self._enabled: dict[str, bool] = {}  # action -> whether its button is enabled now
        self.inputs: list[int | str] = []  # widgets that take typed keys (shortcuts wait while active)
        self._controls = all_controls()
        self._shown = session.config
        self._method = self._shown.run.method
        for folder in PANEL:
            self._build_folder(folder)

    # ----- building ---------------------------------------------------------------------------------
    def _build_folder(self, folder: Folder) -> None:
        open_ = folder.method is None or folder.method == self._method
        with dpg.collapsing_header(label=folder.label, default_open=open_) as header:
            if folder.method is not None:
                self.headers[folder.method] = header
            buttons = [item for item in folder.items if isinstance(item, Button)]
            if buttons:
                with dpg.group(horizontal=True):
                    for b in buttons:
                        self._build_button(b)
            for item in folder.items:
                if isinstance(item, Control):
                    self._build_control(item)
                elif isinstance(item, Picker):
                    self._build_picker(item)
            for readout in READOUTS.get(folder.label, ()):
                with dpg.group(horizontal=True):
                    dpg.add_text(f"{readout.label}:")
                    text = dpg.add_text("–")
                self.readouts.append((readout, text))

    def _build_button(self, button: Button) -> None:
        item = dpg.add_button(label=button.label, callback=self._on_button, user_data=button.action)
        if button.help:
            with dpg.tooltip(item):
                dpg.add_text(button.help, wrap=320)
        self.buttons[button.action] = item

    def _build_picker(self, p: Picker) -> None:
        item = dpg.add_combo(list(p.options), default_value=common.picker_value(p, self._shown), label=p.label,
                             callback=self._on_picker, user_data=p, width=INPUT_WIDTH)
        with dpg.tooltip(item):
            dpg.add_text(p.help, wrap=320)
        self.pickers[p.action] = (p, item)

    def _build_control(self, c: Control) -> None:
        value = common.widget_value(c, self._shown)
        kw = dict(label=c.label, callback=self._on_control, user_data=c, width=INPUT_WIDTH)
        is_int = common.slider_is_int(c, self._shown)
        if c.kind == "text":
            item = dpg.add_input_text(default_value=value, on_enter=True, **kw)
        elif c.kind == "dropdown":
            item = dpg.add_combo(list(c.options), default_value=value, **kw)
        elif c.kind == "checkbox":
            kw.pop("width")
            item = dpg.add_checkbox(default_value=value, **kw)
        elif c.kind == "range":
            item = dpg.add_input_floatx(size=2, default_value=value, on_enter=True, format="%.3g", **kw)
        elif c.kind == "slider" and is_int:
            item = dpg.add_slider_int(default_value=value, min_value=int(c.min), max_value=int(c.max), **kw)
        elif c.kind == "slider":
            item = dpg.add_slider_float(default_value=value, min_value=float(c.min), max_value=float(c.max),
                                        format="%.3g", **kw)
        elif is_int:
            item = dpg.add_input_int(default_value=value, step=int(c.step or 1), on_enter=True, **kw)
        else:
            item = dpg.add_input_double(default_value=value, step=float(c.step or 0.0), format="%.6g",
                                        on_enter=True, **kw)
        if c.kind not in ("dropdown", "checkbox", "slider"):
            self.inputs.append(item)
        with dpg.tooltip(item):
            dpg.add_text(f"{c.path}: {c.help_text()}", wrap=320)
        self.items[c.path] = item

    # ----- callbacks (main thread, manual callback management) --------------------------------------
    def send(self, cmd: C.Command) -> bool:
        """Send a command; a refusal is shown as the session worded it. Returns whether it was accepted."""
        try:
            self.session.send(cmd)
        except C.CommandError as e:
            self.on_message("error", str(e))
            return False
        return True

    def _on_button(self, sender, app_data, action: str) -> None:
        try:
            cmd = common.button_command(action)
        except ValueError as e:  # a Button added to controls.py that this front-end does not know yet
            self.on_message("error", str(e))
            return
        self.send(cmd)

    def _on_picker(self, sender, app_data, picker: Picker) -> None:
        cmd = common.picker_command(picker, dpg.get_value(self.pickers[picker.action][1]))
        if cmd is None or not self.send(cmd):
            dpg.set_value(self.pickers[picker.action][1], common.picker_value(picker, self.session.config))

    def _on_control(self, sender, app_data, control: Control) -> None:
        value = self.read(control)
        if not self.send(C.UpdateSettings({control.path: common.config_value(control, value)})):
            self._show(control, self.session.config)

    def read(self, control: Control) -> Any:
        """The widget's value as common.widget_value would give it."""
        value = dpg.get_value(self.items[control.path])
        if control.kind == "range":
            return tuple(float(v) for v in value[:2])
        return value

    # ----- following the session --------------------------------------------------------------------
    def sync(self, snap: Snapshot) -> None:
        """Show config changes made elsewhere (widgets being edited keep what the user types)."""
        cfg = self.session.config
        deferred = False
        for control in common.changed_paths(self._controls, self._shown, cfg):
            if dpg.is_item_active(self.items[control.path]):
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
                    dpg.set_value(item, common.picker_value(picker, cfg))
        if not deferred:
            self._shown = cfg
        for action, item in self.buttons.items():
            enabled = common.button_enabled(action, snap)
            if self._enabled.get(action) != enabled:
                dpg.configure_item(item, enabled=enabled)
                self._enabled[action] = enabled
        for readout, text in self.readouts:
            dpg.set_value(text, common.readout_text(snap, readout))

    def _show(self, control: Control, cfg: Any) -> None:
        value = common.widget_value(control, cfg)
        dpg.set_value(self.items[control.path], list(value) if control.kind == "range" else value)

    def typing(self) -> bool:
        """Whether a text or number field has the keyboard (so letters are text, not shortcuts)."""
        return any(dpg.is_item_active(item) for item in self.inputs)
