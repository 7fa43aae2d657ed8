"""Command line: `python app.py [options]`. Parses and validates at the edge, then hands a frozen
config to a Session and a front-end (browser, desktop window, or a headless run with a progress bar)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as cfgmod
from .cli_errors import UsageError
from .commands import EXPORT_FORMATS
from .confio import ConfigError
from .view import ViewSettings, is_view_path, list_view_settings, with_view_values
from .startup import check_listen, display_problem, headless_message, latest_checkpoint, resolve_run_dir

UIS = ("viser", "desktop", "headless")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="app.py",
        description="Gaussian Dreamer Studio: text-to-3D Gaussians by score distillation (SDS, ISM, SSD).",
        epilog="Any config field can be set with --set section.field=value; "
        "`--list-settings` prints them all with their help.",
    )
    p.add_argument("--prompt", help="what to make (procedural prior: one of its known prompts)")
    p.add_argument("--negative", help="negative prompt (the unconditional branch of CFG)")
    p.add_argument("--method", choices=cfgmod.METHODS, help="gradient estimator (default: the preset's)")
    p.add_argument("--preset", help=f"settings preset: {', '.join(cfgmod.preset_names())} "
                   "(default: the method's: sds, lucid for ism, stein for ssd)")
    p.add_argument("--config", type=Path, help="a JSON config file (as written next to every export)")
    p.add_argument("--model", help="'procedural' (built in, offline) or a Stable Diffusion hub id / folder")
    p.add_argument("--renderer", choices=("auto", "cpu", "gsplat"), help="rasterizer (auto: gsplat with CUDA)")
    p.add_argument("--steps", type=int, help="optimization steps to run")
    p.add_argument("--resolution", type=int, help="training render size in pixels")
    p.add_argument("--batch", type=int, help="cameras per step")
    p.add_argument("--seed", type=int, help="seed of every random draw")
    p.add_argument("--out", type=Path, default=Path("out"),
                   help="output folder (default: ./out); each launch writes into a new run folder in it")
    p.add_argument("--export", default="ply",
                   help=f"comma-separated formats written at the end of a headless run: "
                   f"{','.join(EXPORT_FORMATS)} (default: ply; 'none' for nothing)")
    p.add_argument("--resume", type=Path, help="continue from a checkpoint (.pt), or a run folder's latest one; "
                   "the run goes on in the checkpoint's run folder")
    p.add_argument("--ui", choices=UIS, default=None,
                   help="front-end: viser (browser, default), desktop (DearPyGui window), headless")
    p.add_argument("--host", default="127.0.0.1", help="address the browser studio binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port of the browser studio (default 8080)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set ism.delta_t=80 (repeatable)")
    p.add_argument("--list-settings", action="store_true", help="print every config field with its help and exit")
    p.add_argument("--no-progress", action="store_true", help="headless: no progress bar")
    return p


def settings_from_args(args: argparse.Namespace) -> tuple[cfgmod.StudioConfig, set[str]]:
    """preset (or the method's default) <- --config file <- flags <- --set, validated once; and the paths
    the user set on the command line (a method switch leaves them alone)."""
    if args.resume:  # continue with the checkpoint's settings unless a flag says otherwise
        cfg = checkpoint_config(args.resume)
    elif args.preset:
        cfg = cfgmod.load_preset(args.preset)
    else:
        cfg = cfgmod.default_config(args.method)
    base = cfg
    if args.config:
        try:
            cfg = cfgmod.from_json(args.config.read_text(), base=cfg)
        except OSError as e:
            raise UsageError(f"--config {args.config}: cannot read it ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise UsageError(f"--config {args.config}: not valid JSON ({e})") from None
    flags = {
        "prompt.prompt": args.prompt,
        "prompt.negative": args.negative,
        "run.method": args.method,
        "prior.model": args.model,
        "render.renderer": args.renderer,
        "run.steps": args.steps,
        "render.resolution": args.resolution,
        "render.batch": args.batch,
        "run.seed": args.seed,
    }
    values = {k: v for k, v in flags.items() if v is not None}
    values.update({k: v for k, v in cfgmod.confio.parse_assignments(args.sets).items() if not is_view_path(k)})
    final = cfgmod.with_values(cfg, values)
    user_set = set(cfgmod.confio.diff(base, cfg)) | set(values)  # the --config file's own values count too
    return final, user_set


def view_from_args(args: argparse.Namespace) -> ViewSettings:
    """The viewers' settings: defaults <- `--set view.<field>=value` (ConfigError naming a bad one)."""
    values = {k: v for k, v in cfgmod.confio.parse_assignments(args.sets).items() if is_view_path(k)}
    return with_view_values(ViewSettings(), values)


def checkpoint_config(path: Path) -> cfgmod.StudioConfig:
    from .atomic import ReadError
    from .export import load_checkpoint

    path = latest_checkpoint(path) if path.is_dir() else path
    try:
        payload = load_checkpoint(path)
    except (ReadError, OSError) as e:
        raise UsageError(f"--resume {path}: {e}") from None
    if not isinstance(payload, dict) or "config" not in payload:
        raise UsageError(f"--resume {path}: not a studio checkpoint")
    return cfgmod.from_json(payload["config"])


def parse_exports(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in EXPORT_FORMATS]
    if bad:
        raise UsageError(f"--export: unknown format {', '.join(bad)}; choose from {', '.join(EXPORT_FORMATS)}")
    return formats


def list_settings() -> str:
    import dataclasses
    import typing

    lines = []
    for section in dataclasses.fields(cfgmod.StudioConfig):
        cls = typing.get_type_hints(cfgmod.StudioConfig)[section.name]
        default = cls()
        for f in dataclasses.fields(cls):
            doc = cfgmod.confio.field_doc(cls, f.name)
            lines.append(f"{section.name}.{f.name} = {getattr(default, f.name)!r}" + (f"    # {doc}" if doc else ""))
    return "\n".join(lines + list_view_settings())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_settings:
        print(list_settings())
        return 0
    run_dir = None
    try:
        cfg, user_set = settings_from_args(args)
        view = view_from_args(args)
        exports = parse_exports(args.export)
        ui = args.ui or "viser"
        if ui == "desktop" and (problem := display_problem()) is not None:
            print(headless_message(problem, args.port), file=sys.stderr)
            return 2
        if ui == "viser":
            check_listen(args.host, args.port)
            if args.host not in ("127.0.0.1", "localhost", "::1"):
                print(f"warning: binding {args.host}: the studio has no authentication; anyone who can reach "
                      f"this address can drive it", file=sys.stderr)
        # Before any model loads: a run folder that can be written (a new one, or the resumed run's).
        run_dir, resume = resolve_run_dir(args.out, args.resume)
        from .run import run  # heavy imports (torch, diffusers) only after the arguments are good

        return run(cfg, ui=ui, out_dir=run_dir, exports=exports, resume=resume, host=args.host,
                   port=args.port, progress=not args.no_progress, user_set=user_set, view=view)
    except (UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        if run_dir is not None and args.resume is None:
            remove_if_empty(run_dir)  # nothing ran: leave no empty run folder behind
        return 2


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (metrics were written), or gone: keep what is there
