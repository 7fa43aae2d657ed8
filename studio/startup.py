"""Checks made before any model loads, so that a bad `--out`, `--host` or `--port` (or no display for
the desktop studio) costs one line and exit status 2, not a training run: the run folder, whether the
browser studio can listen, whether a window can open.

Run folders: each launch writes into a new folder `<out>/run-YYYYmmdd-HHMMSS` (metrics.jsonl, exports,
checkpoints), so a new launch never appends to an old run's metrics. `--resume` continues in the run
folder of the checkpoint it names (or in the folder it names, from that folder's latest checkpoint).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import sys
import time
from pathlib import Path

from .cli_errors import UsageError

RUN_PREFIX = "run-"


def check_listen(host: str, port: int) -> None:
    """Raise UsageError unless a TCP server can listen on host:port now (port 0: any free port)."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port: must lie in [0, 65535] (0: any free port), got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--host {host}: not an address this machine can listen on ({e})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            hint = "; choose another --port" if e.errno in (98, 48, 10048) else ""
            raise UsageError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}{hint}") from None


def latest_checkpoint(folder: Path) -> Path:
    """The newest checkpoint (*.pt) in a run folder; UsageError if there is none."""
    found = sorted(folder.glob("*.pt"), key=lambda p: (p.stat().st_mtime, p.name))
    if not found:
        raise UsageError(f"--resume {folder}: the folder holds no checkpoint (*.pt)")
    return found[-1]


def resolve_run_dir(out: Path, resume: Path | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume or None): the resumed run's folder when it is one (it holds a
    metrics.jsonl or is named run-*), else a new folder under `out`. The folder is created and checked
    for writing here; UsageError says why not."""
    checkpoint = None
    if resume is not None:
        if not resume.exists():
            raise UsageError(f"--resume {resume}: no such file or folder")
        checkpoint = latest_checkpoint(resume) if resume.is_dir() else resume
        folder = checkpoint.parent
        if (folder / "metrics.jsonl").exists() or folder.name.startswith(RUN_PREFIX):
            return _writable(folder, "--resume"), checkpoint
    return _writable(new_run_dir(out), "--out"), checkpoint


def new_run_dir(out: Path) -> Path:
    """A new, empty run folder under `out` (created), named by the local time of the launch."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = out / (f"{RUN_PREFIX}{stamp}" if n == 1 else f"{RUN_PREFIX}{stamp}-{n}")
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the run folder {folder}: {e.strerror or e}") from None
    raise UsageError(f"--out {out}: 999 run folders named {RUN_PREFIX}{stamp}* exist already")


def _writable(folder: Path, flag: str) -> Path:
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"studio")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{flag}: cannot write into {folder}: {e.strerror or e}") from None
    return folder


def display_problem(env: dict | None = None, platform: str = sys.platform) -> str | None:
    """Why no window can open here (one line), or None. Linux needs an X display that answers (the
    window is GLFW on X11 / XWayland); without one GLFW would abort with an assertion."""
    env = os.environ if env is None else env
    if not platform.startswith("linux"):
        return None
    display = env.get("DISPLAY", "")
    if not display:
        return "no display (DISPLAY is not set)"
    lib = ctypes.util.find_library("X11")
    if lib is None:
        return None  # cannot ask the server; let GLFW try
    x11 = ctypes.CDLL(lib)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = x11.XOpenDisplay(display.encode())
    if not handle:
        return f"cannot open display {display!r}"
    x11.XCloseDisplay(handle)
    return None


def headless_message(problem: str, port: int = 8080) -> str:
    return (f"error: the desktop studio needs a display: {problem}. On a headless machine use the browser "
            f"studio instead: python app.py --ui viser --port {port} (then open http://127.0.0.1:{port}, "
            f"through ssh -L {port}:127.0.0.1:{port} from another machine)")
