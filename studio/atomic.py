"""Atomic file writes: every file the studio writes goes through here.

A file is written to a temporary name in the target's own directory, flushed and fsync'ed, then renamed
onto the target with `os.replace` (atomic on POSIX and Windows within one file system). A crash or a
kill at any moment leaves either the old complete file or no file, never a half-written one. A temporary
file orphaned by a killed process (its name carries the writer's pid) is removed by the next write to the
same target.

    with atomic_write("out/scene.ply") as f:          # a binary file object
        f.write(data)
    with atomic_path("out/turntable.mp4") as tmp:     # a path, for libraries that open files themselves
        imageio.v3.imwrite(tmp, frames)
    write_bytes_atomic("out/a.splat", data)
    write_json_atomic("out/a.json", {"prompt": "a red cube"})
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TMP_TAG = ".tmp-"


class ExportError(OSError):
    """A file could not be written. Nothing partial was left at `path` (an old file there is intact).

    Attributes:
        path: the file that was to be written
        reason: what went wrong, in words
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot write {self.path}: {reason}")


class ReadError(OSError):
    """A file (PLY, checkpoint) could not be read or is not in the expected format.

    Attributes:
        path: the file that was to be read
        reason: what went wrong and what to do
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


def _temp_name(target: Path) -> Path:
    # Keep the target's suffix last: writers such as imageio choose the format from it.
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}{TMP_TAG}{os.getpid()}-{token}{target.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":
        return True  # off POSIX, os.kill(pid, 0) would terminate the process: never probe there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(target: str | os.PathLike) -> int:
    """Remove temporary files of `target` left by processes that no longer run. Returns how many.

    Temps of live processes (a concurrent writer, or this process) are left alone.
    """
    target = Path(target)
    prefix = f".{target.name}{TMP_TAG}"
    removed = 0
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return 0  # the directory is missing or unreadable: the write itself will report it
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            entry.unlink()
            removed += 1
        except FileNotFoundError:
            pass  # another cleaner got there first
    return removed


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _prepare_dir(target: Path, make_parents: bool) -> None:
    parent = target.parent
    if parent.is_dir():
        return
    for p in [parent, *parent.parents]:
        if p.exists() and not p.is_dir():
            raise ExportError(target, f"{p} is a file, not a directory")
        if p.exists():
            break
    if not make_parents:
        raise ExportError(target, f"the directory {parent} does not exist")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(target, f"cannot create the directory {parent} ({_reason(e)})") from None


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; only POSIX can open a directory for fsync.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path` atomically.

    The caller (or the library it hands the path to) creates and writes the temporary file. On any
    exception the temporary file is removed and the exception propagates (an OSError becomes an
    ExportError naming `path`); `path` itself is untouched.

    Args:
        path: the final file
        make_parents: create missing parent directories (a parent that is a regular file is an error;
            directories created before a failed write stay, empty)
    """
    target = Path(path)
    if target.is_dir():
        raise ExportError(target, "it is a directory")
    _prepare_dir(target, make_parents)
    clean_stale_temps(target)
    tmp = _temp_name(target)
    try:
        yield tmp
        if not tmp.exists():
            raise ExportError(target, "the writer produced no file")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except ExportError:
        _discard(tmp)
        raise
    except OSError as e:
        _discard(tmp)
        raise ExportError(target, _reason(e)) from e
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 make_parents: bool = True) -> Iterator[IO[Any]]:
    """Yield an open file whose content replaces `path` atomically when the block exits cleanly.

    Args:
        path: the final file
        mode: "wb" (default) or "w" (text, with `encoding`, default utf-8)
        encoding: text encoding for mode "w"
        make_parents: create missing parent directories
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, make_parents=make_parents) as tmp:
        # O_EXCL: never write through a name someone else created; 0o666 lets the umask decide.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as e:
            raise ExportError(path, _reason(e)) from e
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()


def write_bytes_atomic(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], None],
                       *, make_parents: bool = True) -> Path:
    """Write `data` (bytes, or a callback that writes into the given binary file) to `path` atomically."""
    with atomic_write(path, "wb", make_parents=make_parents) as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, *, make_parents: bool = True) -> Path:
    with atomic_write(path, "w", make_parents=make_parents) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, make_parents: bool = True) -> Path:
    """Write `obj` as indented, key-sorted JSON (e.g. the config beside an export) atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"  # serialize first: a bad value writes nothing
    return write_text_atomic(path, text, make_parents=make_parents)
