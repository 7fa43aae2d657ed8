"""Typed access to nested frozen dataclasses: dict / JSON round trip and `section.field=value` edits.

Everything here is driven by the dataclasses' own type hints, so a new setting needs no code here:
add the field (with a docstring comment and a range check in the section's `validate()`), and it can be
set from `--set`, a preset file, a UI control and a checkpoint alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import reprlib
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A setting that cannot be applied; the message names the field and what is allowed."""


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlist, _SHOW.maxdict = 2, 60, 60, 4, 4


def show(value: Any) -> str:
    """`repr(value)` cut short, for messages: a value from a file may be huge or nested deeply."""
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError):  # an int of more digits than Python will print
        return f"<{type(value).__name__}>"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown(owner: str, key: Any, known: list[str]) -> ConfigError:
    """`owner` "" is the top level, whose keys are sections."""
    close = difflib.get_close_matches(key, known, n=3) if isinstance(key, str) else []
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    what = f"{owner}: unknown setting" if owner else "unknown section"
    return ConfigError(f"{what} {show(key)}{hint} (known: {', '.join(known)})")


def to_dict(obj: Any) -> Any:
    """Nested dataclass -> plain JSON-able dict (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {show(value)}")


def coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert `value` (JSON value or command-line string) to type `tp`, or raise ConfigError naming `name`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(name, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot be {show(value)}")
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        if {"on", "off"} <= set(args) and (isinstance(value, bool) or str(value).lower() in ("true", "false")):
            # auto / on / off switches that were booleans once (configs and checkpoints saved then)
            return "on" if _parse_bool(name, value) else "off"
        raise ConfigError(f"{name}: must be one of {', '.join(map(str, args))}, got {show(value)}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list like 1,2, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(name, args[0], v) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values (e.g. lo,hi), got {len(value)}: {show(value)}")
        return tuple(coerce(name, a, v) for a, v in zip(args, value))
    if tp is bool:
        return _parse_bool(name, value)
    if tp in (int, float, str):
        if not isinstance(value, (str, int, float)):  # a table or a list from a file; str() would take it
            raise ConfigError(f"{name}: expected {'text' if tp is str else 'a number'}, got {show(value)}")
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: expected a whole number, got {show(value)}")
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{name}: expected a number, got {show(value)}")
        try:
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except OverflowError:  # int("1e400"): float() says inf, int() refuses it
            raise ConfigError(f"{name}: expected a whole number, got {show(value)} (too large)") from None
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {show(value)}") from None
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table of settings, got {show(value)}")
        return from_dict(tp, value, prefix=name)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a (possibly partial) dict over `base` (default: cls's defaults)."""
    if not isinstance(data, dict):  # a file's top level may be anything JSON holds
        where = f"{prefix}: expected" if prefix else "expected"
        raise ConfigError(f"{where} a table of settings like {{\"run\": {{\"steps\": 600}}}}, got "
                          f"{type(data).__name__} {show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    current = base if base is not None else cls()
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix, key, names)
        full = f"{prefix}.{key}" if prefix else key
        tp = hints[key]
        if _is_dataclass_type(tp) and isinstance(value, dict):
            changes[key] = from_dict(tp, value, prefix=full, base=getattr(current, key))
        else:
            changes[key] = coerce(full, tp, value)
    return dataclasses.replace(current, **changes)


def get_path(cfg: Any, path: str) -> Any:
    obj = cfg
    for part in path.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"unknown setting {path!r}")
        obj = getattr(obj, part)
    return obj


def field_type(cls: type, path: str) -> Any:
    """The type hint of dotted `path` inside dataclass `cls`."""
    tp: Any = cls
    for part in path.split("."):
        if not _is_dataclass_type(tp):
            raise ConfigError(f"unknown setting {path!r}")
        hints = typing.get_type_hints(tp)
        if part not in hints:
            raise _unknown(path, part, list(hints))
        tp = hints[part]
    return tp


def set_paths(cfg: Any, values: dict[str, Any]) -> Any:
    """A copy of `cfg` with each dotted path set (values are coerced from strings or JSON values)."""
    nested: dict[str, Any] = {}
    for path, value in values.items():
        field_type(type(cfg), path)  # unknown paths fail here with suggestions
        node = nested
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(type(cfg), nested, base=cfg)


def parse_json(text: str) -> Any:
    """JSON text -> its value; ConfigError (one line) for text that is not JSON, or is nested or sized
    beyond what Python's parser takes."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); a config is JSON "
                          f"like the .json written next to every export") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ConfigError(f"not a usable JSON config ({str(e).split(':')[0]})") from None
    except RecursionError:
        raise ConfigError("nested too deeply to be a config (sections hold settings, two levels)") from None


def parse_assignments(items: list[str]) -> dict[str, str]:
    """["a.b=1", "c=x"] -> {"a.b": "1", "c": "x"}; a missing '=' is a ConfigError."""
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set ism.delta_t=80")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def field_doc(cls: type, name: str) -> str:
    """The docstring written under a dataclass field (attribute docstring), or ""."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return ""
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            return " ".join(nxt.value.value.split())
    return ""


def diff(a: Any, b: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths whose values differ between dataclasses a and b, with b's values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(va) and dataclasses.is_dataclass(vb):
            out.update(diff(va, vb, path + "."))
        elif va != vb:
            out[path] = vb
    return out
