"""The control panel of the browser studio, generated from `studio/controls.py`.

Widgets are server-wide viser handles, so every browser tab shows the same values. A committed edit
becomes a Command (`UpdateSettings`, `SetMethod`, `SetPrompt`, a button's action); a refused one is
answered with a notification to the client that sent it, and the widget (in every tab) goes back to the
session's value. Callbacks run in viser's thread pool and only call `session.send` (which validates and
queues). The UI thread calls `sync()` to show config changes made elsewhere (a load, a reset, a script)
and `commit_due()` to commit settled edits.

When edits commit (controls.Control.commit): a page sends a slider's value while it is dragged and a
number's at every keystroke, and says nothing when the drag ends; so a "release" edit is held until it
has been still for COMMIT_QUIET_S (the drag released, the typing done), and only the last value is sent.
The prompt's fields commit on Enter (their folder is a viser form) or Apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import viser

from .. import commands as C
from ..confio import ConfigError
from ..controls import PANEL, READOUTS, Button, Control, FileInput, Folder, Picker, Readout
from ..session import Session
from ..snapshot import Snapshot
from ..view import ViewSettings
from .viser_guard import UPLOAD_LIMIT, UploadReceiver, confined
from .common import (
    button_commands, button_enabled, changed_paths, control_command, control_enabled, load_command, picker_command,
    picker_options, picker_shown, prompt_applied_text, prompt_command, readout_text, same_value, slider_is_int,
    view_with, widget_value,
)

Notify = Callable[[Any, str, str, str], None]  # (client or None, title, body, level)
BUTTON_COLOURS = {"pause": "yellow", "resume": "green", "continue": "green", "reset": "red", "step": "gray"}
COMMIT_QUIET_S = 0.8  # a "release" edit commits once its widget has been still this long
SUBMIT_SETTLE_S = 0.25  # Enter acts this long after it arrives: the page sends it ahead of the last keystrokes


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
                 on_export: Callable[[Any, C.Command], None], view: ViewSettings = ViewSettings(),
                 on_view: Callable[[ViewSettings], None] = lambda v: None,
                 page_delay: Callable[[], float] = lambda: 0.0, upload_limit: int = UPLOAD_LIMIT):
        self.upload_limit = upload_limit
        self.server, self.session, self.notify, self.on_export = server, session, notify, on_export
        self.page_delay = page_delay  # seconds the slowest page takes to answer (its keys arrive that late)
        self.view, self.on_view = view, on_view
        self.widgets: dict[str, tuple[Control, Any]] = {}  # path -> (control, handle)
        self.buttons: dict[str, Any] = {}  # action -> handle
        self.folders: dict[str, Any] = {}  # folder label -> handle
        self.readouts: list[tuple[Readout, Any]] = []
        self.pickers: dict[str, tuple[Picker, Any]] = {}  # action -> (picker, handle)
        self.known_prompts = tuple(session.known_prompts)
        self.built: list[tuple[str, str]] = []  # (folder label, config path or action) in build order
        self.pending: dict[str, tuple[Any, float, Any]] = {}  # path -> (value, when edited, client): "release" edits
        self.submitted: list[tuple[Folder, Any, float]] = []  # (folder, client, when): Enter, acted on when settled
        self.synced_config = self._picker_config = session.config
        self._send_lock = threading.Lock()  # callbacks run concurrently in viser's thread pool
        for folder in PANEL:
            self._build_folder(folder)
        self._show_method(self.synced_config.run.method)
        self._update_enabled(self.synced_config)

    # ----- building ---------------------------------------------------------------------------------
    def _build_folder(self, folder: Folder) -> None:
        controls = [i for i in folder.items if isinstance(i, Control) and "viser" in i.front_ends]
        files = [i for i in folder.items if isinstance(i, FileInput)]
        expand = folder.method is not None or folder.label in ("Prompt", "Transport")
        # Enter in a text field submits the folder's form. Only folders with text fields are forms: the page
        # sends every edit, click and submit through one throttle that keeps only the newest message, and a
        # form's own messages could stand in for a widget's.
        if files or any(c.commit == "apply" for c in controls):
            handle = self.server.gui.add_form(folder.label, expand_by_default=expand)
            handle.on_submit(lambda event, f=folder: self._on_submit(f, event.client))
        else:
            handle = self.server.gui.add_folder(folder.label, expand_by_default=expand)
        self.folders[folder.label] = handle
        with handle:
            for item in folder.items:
                if isinstance(item, Button):
                    self._add_button(item)
                elif isinstance(item, Picker):
                    self._add_picker(item)
                elif isinstance(item, FileInput):
                    self._add_file_input(item)
                elif "viser" in item.front_ends:
                    self._add_control(item)
                else:
                    continue
                self.built.append((folder.label, item.path if isinstance(item, Control) else item.action))
            for readout in READOUTS.get(folder.label, ()):
                h = self.server.gui.add_text(readout.label, "–", disabled=True, hint=readout.help or None)
                self.readouts.append((readout, h))

    def _source(self, control: Control) -> Any:
        return self.view if control.is_view else self.session.config

    def _add_control(self, control: Control) -> None:
        source = self._source(control)
        gui = self.server.gui
        value = widget_value(control, source)
        hint = control.help_text() or None
        if control.kind == "text":
            handle = gui.add_text(control.label, value, hint=hint)
        elif control.kind == "checkbox":
            handle = gui.add_checkbox(control.label, value, hint=hint)
        elif control.kind == "dropdown":
            handle = gui.add_dropdown(control.label, control.options, initial_value=value, hint=hint)
        else:
            lo, hi, step = widget_bounds(control, source, value)
            if control.kind == "range":
                handle = gui.add_multi_slider(control.label, lo, hi, step, value, hint=hint)
            elif control.kind == "slider":
                handle = gui.add_slider(control.label, lo, hi, step, value, hint=hint)
            else:
                handle = gui.add_number(control.label, value, min=lo, max=hi, step=step, hint=hint)
        if control.commit != "apply":
            handle.on_update(lambda event, c=control, h=handle: self._on_control(c, h, event.client))
        self.widgets[control.path] = (control, handle)

    def _add_picker(self, picker: Picker) -> None:
        options = picker_options(picker, self.known_prompts)
        handle = self.server.gui.add_dropdown(picker.label, options,
                                              initial_value=picker_shown(picker, self.session.config, options),
                                              hint=picker.help or None,
                                              visible=picker.action != "known_prompt" or bool(self.known_prompts))
        handle.on_update(lambda event, p=picker, h=handle: self._on_picker(p, h, event.client))
        self.pickers[picker.action] = (picker, handle)

    def _add_button(self, button: Button) -> None:
        handle = self.server.gui.add_button(button.label, hint=button.help or None,
                                            color=BUTTON_COLOURS.get(button.action))
        handle.on_click(lambda event, a=button.action: self._on_button(a, event.client))
        self.buttons[button.action] = handle

    def _add_file_input(self, item: FileInput) -> None:
        gui = self.server.gui
        self.load_path = gui.add_text("Path", "", hint=f"{item.help}, on the machine running the studio "
                                                       "(Enter or Load)")
        self.load_button = gui.add_button("Load", hint="continue from the file at Path")
        self.load_button.on_click(lambda event: self.load(self.load_path.value, event.client))
        self.upload = gui.add_upload_button(f"Upload {' / '.join(item.suffixes)}", mime_type="*/*",
                                            hint=f"send {item.help} from this computer and continue from it")
        self.uploads = UploadReceiver(server=self.server, button=self.upload, folder=self.upload_folder,
                                      on_done=self._on_upload, on_refused=self._upload_refused,
                                      limit=self.upload_limit)

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
        if same_value(handle.value, widget_value(control, self._source(control))):
            self.pending.pop(control.path, None)
            return  # our own echo (sync or revert), or back where it was
        if control.commit == "release":
            self.pending[control.path] = (handle.value, time.monotonic(), client)
        else:
            self.commit(control, handle.value, client)

    def commit(self, control: Control, value: Any, client: Any) -> bool:
        """Send one edit (or set a viewer setting); a refusal puts the widget back. True when accepted."""
        handle = self.widgets[control.path][1]
        if control.is_view:
            try:
                self.view = view_with(self.view, control, value)
            except ConfigError as e:
                self.notify(client, "Refused", str(e), "error")
                handle.value = widget_value(control, self.view)
                return False
            self.on_view(self.view)
            return True
        if self.send(control_command(control, value), client):
            return True
        handle.value = widget_value(control, self.session.config)
        return False

    def commit_due(self, now: float | None = None) -> None:
        """Act on Enter in a folder (SUBMIT_SETTLE_S after it came) and commit the "release" edits that
        have been still for COMMIT_QUIET_S, or twice the slowest page's round trip if longer (a busy page
        handles the next keys only after its frame: they arrive that late)."""
        now = time.monotonic() if now is None else now
        while self.submitted and now - self.submitted[0][2] >= SUBMIT_SETTLE_S:
            folder, client, _ = self.submitted.pop(0)
            self._submit(folder, client)
        quiet = max(COMMIT_QUIET_S, 2.0 * self.page_delay())
        for path, (value, when, client) in list(self.pending.items()):
            if now - when >= quiet:
                self._commit_pending(path, when)

    def _commit_pending(self, path: str, when: float) -> None:
        value, edited, client = self.pending.get(path, (None, None, None))
        if edited != when:
            return  # edited again meanwhile, or committed already
        del self.pending[path]
        self.commit(self.widgets[path][0], value, client)

    def _on_submit(self, folder: Folder, client: Any) -> None:
        self.submitted.append((folder, client, time.monotonic()))

    def _submit(self, folder: Folder, client: Any) -> None:
        """Enter in one of the folder's fields: apply the prompt, load the path, or commit held edits."""
        if folder.label == "Prompt":
            self._apply_prompt(client)
        if any(isinstance(i, FileInput) for i in folder.items):
            self.load(self.load_path.value, client)
        for item in folder.items:
            if isinstance(item, Control) and item.path in self.pending:
                self._commit_pending(item.path, self.pending[item.path][1])

    def _on_picker(self, picker: Picker, handle: Any, client: Any) -> None:
        options = picker_options(picker, self.known_prompts)
        shown = picker_shown(picker, self.session.config, options)
        if handle.value == shown:
            return  # our own echo, or no change
        cmd = picker_command(picker, handle.value, self.session.config)
        if cmd is None or not self.send(cmd, client):
            handle.value = shown
        elif isinstance(cmd, C.SetPrompt):
            self.widgets["prompt.prompt"][1].value = cmd.prompt
            self.notify(client, "Prompt", prompt_applied_text(cmd.prompt, cmd.negative or ""), "info")

    def _apply_prompt(self, client: Any) -> None:
        prompt = self.widgets["prompt.prompt"][1].value
        negative = self.widgets["prompt.negative"][1].value
        cmd = prompt_command(prompt, negative, self.session.config)
        if cmd is None:
            return
        if self.send(cmd, client):
            self.notify(client, "Prompt", prompt_applied_text(prompt, negative), "info")
        else:  # every tab shows the prompt in use again, not the refused text
            cfg = self.session.config.prompt
            self.widgets["prompt.prompt"][1].value = cfg.prompt
            self.widgets["prompt.negative"][1].value = cfg.negative

    def _on_button(self, action: str, client: Any) -> None:
        if action == "apply_prompt":
            self._apply_prompt(client)
            return
        for cmd in button_commands(action, self.session.snapshot):
            if isinstance(cmd, (C.Export, C.SaveCheckpoint)):
                self.on_export(client, cmd)
            if not self.send(cmd, client):
                return

    def upload_folder(self) -> Path:
        return self.session.out_dir / "uploads"

    def open_roots(self) -> list[Path]:
        """The folders a page may open files from: the output folder that holds this run's folder (its
        sibling runs too), or the run folder itself when it stands alone; uploads land inside it."""
        run = self.session.out_dir
        return [run.parent if run.name.startswith("run-") else run]

    def load(self, path: str, client: Any) -> None:
        try:
            cmd = load_command(confined(path, self.open_roots()) if path.strip() else path)
        except C.CommandError as e:
            self.notify(client, "Load", str(e), "error")
            return
        self.send(cmd, client)

    def _on_upload(self, client: Any, path: Path) -> None:
        """A complete upload, renamed into the uploads folder: show its path and load it."""
        self.load_path.value = str(path)
        if client is not None:
            self.load(str(path), client)

    def _upload_refused(self, client: Any, text: str) -> None:
        if client is not None:  # a page that left hears nothing
            self.notify(client, "Upload", text, "error")

    def sync(self) -> None:
        """Show the session's requested config in every widget whose value it changed since last shown
        (a widget holding an edit not yet committed keeps it)."""
        self.commit_due()
        with self._send_lock:
            cfg = self.session.config
            old, self.synced_config = self.synced_config, cfg
        controls = [c for c, _ in self.widgets.values() if not c.is_view]
        for control in changed_paths(controls, old, cfg):
            if control.path in self.pending:
                continue
            handle, value = self.widgets[control.path][1], widget_value(control, cfg)
            if control.kind in ("slider", "number", "int", "range"):
                handle.min, handle.max, _ = widget_bounds(control, cfg, value)
            handle.value = value
        if self._picker_config is not cfg:  # also after our own sends, which mark the config as shown
            self._picker_config = cfg
            for picker, handle in self.pickers.values():
                value = picker_shown(picker, cfg, picker_options(picker, self.known_prompts))
                if handle.value != value:
                    handle.value = value
        # Cheap when nothing changed (viser sends a property only when its value differs).
        self._show_method(cfg.run.method)
        self._update_enabled(cfg)

    def _show_method(self, method: str) -> None:
        """Only the active estimator's folder is shown; its settings are what the session uses now."""
        for folder in PANEL:
            if folder.method is not None:
                self.folders[folder.label].visible = folder.method == method

    def _update_enabled(self, cfg: Any) -> None:
        for control, handle in self.widgets.values():
            if not control.is_view:
                handle.disabled = not control_enabled(control, cfg)

    def enabled_items(self) -> dict[str, bool]:
        """{config path or action: enabled} of the buttons and controls as the page shows them now."""
        out = {action: not h.disabled for action, h in self.buttons.items()}
        out.update({path: not h.disabled for path, (c, h) in self.widgets.items()})
        return out

    def update(self, snap: Snapshot) -> None:
        """Transport buttons and live readouts from a snapshot."""
        for action, handle in self.buttons.items():
            if action != "apply_prompt":
                handle.disabled = not button_enabled(action, snap)
        for readout, handle in self.readouts:
            handle.value = readout_text(snap, readout)
