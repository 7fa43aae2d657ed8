"""Typed access to nested frozen dataclasses: dict / JSON round trip and `section.field=value` edits.

Everything here is driven by the dataclasses' own type hints, so a new setting needs no code here:
add the field (with a docstring comment and a range check in the section's `validate()`), and it can be
set from `--set`, a preset file, a UI control and a checkpoint alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A setting that cannot be applied; the message names the field and what is allowed."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unknown(owner: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{owner}: unknown setting {key!r}{hint} (known: {', '.join(known)})")


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
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


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
        raise ConfigError(errors[0] if errors else f"{name}: cannot be {value!r}")
    if origin is Literal:
        for choice in args:
            if value == choice or str(value) == str(choice):
                return choice
        if {"on", "off"} <= set(args) and (isinstance(value, bool) or str(value).lower() in ("true", "false")):
            # auto / on / off switches that were booleans once (configs and checkpoints saved then)
            return "on" if _parse_bool(name, value) else "off"
        raise ConfigError(f"{name}: must be one of {', '.join(map(str, args))}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list like 1,2, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(name, args[0], v) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values (e.g. lo,hi), got {len(value)}: {value!r}")
        return tuple(coerce(name, a, v) for a, v in zip(args, value))
    if tp is bool:
        return _parse_bool(name, value)
    if tp in (int, float, str):
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {tp.__name__}, got {value!r}") from None
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, prefix=name)
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a (possibly partial) dict over `base` (default: cls's defaults)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    current = base if base is not None else cls()
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix or cls.__name__, key, names)
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


def parse_assignments(items: list[str]) -> dict[str, str]:
    """["a.b=1", "c=x"] -> {"a.b": "1", "c": "x"}; a missing '=' is a ConfigError."""
    out = {}
    for item in items:
        if "=" not in item:
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
