"""Atomic file writes: a reader sees the old file or the whole new one, never a torn one.

Every file is written first as a temporary `.<name>.tmp.XXXXXXXX` beside its target and
renamed over the target when whole (`atomic_open`); a folder is built the same way
(`building_dir`). The writer holds an advisory lock (flock) on its temporary for as long as it
lives, so `remove_stale` can tell the leftovers of a writer that was killed (kill -9, OOM
killer: nothing ran to delete them) from a temporary being written now, and delete only those.

A write that finds no room (ENOSPC, a file size limit's EFBIG, a quota's EDQUOT) becomes one
`DiskFullError` naming the target (`writing`); the temporary is deleted and the target is left
as it was, so the same command finishes once there is room.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from utkface.runtime.errors import DiskFullError

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so no temporary is ever taken for stale
    fcntl = None

TEMP = ".tmp."  # between a target's name and the random part of its temporary's
NO_ROOM = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


@contextmanager
def writing(target: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError of a full disk, file size limit or quota inside the block into
    `DiskFullError("cannot write TARGET: no space left on device")`; other errors pass."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as error:
        if error.errno not in NO_ROOM:
            raise
        reason = os.strerror(error.errno).lower()
        raise DiskFullError(f"cannot write {target}: {reason}") from error


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; when the block succeeds it is synced
    and renamed over `path`, when it fails it is deleted and `path` is left untouched."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}{TEMP}", dir=path.parent)
        lock = _lock(os.dup(handle))  # held past the file's close, until the rename
        try:
            with os.fdopen(handle, mode, **kwargs) as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temp, 0o644)  # mkstemp makes files owner-only; outputs are for everyone
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        finally:
            os.close(lock)


def atomic_write(path: str | os.PathLike, data: str | bytes | memoryview) -> None:
    """Write `data` to `path` through `atomic_open`; text as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path) as file:
        file.write(data)


@contextmanager
def building_dir(target: str | os.PathLike) -> Iterator[Path]:
    """A new locked, hidden folder beside `target` for the caller to fill and rename onto
    `target`; whatever is left of it is deleted when the block ends. Leftovers of builds that
    were killed are deleted first, and a full disk is a `DiskFullError` naming `target`."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target.parent, target.name)
        folder = Path(tempfile.mkdtemp(prefix=f".{target.name}{TEMP}", dir=target.parent))
        lock = _lock(os.open(folder, os.O_RDONLY))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            os.close(lock)


def remove_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporaries in `folder` (of target `name`, or of any target) whose writer is
    gone: files and folders no live process holds locked. Returns what was deleted."""
    folder = Path(folder)
    if fcntl is None or not folder.is_dir():
        return []
    pattern = f".{'*' if name is None else glob.escape(name)}{TEMP}*"
    removed = []
    for temp in folder.glob(pattern):
        if _abandoned(temp):
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
            removed.append(temp)
    return removed


def _lock(fd: int) -> int:
    """Take the exclusive lock of the open file `fd` (kept until every copy of it is closed:
    dup'ed descriptors share it); returns `fd`."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _abandoned(temp: Path) -> bool:
    try:
        fd = os.open(temp, os.O_RDONLY)
    except OSError:  # gone meanwhile (renamed into place, or removed)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: its writer is alive
        return False
    finally:
        os.close(fd)
