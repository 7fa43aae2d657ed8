"""What each command means: checked when sent (`validate`, any thread), carried out between steps
(`apply`, the worker thread). Exports and checkpoints live here too, since they are commands."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import commands as C
from . import config as cfgmod
from . import confio
from .confio import ConfigError
from .export import (
    SUFFIXES, TurntableSettings, export_splats, export_turntable, load_checkpoint, save_checkpoint,
    write_json_atomic,
)
from .scene import GaussianScene

if TYPE_CHECKING:
    from .session import Session

CHECKPOINT_FORMAT = "gaussian-dreamer-studio/checkpoint-1"


def _config_values(cmd: C.Command) -> dict[str, Any] | None:
    """The config paths a command sets, or None for commands that do not edit settings."""
    if isinstance(cmd, C.SetPrompt):
        values = {"prompt.prompt": cmd.prompt}
        if cmd.negative is not None:
            values["prompt.negative"] = cmd.negative
        return values
    if isinstance(cmd, C.SetMethod):
        return {"run.method": cmd.method}
    if isinstance(cmd, C.SetSeed):
        return {"run.seed": cmd.seed}
    if isinstance(cmd, C.UpdateSettings):
        return dict(cmd.values)
    return None


def stem_for(prompt: str, iteration: int) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", prompt).strip("_")[:40] or "scene"
    return f"{slug}_{iteration:06d}"


class Actions:
    def __init__(self, session: "Session"):
        self.s = session

    # ----- when sent ----------------------------------------------------------------------------------
    def validate(self, cmd: C.Command, requested: cfgmod.StudioConfig) -> tuple[C.Command, cfgmod.StudioConfig]:
        """Raise CommandError if `cmd` cannot be applied; return it and the config it leads to."""
        values = _config_values(cmd)
        if values is not None:
            try:
                new = cfgmod.with_values(requested, values)
            except ConfigError as e:
                raise C.CommandError(str(e)) from None
            self._check_prompt(new, requested)
            return cmd, new
        if isinstance(cmd, C.StepOnce) and not 1 <= cmd.count <= 100_000:
            raise C.CommandError(f"step: count must lie in [1, 100000], got {cmd.count}")
        if isinstance(cmd, C.Export):
            bad = [f for f in cmd.formats if f not in C.EXPORT_FORMATS]
            if bad or not cmd.formats:
                raise C.CommandError(f"export: formats must be among {', '.join(C.EXPORT_FORMATS)}, got "
                                     f"{', '.join(cmd.formats) or 'none'}")
            self._check_dir(Path(cmd.out_dir) if cmd.out_dir else self.s.out_dir, "export")
        if isinstance(cmd, C.SaveCheckpoint) and cmd.path:
            self._check_dir(Path(cmd.path).parent, "checkpoint")
        if isinstance(cmd, (C.LoadCheckpoint, C.LoadPly)) and not Path(cmd.path).is_file():
            raise C.CommandError(f"load: no file at {cmd.path}")
        return cmd, requested

    def _check_prompt(self, new: cfgmod.StudioConfig, old: cfgmod.StudioConfig) -> None:
        """The procedural prior knows a fixed set of prompts: refuse others now, not mid-run. (Its embed
        is a pure tag lookup, safe from any thread; an SD prior accepts any text.)"""
        if new.prior.model != "procedural" or (new.prompt == old.prompt and new.prior == old.prior):
            return
        try:
            self.s.trainer.prior.embed(new.prompt.prompt, new.prompt.negative)
        except ValueError as e:
            raise C.CommandError(f"prompt: {e}") from None

    @staticmethod
    def _check_dir(directory: Path, what: str) -> None:
        for parent in (directory, *directory.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise C.CommandError(f"{what}: cannot write under {directory}: {parent} is a file")
                return

    # ----- between steps ------------------------------------------------------------------------------
    def apply(self, cmd: C.Command) -> None:
        s, tr = self.s, self.s.trainer
        values = _config_values(cmd)
        if values is not None:
            tr.apply_config(cfgmod.with_values(tr.cfg, values))
        elif isinstance(cmd, C.Pause):
            s.set_paused(True)
        elif isinstance(cmd, C.Resume):
            s.set_paused(False)
        elif isinstance(cmd, C.StepOnce):
            s.add_steps(cmd.count)
        elif isinstance(cmd, C.Reset):
            tr.reset()
            s.last_error = None
            s.event("info", "scene reset")
        elif isinstance(cmd, C.Export):
            self.export(cmd.formats, Path(cmd.out_dir) if cmd.out_dir else s.out_dir, cmd.name)
        elif isinstance(cmd, C.SaveCheckpoint):
            self.save_checkpoint(Path(cmd.path) if cmd.path else None)
        elif isinstance(cmd, C.LoadCheckpoint):
            self.load_checkpoint(Path(cmd.path))
        elif isinstance(cmd, C.LoadPly):
            self.load_ply(Path(cmd.path))
        else:
            raise C.CommandError(f"unknown command {cmd!r}")

    def export(self, formats: tuple[str, ...], out_dir: Path, name: str | None = None) -> list[Path]:
        """Write each format into out_dir with the config beside it; one event per file."""
        tr = self.s.trainer
        stem = name or stem_for(tr.cfg.prompt.prompt, tr.iteration)
        written = []
        for fmt in formats:
            t0 = time.perf_counter()
            if fmt == "checkpoint":
                written.append(self.save_checkpoint(out_dir / f"{stem}.pt"))
                continue
            path = out_dir / f"{stem}{SUFFIXES[fmt]}"
            if fmt in ("mp4", "gif"):
                res = self.s.trainer.cfg.render.resolution
                tt = TurntableSettings(size=max(128, min(512, 4 * res)))
                result = export_turntable(tr.renderer, tr.scene.to_params().detach(), path, tt)
            else:
                result = export_splats(tr.scene.raw(), path, fmt)
            self._sidecar(path)
            extra = f", {result.num_dropped} non-finite Gaussians left out" if result.num_dropped else ""
            self.s.event("info", f"exported {path.name} ({result.num_bytes / 1e6:.2f} MB, "
                                 f"{time.perf_counter() - t0:.1f} s{extra})", str(path))
            written.append(path)
        return written

    def _sidecar(self, path: Path) -> None:
        tr = self.s.trainer
        write_json_atomic(path.with_name(path.name + ".json"), {
            "iteration": tr.iteration, "seed": tr.cfg.run.seed, "config": confio.to_dict(tr.cfg)})

    def save_checkpoint(self, path: Path | None) -> Path:
        tr = self.s.trainer
        path = path or self.s.out_dir / f"checkpoint_{tr.iteration:06d}.pt"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": confio.to_dict(tr.cfg),
            "trainer": tr.state_dict(),
            "metrics": self.s.metrics.state_dict(),
            "elapsed": self.s._elapsed,
        }
        save_checkpoint(path, payload)
        self.s.event("info", f"checkpoint saved at iteration {tr.iteration}: {path.name}", str(path))
        return path

    def load_checkpoint(self, path: Path) -> None:
        payload = load_checkpoint(path)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise C.CommandError(f"load: {path} is not a studio checkpoint (format {payload.get('format')!r})")
        cfg = cfgmod.from_json(payload["config"])
        tr = self.s.trainer
        tr.apply_config(cfg)
        tr.load_state_dict(payload["trainer"])
        self.s.metrics.load_state_dict(payload.get("metrics", {}))
        self.s._elapsed = float(payload.get("elapsed", 0.0))
        with self.s._lock:
            self.s._requested = cfg
        self.s.last_error = None
        self.s.event("info", f"resumed {path.name} at iteration {tr.iteration}", str(path))

    def load_ply(self, path: Path) -> None:
        tr = self.s.trainer
        scene = GaussianScene.from_ply(path, optim=tr.cfg.optim, densify=tr.cfg.densify, device=tr.device)
        tr.scene = scene
        tr.iteration = 0
        new = replace(tr.cfg, init=replace(tr.cfg.init, kind="ply", path=str(path)))
        tr.cfg = new
        with self.s._lock:
            self.s._requested = replace(self.s._requested, init=new.init)
        self.s.event("info", f"loaded {scene.num_gaussians} Gaussians from {path.name}", str(path))
