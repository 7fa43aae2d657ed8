"""Command line: `python app.py [options]`. Parses and validates at the edge, then hands a frozen
config to a Session and a front-end (browser, desktop window, or a headless run with a progress bar)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as cfgmod
from .cli_errors import USAGE_ERRORS, Parser, UsageError, report
from .commands import EXPORT_FORMATS
from .confio import ConfigError
from .view import ViewSettings, is_view_path, list_view_settings, with_view_values
from .startup import (check_address, check_device, check_init_mesh, check_init_ply, check_listen, check_origins,
                      display_problem, headless_message, remove_if_empty, resolve_run_dir, resume_checkpoint)

UIS = ("viser", "desktop", "headless")


def folder_arg(text: str) -> Path:
    """A folder flag's value; empty is refused (Path("") would quietly mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a folder, e.g. --out out")
    return Path(text)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="app.py",
        description="Gaussian Dreamer Studio: text-to-3D Gaussians by score distillation (SDS, ISM, SSD).",
        epilog="Any config field can be set with --set section.field=value; "
        "`--list-settings` prints them all with their help. Many prompts x seeds on Ray: "
        "`python app.py batch PROMPTS.txt --out DIR` (`python app.py batch --help`).",
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
    p.add_argument("--out", type=folder_arg, default=Path("out"),
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
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages of this origin (scheme://host[:port], e.g. a reverse proxy's "
                        "https://studio.example.com) drive the browser studio; only its own page may otherwise "
                        "(repeatable)")
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
    elif args.preset is not None:
        cfg = cfgmod.load_preset(args.preset)
    else:
        cfg = cfgmod.default_config(args.method)
    base = cfg
    if args.config:
        try:
            data = cfgmod.confio.parse_json(read_config_file(args.config))
            if isinstance(data, dict) and isinstance(data.get("config"), dict):  # an export's .json beside it
                data = data["config"]
            cfg = cfgmod.validate(cfgmod.confio.from_dict(cfgmod.StudioConfig, data, base=cfg))  # data: any JSON
        except ConfigError as e:
            raise UsageError(f"--config {args.config}: {e}") from None
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


CONFIG_MAX_BYTES = 1 << 20  # a config is a few kB; anything far larger is the wrong file


def read_config_file(path: Path) -> str:
    """The text of a `--config` file; UsageError if it is missing, not a regular file (a fifo or a device
    would block or never end), too large or not UTF-8 text."""
    if not path.exists():
        raise UsageError(f"--config {path}: no such file")
    if not path.is_file():
        raise UsageError(f"--config {path}: not a regular file; give a JSON config (as written next to every export)")
    try:
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise UsageError(f"--config {path}: larger than {CONFIG_MAX_BYTES >> 20} MiB; a JSON config is a few kB")
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--config {path}: not a text file; a config is JSON (as written next to every "
                         f"export)") from None


def checkpoint_config(path: Path) -> cfgmod.StudioConfig:
    """The settings of the checkpoint `--resume` names, its parts checked for shape before any model loads."""
    from .commands import CommandError
    from .handlers import checkpoint_config as payload_config, read_checkpoint

    path = resume_checkpoint(path)
    try:
        return payload_config(read_checkpoint(path), path)
    except CommandError as e:
        raise UsageError(f"--resume: {str(e).removeprefix('load: ')}") from None


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
    """Bad input of any kind (a flag, a --set, a --config or --resume file, an init PLY, a device, an
    address) is one `error:` line and exit status 2, found before any model loads; other exceptions are
    bugs and keep their traceback. A launch that fails leaves no empty run folder behind."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        from .batch import main as batch_main

        return batch_main(argv[1:])
    new_run_dir = None
    try:
        args = build_parser().parse_args(argv)
        if args.list_settings:
            print(list_settings())
            return 0
        ui = args.ui or "viser"
        check_address(args.host, args.port)
        allow_origins = check_origins(args.allow_origin)
        cfg, user_set = settings_from_args(args)
        view = view_from_args(args)
        exports = parse_exports(args.export)
        if ui == "desktop" and (problem := display_problem()) is not None:
            print(headless_message(problem, args.port), file=sys.stderr)
            return 2
        if ui == "viser":
            check_listen(args.host, args.port)
        if cfg.init.kind == "ply" and (args.resume is None or any(p.startswith("init.") for p in user_set)):
            check_init_ply(cfg.init.path)
        if cfg.init.kind == "mesh" and (args.resume is None or any(p.startswith("init.") for p in user_set)):
            check_init_mesh(cfg.init.path)
        check_device(cfg)
        # Before any model loads: a run folder that can be written (a new one, or the resumed run's).
        run_dir, resume = resolve_run_dir(args.out, args.resume)
        if resume is None or run_dir != resume.parent:
            new_run_dir = run_dir
        if ui == "viser" and args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: binding {args.host}: the studio has no authentication; anyone who can reach "
                  f"this address can drive it", file=sys.stderr)
        from .run import run  # heavy imports (diffusers, the front-ends) only after the arguments are good

        return run(cfg, ui=ui, out_dir=run_dir, exports=exports, resume=resume, host=args.host,
                   port=args.port, progress=not args.no_progress, user_set=user_set, view=view,
                   allow_origins=allow_origins)
    except USAGE_ERRORS as e:
        return report(e)
    finally:
        if new_run_dir is not None:
            remove_if_empty(new_run_dir)  # nothing ran (or the launch failed): leave no empty run folder
