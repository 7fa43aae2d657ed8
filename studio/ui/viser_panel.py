"""The control panel of the browser studio, generated from `studio/controls.py`.

Widgets are server-wide viser handles, so every browser tab shows the same values. An edit becomes a
Command (`UpdateSettings`, `SetMethod`, `SetPrompt`, a button's action); a refused one is answered with
a notification to the client that sent it, and the widget goes back to the session's value. Callbacks
run in viser's thread pool and only call `session.send` (which validates and queues). The UI thread
calls `sync()` to show config changes made elsewhere (a load, a reset, a script).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import viser

from .. import commands as C
from ..controls import PANEL, READOUTS, Button, Control, Folder, Picker, Readout
from ..session import Session
from ..snapshot import Snapshot
from .common import (
    button_command, button_enabled, changed_paths, config_value, load_command, picker_command, picker_value,
    readout_text, same_value, slider_is_int, widget_value,
)

Notify = Callable[[Any, str, str, str], None]  # (client or None, title, body, level)
BUTTON_COLOURS = {"pause": "yellow", "resume": "green", "continue": "green", "reset": "red", "step": "gray"}
UPLOAD_LIMIT = 512 * 1024 * 1024


def widget_bounds(control: Control, cfg: Any, value: Any) -> tuple[Any, Any, Any]:
    """(min, max, step) of a numeric widget, typed like its value and widened to hold it: the panel's
    ranges are the useful ones, the config may hold any valid value (a preset, a --set, a checkpoint)."""
    cast = int if control.kind != "range" and slider_is_int(control, cfg) else float
    values = value if isinstance(value, tuple) else (value,)
    lo = cast(min(control.min, *values)) if control.min is not None else None
    hi = cast(max(control.max, *values)) if control.max is not None else None
    return lo, hi, cast(control.step or 1)


class PanelView:
    """Builds the widgets in the current GUI container; holds their handles by config path / action."""

    def __init__(self, server: viser.ViserServer, session: Session, notify: Notify,
                 on_export: Callable[[Any, C.Command], None]):
        self.server, self.session, self.notify, self.on_export = server, session, notify, on_export
        self.widgets: dict[str, tuple[Control, Any]] = {}  # config path -> (control, handle)
        self.buttons: dict[str, Any] = {}  # action -> handle
        self.folders: dict[str, Any] = {}  # folder label -> handle
        self.readouts: list[tuple[Readout, Any]] = []
        self.pickers: dict[str, tuple[Picker, Any]] = {}  # action -> (picker, handle)
        self.prompt_form: Any = None
        self.synced_config = self._picker_config = session.config
        self._send_lock = threading.Lock()  # callbacks run concurrently in viser's thread pool
        for folder in PANEL:
            self._build_folder(folder)
        self._build_open_folder()
        self._show_method(self.synced_config.run.method)
        self._update_dependants(self.synced_config)

    # ----- building ---------------------------------------------------------------------------------
    def _build_folder(self, folder: Folder) -> None:
        texts = [i for i in folder.items if isinstance(i, Control) and i.kind == "text"]
        expand = folder.method is not None or folder.label in ("Prompt", "Transport")
        if texts:  # text commits on Enter (or the Apply button), not on every keystroke
            handle = self.server.gui.add_form(folder.label, expand_by_default=expand)
        else:
            handle = self.server.gui.add_folder(folder.label, expand_by_default=expand)
        self.folders[folder.label] = handle
        with handle:
            for item in folder.items:
                if isinstance(item, Button):
                    self._add_button(item)
                elif isinstance(item, Picker):
                    self._add_picker(item)
                else:
                    self._add_control(item)
            if texts:
                self.prompt_form = handle
                apply = self.server.gui.add_button("Apply prompt", hint="or press Enter in a text field")
                apply.on_click(lambda event: self._apply_prompt(event.client))
                handle.on_submit(lambda event: self._apply_prompt(event.client))
            for readout in READOUTS.get(folder.label, ()):
                h = self.server.gui.add_text(readout.label, "–", disabled=True, hint=readout.help or None)
                self.readouts.append((readout, h))

    def _add_control(self, control: Control) -> None:
        cfg = self.session.config
        gui = self.server.gui
        value = widget_value(control, cfg)
        hint = control.help_text() or None
        if control.kind == "text":
            handle = gui.add_text(control.label, value, hint=hint)
        elif control.kind == "checkbox":
            handle = gui.add_checkbox(control.label, value, hint=hint)
        elif control.kind == "dropdown":
            handle = gui.add_dropdown(control.label, control.options, initial_value=value, hint=hint)
        else:
            lo, hi, step = widget_bounds(control, cfg, value)
            if control.kind == "range":
                handle = gui.add_multi_slider(control.label, lo, hi, step, value, hint=hint)
            elif control.kind == "slider":
                handle = gui.add_slider(control.label, lo, hi, step, value, hint=hint)
            else:
                handle = gui.add_number(control.label, value, min=lo, max=hi, step=step, hint=hint)
        if control.kind != "text":
            handle.on_update(lambda event, c=control, h=handle: self._on_control(c, h, event.client))
        self.widgets[control.path] = (control, handle)

    def _add_picker(self, picker: Picker) -> None:
        handle = self.server.gui.add_dropdown(picker.label, picker.options,
                                              initial_value=picker_value(picker, self.session.config),
                                              hint=picker.help or None)
        handle.on_update(lambda event, p=picker, h=handle: self._on_picker(p, h, event.client))
        self.pickers[picker.action] = (picker, handle)

    def _add_button(self, button: Button) -> None:
        handle = self.server.gui.add_button(button.label, hint=button.help or None,
                                            color=BUTTON_COLOURS.get(button.action))
        handle.on_click(lambda event, a=button.action: self._on_button(a, event.client))
        self.buttons[button.action] = handle

    def _build_open_folder(self) -> None:
        gui = self.server.gui
        with gui.add_folder("Open", expand_by_default=False):
            self.load_path = gui.add_text("Path", "", hint="a studio checkpoint (.pt) or a 3DGS .ply, on the "
                                                           "machine running the studio")
            self.load_button = gui.add_button("Load to continue")
            self.load_button.on_click(lambda event: self.load(self.load_path.value, event.client))
            self.upload = gui.add_upload_button("Upload .pt / .ply", mime_type="*/*",
                                                hint="send a file from this computer and continue from it")
            self.upload.on_upload(lambda event: self._on_upload(event.client))

    # ----- callbacks (viser's thread pool) ----------------------------------------------------------
    def send(self, cmd: C.Command, client: Any) -> bool:
        """Send; on refusal notify the client. True when accepted.

        A change made here is already on the widgets: unless other changes await `sync`, mark the new
        config as shown, so that sync does not write it back over what the user typed meanwhile."""
        with self._send_lock:
            before = self.session.config
            try:
                self.session.send(cmd)
            except C.CommandError as e:
                self.notify(client, "Refused", str(e), "error")
                return False
            if self.synced_config is before:
                self.synced_config = self.session.config
        return True

    def _on_control(self, control: Control, handle: Any, client: Any) -> None:
        cfg = self.session.config
        if same_value(handle.value, widget_value(control, cfg)):
            return  # our own echo (sync or revert), or no change
        if control.path == "run.method":
            cmd: C.Command = C.SetMethod(handle.value)
        else:
            cmd = C.UpdateSettings({control.path: config_value(control, handle.value)})
        if not self.send(cmd, client):
            handle.value = widget_value(control, self.session.config)

    def _on_picker(self, picker: Picker, handle: Any, client: Any) -> None:
        shown = picker_value(picker, self.session.config)
        if handle.value == shown:
            return  # our own echo, or no change
        cmd = picker_command(picker, handle.value)
        if cmd is None or not self.send(cmd, client):
            handle.value = shown

    def _apply_prompt(self, client: Any) -> None:
        prompt = self.widgets["prompt.prompt"][1].value
        negative = self.widgets["prompt.negative"][1].value
        cfg = self.session.config.prompt
        if prompt == cfg.prompt and negative == cfg.negative:
            return
        if self.send(C.SetPrompt(prompt, negative), client):
            self.notify(client, "Prompt", f"now optimizing “{prompt}”", "info")

    def _on_button(self, action: str, client: Any) -> None:
        cmd = button_command(action)
        if isinstance(cmd, (C.Export, C.SaveCheckpoint)):
            self.on_export(client, cmd)
        self.send(cmd, client)

    def load(self, path: str, client: Any) -> None:
        try:
            cmd = load_command(path)
        except C.CommandError as e:
            self.notify(client, "Load", str(e), "error")
            return
        self.send(cmd, client)

    def _on_upload(self, client: Any) -> None:
        file = self.upload.value
        name = Path(file.name).name
        if len(file.content) > UPLOAD_LIMIT:
            self.notify(client, "Upload", f"{name} is larger than {UPLOAD_LIMIT >> 20} MB", "error")
            return
        target = self.session.out_dir / "uploads" / name
        try:
            load_command(target)  # refuse other suffixes before writing anything
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.content)
        except C.CommandError as e:
            self.notify(client, "Upload", str(e), "error")
            return
        except OSError as e:
            self.notify(client, "Upload", f"could not save {name} under {target.parent}: {e.strerror}", "error")
            return
        self.load_path.value = str(target)
        self.load(str(target), client)

    # ----- UI thread --------------------------------------------------------------------------------
    def sync(self) -> None:
        """Show the session's requested config in every widget whose value it changed since last shown."""
        with self._send_lock:
            cfg = self.session.config
            old, self.synced_config = self.synced_config, cfg
        for control in changed_paths([c for c, _ in self.widgets.values()], old, cfg):
            handle, value = self.widgets[control.path][1], widget_value(control, cfg)
            if control.kind in ("slider", "number", "int", "range"):
                handle.min, handle.max, _ = widget_bounds(control, cfg, value)
            handle.value = value
        if self._picker_config is not cfg:  # also after our own sends, which mark the config as shown
            self._picker_config = cfg
            for picker, handle in self.pickers.values():
                value = picker_value(picker, cfg)
                if handle.value != value:
                    handle.value = value
        # Cheap when nothing changed (viser sends a property only when its value differs).
        self._show_method(cfg.run.method)
        self._update_dependants(cfg)

    def _show_method(self, method: str) -> None:
        """Only the active estimator's folder is shown; its settings are what the session uses now."""
        for folder in PANEL:
            if folder.method is not None:
                self.folders[folder.label].visible = folder.method == method

    def _update_dependants(self, cfg: Any) -> None:
        if "ssd.mu" in self.widgets:
            self.widgets["ssd.mu"][1].disabled = cfg.ssd.mu_mode != "fixed"

    def update(self, snap: Snapshot) -> None:
        """Transport buttons and live readouts from a snapshot."""
        for action, handle in self.buttons.items():
            handle.disabled = not button_enabled(action, snap)
        for readout, handle in self.readouts:
            handle.value = readout_text(snap, readout)
