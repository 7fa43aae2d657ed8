"""What each command means.

`prepare(cmd, base, ...)` runs when the command is sent (any thread): it parses and validates the command
once, against the config as of every command accepted before it, and returns a `Prepared` command that
carries the config it leads to (and, for a checkpoint, the file's contents). A refusal raises
CommandError and changes nothing.

`apply(state, prepared)` runs between steps (the worker thread). Every handler does all that can fail
first (building a trainer, a prior, reading a PLY, writing a file) and only then replaces objects in the
SessionState, so that with `SessionState.memento / restore` around it a failure leaves config, trainer,
scene, optimizer, prior and estimator state exactly as they were.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import commands as C
from . import config as cfgmod
from . import confio
from .atomic import ReadError
from .config import StudioConfig
from .confio import ConfigError
from .export import (
    CHECKSUM_KEY, MESH_FORMATS, SUFFIXES, TurntableSettings, export_mesh, export_splats, export_turntable,
    load_checkpoint, save_checkpoint, write_json_atomic,
)
from .readers import validate_scene_file
from .scene import SceneError, check_state
from .state import SessionState

CHECKPOINT_FORMAT = "gaussian-dreamer-studio/checkpoint-2"  # what `save` writes: with a SHA-256 checksum
CHECKPOINT_FORMATS = ("gaussian-dreamer-studio/checkpoint-1", CHECKPOINT_FORMAT)  # what loads (1: no checksum)
SETTINGS_COMMANDS = (C.SetPrompt, C.SetMethod, C.SetSeed, C.UpdateSettings, C.ApplyPreset, C.Continue)
NEW_SEGMENT_PATHS = ("prompt.prompt", "prompt.negative", "prior.")  # a change here starts a new segment
BUILDING_PATHS = ("prompt.", "prior.", "render.renderer", "densify.")  # applying these builds, and may fail


@dataclass(frozen=True)
class SendContext:
    """What `prepare` needs to know about the session besides the config."""

    check_prompt: Callable[[StudioConfig], None]  # raises ValueError for a prompt the prior cannot take
    iteration: int  # the session's iteration as last published
    plan_unit: int  # the steps Continue adds by default
    out_dir: Path


@dataclass(frozen=True)
class Prepared:
    cmd: C.Command
    base: StudioConfig  # the config it was validated against
    config: StudioConfig  # the config after it
    user_set: frozenset[str]  # the user-set paths after it
    payload: dict[str, Any] | None = None  # LoadCheckpoint: the checkpoint, read and checked


# ----- when sent ----------------------------------------------------------------------------------------
def prepare(cmd: C.Command, base: StudioConfig, user_set: frozenset[str], ctx: SendContext,
            payload: dict[str, Any] | None = None) -> Prepared:
    """Validate `cmd` against `base`; raise CommandError naming the field and the allowed values."""
    if isinstance(cmd, C.Resume) and ctx.iteration >= base.run.steps:
        cmd = C.Continue()  # resuming a finished plan extends it
    if isinstance(cmd, SETTINGS_COMMANDS):
        values, user = _settings_values(cmd, base, user_set, ctx)
        try:
            new = cfgmod.with_values(base, values)
        except ConfigError as e:
            raise C.CommandError(str(e)) from None
        _check_prompt(new, base, ctx)
        return Prepared(cmd, base, new, user)
    if isinstance(cmd, C.StepOnce) and not 1 <= cmd.count <= 100_000:
        raise C.CommandError(f"step: count must lie in [1, 100000], got {cmd.count}")
    if isinstance(cmd, C.Export):
        bad = [f for f in cmd.formats if f not in C.EXPORT_FORMATS]
        if bad or not cmd.formats:
            raise C.CommandError(f"export: formats must be among {', '.join(C.EXPORT_FORMATS)}, got "
                                 f"{', '.join(cmd.formats) or 'none'}")
        if cmd.name is not None:
            _check_export_name(cmd.name)
        _check_dir(Path(cmd.out_dir) if cmd.out_dir else ctx.out_dir, "export")
    if isinstance(cmd, C.SaveCheckpoint) and cmd.path:
        _check_dir(Path(cmd.path).parent, "checkpoint")
    if isinstance(cmd, (C.LoadCheckpoint, C.LoadPly)) and not Path(cmd.path).is_file():
        raise C.CommandError(f"load: no file at {cmd.path}")
    if isinstance(cmd, C.LoadCheckpoint):
        payload = payload if payload is not None else read_checkpoint(Path(cmd.path))
        new = checkpoint_config(payload, cmd.path)
        try:
            _check_prompt(new, base, ctx)
        except C.CommandError as e:
            raise C.CommandError(f"load: {cmd.path}: {e}") from None
        return Prepared(cmd, base, new, frozenset(payload.get("user_set", ())), payload)
    if isinstance(cmd, C.LoadPly):
        try:
            validate_scene_file(cmd.path)  # read and checked now; applying it reads it again, between steps
        except ReadError as e:
            raise C.CommandError(f"load: {e}") from None
        new = replace(base, init=replace(base.init, kind="ply", path=str(cmd.path)))
        return Prepared(cmd, base, new, user_set)
    return Prepared(cmd, base, base, user_set)


def _check_export_name(name: str) -> None:
    """An export's name is a file stem inside its folder: no folders, no hidden or control characters."""
    if (not name or len(name) > 200 or name.startswith(".") or any(c in name for c in "/\\")
            or not name.isprintable()):
        raise C.CommandError(f"export: name must be a plain file name (up to 200 printable characters, no "
                             f"'/', '\\' or leading '.'), got {name[:60]!r}")


def _settings_values(cmd: C.Command, base: StudioConfig, user_set: frozenset[str],
                     ctx: SendContext) -> tuple[dict[str, Any], frozenset[str]]:
    """The dotted paths a settings command sets, and the user-set paths after it."""
    if isinstance(cmd, C.SetPrompt):
        values = {"prompt.prompt": cmd.prompt}
        if cmd.negative is not None:
            values["prompt.negative"] = cmd.negative
        return values, user_set | set(values)
    if isinstance(cmd, C.SetMethod):
        # The method's preset section, except what the user set this run (sds -> sds, ism -> lucid, ...).
        try:
            preset = cfgmod.method_preset_values(cmd.method)
        except ConfigError as e:
            raise C.CommandError(str(e)) from None
        values = {p: v for p, v in preset.items() if p not in user_set}
        return {**values, "run.method": cmd.method}, user_set
    if isinstance(cmd, C.SetSeed):
        return {"run.seed": cmd.seed}, user_set | {"run.seed"}
    if isinstance(cmd, C.UpdateSettings):
        return dict(cmd.values), user_set | set(cmd.values)
    if isinstance(cmd, C.ApplyPreset):
        try:
            values = cfgmod.live_preset_values(cmd.name)
        except ConfigError as e:
            raise C.CommandError(str(e)) from None
        return values, user_set - set(values)  # the preset's values are the preset's, not the user's
    assert isinstance(cmd, C.Continue), cmd
    count = ctx.plan_unit if cmd.count is None else cmd.count
    if not 1 <= count <= 1_000_000:
        raise C.CommandError(f"continue: count must lie in [1, 1000000], got {count}")
    return {"run.steps": min(1_000_000, max(base.run.steps, ctx.iteration) + count)}, user_set


def _check_prompt(new: StudioConfig, old: StudioConfig, ctx: SendContext) -> None:
    """The procedural prior knows a fixed set of prompts: refuse others now, not mid-run."""
    if new.prior.model != "procedural" or (new.prompt == old.prompt and new.prior == old.prior):
        return
    try:
        ctx.check_prompt(new)
    except ValueError as e:
        raise C.CommandError(f"prompt: {e}") from None


def _check_dir(directory: Path, what: str) -> None:
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                raise C.CommandError(f"{what}: cannot write under {directory}: {parent} is a file")
            return


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A studio checkpoint's payload, checked as far as it can be without building anything: its format
    and checksum, its settings, its trainer state (scene shapes and values, estimator and random states),
    its metrics. Loading it into a trainer, a transaction, checks the rest. Raises CommandError (one line)."""
    try:
        payload = load_checkpoint(path)
    except ReadError as e:
        raise C.CommandError(f"load: {e}") from None
    fmt = payload.get("format")
    if fmt not in CHECKPOINT_FORMATS:
        raise C.CommandError(f"load: {path} is not a studio checkpoint (format {str(fmt)[:80]!r})")
    if fmt == CHECKPOINT_FORMAT and CHECKSUM_KEY not in payload:
        raise C.CommandError(f"load: {path} is damaged: a {fmt} file carries a checksum and this one has none; "
                             "load an earlier checkpoint")
    checkpoint_config(payload, path)  # the settings first: a file with bad settings says so
    problem = _trainer_problem(payload.get("trainer")) or _payload_problem(payload)
    if problem is not None:
        raise C.CommandError(f"load: {path} is damaged: {problem}; load an earlier checkpoint")
    return payload


def _trainer_problem(trainer: Any) -> str | None:
    """What is wrong with a checkpoint's trainer state (Trainer.state_dict), or None."""
    missing = [k for k in ("iteration", "scene", "estimators", "sampler_rng", "bg_rng", "torch_rng")
               if not isinstance(trainer, dict) or k not in trainer]
    if missing:
        return f"its trainer state lacks {', '.join(missing)}"
    for key in ("iteration", "skipped_steps"):
        value = trainer.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**62:
            return f"trainer.{key} is {str(value)[:40]!r}, not a count"
    try:
        check_state(trainer["scene"])
    except SceneError as e:
        return f"trainer.{e}"
    rng_size = torch.get_rng_state().numel()
    for key in ("sampler_rng", "bg_rng", "torch_rng"):
        if not _is_rng_state(trainer[key], rng_size):
            return f"trainer.{key} is not a CPU random state (uint8 [{rng_size}])"
    estimators = trainer["estimators"]
    if not isinstance(estimators, dict):
        return "trainer.estimators is not a table of estimator states"
    unknown = sorted(str(m) for m in estimators if m not in cfgmod.METHODS)
    if unknown:
        return (f"it holds estimator state for {', '.join(unknown)}, which this studio does not have (it has "
                f"{', '.join(cfgmod.METHODS)})")
    for name, est in estimators.items():
        problem = _estimator_problem(est, rng_size)
        if problem is not None:
            return f"trainer.estimators.{name}: {problem}"
    return None


def _is_rng_state(t: Any, size: int | None) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and \
        (t.numel() == size if size is not None else t.numel() > 0)


def _estimator_problem(est: Any, rng_size: int) -> str | None:
    """An estimator's state: its random streams (guidance.estimators.common.RandomStreams) and any
    tensors of its own (SSD's control-variate averages), which must be finite."""
    rng = est.get("rng") if isinstance(est, dict) else None
    if not isinstance(rng, dict):
        return "no random streams (rng)"
    seed = rng.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        return f"rng.seed is {str(seed)[:40]!r}, not a seed"
    if not _is_rng_state(rng.get("timesteps"), rng_size):
        return f"rng.timesteps is not a CPU random state (uint8 [{rng_size}])"
    noise = rng.get("noise", {})
    if not isinstance(noise, dict) or not all(
            _is_rng_state(v, rng_size if k == "cpu" else None) for k, v in noise.items()):
        return "rng.noise is not a table of random states by device"
    own = {k: v for k, v in est.items() if k != "rng"}
    tensors = [v for v in own.values() if v is not None]
    if not all(isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() == 1 for v in tensors) or \
            len({tuple(v.shape) for v in tensors}) > 1:
        return f"{', '.join(own)} must be float vectors of one length (or None)"
    bad = [k for k, v in own.items() if v is not None and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{', '.join(bad)} hold NaN or inf values"
    return None


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """The metrics history, the elapsed time and the user-set paths."""
    metrics = payload.get("metrics", {})
    history = metrics.get("history", {}) if isinstance(metrics, dict) else None
    number = (int, float)
    if not isinstance(history, dict) or not all(
            isinstance(v, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], int)
                                        and isinstance(p[1], number) for p in v)
            for v in history.values()):
        return "its metrics history is not a table of (step, value)"
    elapsed = payload.get("elapsed", 0.0)
    if isinstance(elapsed, bool) or not isinstance(elapsed, number) or not (math.isfinite(elapsed) and elapsed >= 0):
        return f"elapsed is {str(elapsed)[:40]!r}, not a number of seconds"
    user_set = payload.get("user_set", [])
    if not isinstance(user_set, (list, tuple)) or not all(isinstance(p, str) for p in user_set):
        return "user_set is not a list of setting paths"
    return None


def checkpoint_config(payload: dict[str, Any], path: str | Path) -> StudioConfig:
    try:
        return cfgmod.from_json(payload["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise C.CommandError(f"load: {path} holds settings this studio cannot use: {e}") from None


# ----- between steps ------------------------------------------------------------------------------------
def apply(state: SessionState, p: Prepared) -> None:
    """Carry out a prepared command (worker thread). Raises on failure; the caller rolls back."""
    cmd = p.cmd
    if isinstance(cmd, SETTINGS_COMMANDS):
        _apply_settings(state, p)
    elif isinstance(cmd, C.Pause):
        state.paused = True
    elif isinstance(cmd, C.Resume):
        state.paused = False
        state.last_error = None
    elif isinstance(cmd, C.StepOnce):
        state.pending_steps += cmd.count
    elif isinstance(cmd, C.Reset):
        _replace_trainer(state, state.trainer.derive(state.trainer.cfg))
        state.last_error = None
        state.event("info", "scene reset: a new segment starts at step 0")
    elif isinstance(cmd, C.Export):
        export(state, cmd.formats, Path(cmd.out_dir) if cmd.out_dir else state.run_dir, cmd.name)
    elif isinstance(cmd, C.SaveCheckpoint):
        save(state, Path(cmd.path) if cmd.path else None)
    elif isinstance(cmd, C.LoadCheckpoint):
        _load_checkpoint(state, p)
    elif isinstance(cmd, C.LoadPly):
        trainer = state.trainer.derive(p.config)  # reads the PLY
        _replace_trainer(state, trainer)
        state.event("info", f"loaded {trainer.scene.num_gaussians} Gaussians from {Path(cmd.path).name}",
                    str(cmd.path))
    else:
        raise C.CommandError(f"unknown command {cmd!r}")


def _apply_settings(state: SessionState, p: Prepared) -> None:
    old = state.trainer.cfg
    state.trainer.apply_config(p.config)  # rolls itself back on failure
    state.user_set = p.user_set
    changed = confio.diff(old, p.config)
    if any(path.startswith(NEW_SEGMENT_PATHS) for path in changed):
        state.new_segment()
    if isinstance(p.cmd, C.Continue):
        state.paused, state.last_error = False, None
        state.event("info", f"continuing: the plan is now {p.config.run.steps:,} steps")
    elif isinstance(p.cmd, C.ApplyPreset):
        state.event("info", f"preset {p.cmd.name} applied: " + ", ".join(sorted(changed)) if changed
                    else f"preset {p.cmd.name}: the settings already match it")


def _replace_trainer(state: SessionState, trainer: Any, history: dict | None = None, elapsed: float = 0.0) -> None:
    """Commit a new trainer (a reset, a load): a new segment, and a good copy of its first state."""
    if not trainer.scene.is_finite():
        raise C.CommandError("the scene has NaN or infinite parameters; it cannot be trained")
    state.trainer = trainer
    state.pending_steps = 0
    state.new_segment(history, elapsed)
    state.keep_good()


def _load_checkpoint(state: SessionState, p: Prepared) -> None:
    payload = p.payload
    assert payload is not None and isinstance(p.cmd, C.LoadCheckpoint)
    trainer = state.trainer.derive(p.config, state=payload["trainer"])  # all of the checking happens here
    saved = payload.get("metrics", {}).get("history", {})
    history = {k: [(int(s), float(v)) for s, v in pts] for k, pts in saved.items()}
    _replace_trainer(state, trainer, history, float(payload.get("elapsed", 0.0)))
    state.user_set = p.user_set
    state.last_error = None
    state.saved_iteration = trainer.iteration
    state.event("info", f"resumed {Path(p.cmd.path).name} at iteration {trainer.iteration}", str(p.cmd.path))


# ----- files ----------------------------------------------------------------------------------------------
def stem_for(prompt: str, iteration: int) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", prompt).strip("_")[:40] or "scene"
    return f"{slug}_{iteration:06d}"


def export(state: SessionState, formats: tuple[str, ...], out_dir: Path, name: str | None = None) -> list[Path]:
    """Write each format into out_dir with the config beside it; one event per file."""
    tr = state.trainer
    stem = name or stem_for(tr.cfg.prompt.prompt, tr.iteration)
    written = []
    for fmt in formats:
        t0 = time.perf_counter()
        if fmt == "checkpoint":
            written.append(save(state, out_dir / f"{stem}.pt"))
            continue
        path = out_dir / f"{stem}{SUFFIXES[fmt]}"
        if fmt in ("mp4", "gif"):
            tt = TurntableSettings(size=max(128, min(512, 4 * tr.cfg.render.resolution)))
            result = export_turntable(tr.renderer, tr.scene.to_params().detach(), path, tt)
        elif fmt in MESH_FORMATS:
            result = export_mesh(tr.scene.raw(), path, fmt, tr.cfg.mesh)
        else:
            result = export_splats(tr.scene.raw(), path, fmt)
        write_json_atomic(path.with_name(path.name + ".json"), {
            "iteration": tr.iteration, "seed": tr.cfg.run.seed, "config": confio.to_dict(tr.cfg)})
        extra = f", {result.num_dropped} non-finite Gaussians left out" if result.num_dropped else ""
        extra = f", {result.detail}{extra}" if result.detail else extra
        state.event("info", f"exported {path.name} ({result.num_bytes / 1e6:.2f} MB, "
                            f"{time.perf_counter() - t0:.1f} s{extra})", str(path))
        written.append(path)
    return written


def save(state: SessionState, path: Path | None) -> Path:
    """Write a checkpoint (atomically): config, trainer, this segment's metrics, user-set paths."""
    tr = state.trainer
    path = path or state.run_dir / f"checkpoint_{tr.iteration:06d}.pt"
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT,
        "config": confio.to_dict(tr.cfg),
        "trainer": tr.state_dict(),
        "metrics": state.metrics.state_dict(),
        "elapsed": state.elapsed,
        "user_set": sorted(state.user_set),
    })
    state.saved_iteration = tr.iteration
    state.event("info", f"checkpoint saved at iteration {tr.iteration}: {path.name}", str(path))
    return path
