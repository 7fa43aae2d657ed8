"""Checks made before any model loads, so that a bad `--out`, `--host`, `--port`, `--resume`, init PLY
or device (or no display for the desktop studio) costs one line and exit status 2, not a training run:
the run folder, whether the browser studio can listen, whether the init PLY holds points, whether the
renderer and densification strategy can run here, whether a window can open.

Run folders: each launch writes into a new folder `<out>/run-YYYYmmdd-HHMMSS` (metrics.jsonl, exports,
checkpoints), so a new launch never appends to an old run's metrics. `--resume` continues in the run
folder of the checkpoint it names (or in the folder it names, from that folder's latest checkpoint).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit
from typing import Any

from .cli_errors import UsageError

RUN_PREFIX = "run-"
RESOLVE_TIMEOUT_S = 5.0  # a name that a slow or absent DNS server cannot answer must not stall the start
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def normalize_origin(origin: str) -> str:
    """'HTTP://Box:8080/' -> 'http://box:8080'. Raises ValueError for what is not scheme://host[:port]."""
    parts = urlsplit(origin.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"--allow-origin {origin!r}: expected scheme://host[:port] with scheme http or "
                         f"https, e.g. http://mybox.local:8080")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--allow-origin {origin!r}: the port must lie in [1, 65535]") from None
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def check_origins(origins: list[str]) -> tuple[str, ...]:
    """--allow-origin values, normalized; UsageError for one that is not scheme://host[:port]."""
    try:
        return tuple(normalize_origin(o) for o in origins)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_address(host: str, port: int) -> None:
    """Raise UsageError unless `port` is 1..65535 and `host` is an IP address or a well-formed host name
    (no network is asked: every front-end calls this, whether it binds or not)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--port: must lie in [1, 65535], got {port}")
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", host):
        raise UsageError(f"--host {host}: not an IPv4 address (four numbers 0..255, e.g. 127.0.0.1)")
    if ":" in host:
        raise UsageError(f"--host {host}: not an IPv6 address (e.g. ::1)")
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise UsageError(f"--host {host!r}: give an IP address (e.g. 127.0.0.1, 0.0.0.0 for every interface) "
                         f"or a host name")


def check_listen(host: str, port: int) -> None:
    """Raise UsageError unless a TCP server can listen on host:port now: a valid address (see
    `check_address`), a name that resolves within RESOLVE_TIMEOUT_S, a port free to bind."""
    check_address(host, port)
    family, kind, proto, _, address = _resolve(host, port)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as e:
            raise UsageError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}"
                             f"{_BIND_HINTS.get(e.errno, '')}") from None


_BIND_HINTS = {
    errno.EADDRINUSE: "; choose another --port",
    errno.EADDRNOTAVAIL: "; --host must be an address of this machine (127.0.0.1, or 0.0.0.0 for every one)",
    errno.EACCES: "; ports below 1024 need root: choose --port 1024..65535",
}


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    """getaddrinfo for a server socket, given up after RESOLVE_TIMEOUT_S (the lookup runs in a daemon
    thread: glibc's resolver cannot be interrupted, and a stuck lookup must not keep the process)."""
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
        except (OSError, UnicodeError) as e:
            found.append(e)

    thread = threading.Thread(target=lookup, name="studio-resolve", daemon=True)
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    if not found:
        raise UsageError(f"--host {host}: the name did not resolve within {RESOLVE_TIMEOUT_S:g} s; "
                         f"give an IP address such as 127.0.0.1")
    if isinstance(found[0], BaseException) or not found[0]:
        why = getattr(found[0], "strerror", None) or found[0] or "no address"
        raise UsageError(f"--host {host}: not an address this machine can listen on ({why})")
    return found[0]


def latest_checkpoint(folder: Path) -> Path:
    """The newest checkpoint (*.pt) in a run folder; UsageError if there is none."""
    found = sorted((p for p in folder.glob("*.pt") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name))
    if not found:
        raise UsageError(f"--resume {folder}: the folder holds no checkpoint (*.pt); give a checkpoint file "
                         f"or a run folder that holds one")
    return found[-1]


def resume_checkpoint(resume: Path) -> Path:
    """The checkpoint `--resume` names: the file itself, or a folder's newest; UsageError if neither
    (a fifo or a device would block or never end, so only regular files are read)."""
    if not resume.exists():
        raise UsageError(f"--resume {resume}: no such file or folder")
    path = latest_checkpoint(resume) if resume.is_dir() else resume
    if not path.is_file():
        raise UsageError(f"--resume {path}: not a regular file; give a checkpoint (.pt) or a run folder")
    return path


def resolve_run_dir(out: Path, resume: Path | None) -> tuple[Path, Path | None]:
    """(run folder, checkpoint to resume or None): the resumed run's folder when it is one (it holds a
    metrics.jsonl or is named run-*), else a new folder under `out`. The folder is created and checked
    for writing here; UsageError says why not."""
    checkpoint = None
    if resume is not None:
        checkpoint = resume_checkpoint(resume)
        folder = checkpoint.parent
        if (folder / "metrics.jsonl").exists() or folder.name.startswith(RUN_PREFIX):
            return _writable(folder, "--resume"), checkpoint
    folder = new_run_dir(out)
    try:
        return _writable(folder, "--out"), checkpoint
    except UsageError:
        remove_if_empty(folder)
        raise


def remove_if_empty(folder: Path) -> None:
    """Remove a run folder that nothing was written into (a launch that failed before its first step)."""
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (metrics were written), or gone: keep what is there


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


def check_init_ply(path: str) -> None:
    """Raise UsageError unless `path` (init.path for init.kind = ply) is a PLY with at least one vertex:
    a 3DGS PLY or a plain point cloud, read by the same readers the scene uses."""
    from .atomic import ReadError
    from .export import is_gaussian_ply, read_gaussian_ply, read_point_ply

    where = f"init.path {path}"
    file = Path(path)
    if not file.exists():
        raise UsageError(f"{where}: no such file; give a 3DGS or point-cloud .ply (init.kind = ply)")
    if not file.is_file():
        raise UsageError(f"{where}: not a regular file; give a 3DGS or point-cloud .ply (init.kind = ply)")
    try:
        n = len(read_gaussian_ply(file)["means"]) if is_gaussian_ply(file) else len(read_point_ply(file)[0])
    except ReadError as e:
        raise UsageError(f"{where}: {getattr(e, 'reason', e)}") from None
    except (OSError, ValueError, KeyError, IndexError) as e:  # what a reader not yet hardened may raise
        raise UsageError(f"{where}: not a readable PLY ({type(e).__name__}: {e})") from None
    if n == 0:
        raise UsageError(f"{where}: the PLY holds no vertices; give one with at least one point")


def check_init_mesh(path: str) -> None:
    """Raise UsageError unless `path` (init.path for init.kind = mesh) is a mesh file with triangles, read by
    the reader the scene uses."""
    from .atomic import ReadError
    from .mesh_init import read_mesh

    try:
        read_mesh(path)
    except ReadError as e:
        raise UsageError(f"init.path {path}: {e.reason}") from None


def check_device(cfg: Any) -> None:
    """Raise UsageError unless the renderer and the densification strategy of `cfg` (a StudioConfig)
    can run on this machine: gsplat and mcmc need CUDA."""
    from renderers import make_renderer

    from .strategy import check_device as check_strategy
    from .trainer import device_of

    try:
        renderer = make_renderer(cfg.render.renderer)
        check_strategy(cfg.densify, device_of(renderer))
    except (RuntimeError, ValueError) as e:  # what both raise for this machine; the message says what to do
        raise UsageError(str(e)) from None
    except ImportError as e:  # CUDA, but no gsplat installed
        raise UsageError(f"render.renderer: {cfg.render.renderer} needs gsplat, which does not import here "
                         f"({e}); install it, or use --renderer cpu") from None


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
