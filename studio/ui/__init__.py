"""Front-ends: the browser studio (`viser_ui`) and the desktop window (`desktop_ui`), both generated from
`studio/controls.py`; `common` holds the logic they share (button -> command, widget <-> config values,
status lines, plot series, event tracking). Front-ends never touch tensors: they send commands and read
snapshots."""
