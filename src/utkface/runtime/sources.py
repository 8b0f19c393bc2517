"""Read the files of a UTKFace download: a folder, a `.tar(.gz)` or a `.zip`, as downloaded.

Archives are read in place, never unpacked, so no member can write anywhere. Members with an
unsafe path (absolute, `..`), links and special files are reported, never followed. What is read
is bounded (`Limits`): a file larger than `member_bytes`, a zip member whose declared sizes
inflate more than `max_ratio` times (a zip bomb), and everything past `total_bytes` are skipped
with their reason. Reads stop at the limit whatever a header claims, since headers can lie.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utkface.runtime.errors import OptionError, UtkfaceError


@dataclass(frozen=True)
class Member:
    """One file of a source: its path inside the source and its bytes, or why it was refused."""

    name: str
    data: bytes | None
    problem: str | None = None


class SourceError(UtkfaceError, ValueError):
    """The source itself (not one of its files) cannot be read."""


@dataclass(frozen=True)
class Limits:
    """How much of a source is read (defaults fit UTKFace, ~200 MB of ~10 kB files, with room)."""

    member_bytes: int = 50 * 2**20  # one file larger than this is skipped
    total_bytes: int = 4 * 2**30  # once this much was read, later files are skipped
    max_ratio: float = 100.0  # zip: uncompressed / compressed size above this is a bomb
    ratio_from_bytes: int = 2**20  # ... for members declaring at least this many bytes

    def __post_init__(self):
        if min(self.member_bytes, self.total_bytes, self.max_ratio) <= 0:
            raise OptionError(f"source limits must be positive, got {self}")


class _Reader:
    """Reads members within `limits`, counting the bytes read so far."""

    def __init__(self, limits: Limits):
        self.limits, self.used, self.full = limits, 0, False

    def member(self, name: str, declared: int, read: Callable[[int], bytes]) -> Member:
        """`read(n)` returns at most n bytes of the member, which claims `declared` bytes."""
        cap, total = self.limits.member_bytes, self.limits.total_bytes
        if declared > cap:
            return Member(name, None, f"file too large ({_mb(declared)}, limit {_mb(cap)})")
        self.full = self.full or self.used + declared > total
        if self.full:  # sticky: which files are read must not depend on their sizes
            return Member(name, None, f"total read limit reached ({_mb(total)} read)")
        data = read(cap + 1)  # one byte more than allowed tells a header that lied
        if len(data) > cap:
            said = f"its header said {_mb(declared)}"
            return Member(name, None, f"file too large (over {_mb(cap)}, {said})")
        self.full = self.used + len(data) > total
        if self.full:
            return Member(name, None, f"total read limit reached ({_mb(total)} read)")
        self.used += len(data)
        return Member(name, data)


def iter_members(source: str | os.PathLike, limits: Limits | None = None) -> Iterator[Member]:
    """Yield every file of a folder (recursively, sorted) or archive, in a stable order, reading
    no more than `limits` (default `Limits()`) allow."""
    path = Path(source)
    reader = _Reader(limits or Limits())
    if path.is_dir():
        yield from _iter_folder(path, reader)
    elif not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    elif zipfile.is_zipfile(path):
        yield from _iter_zip(path, reader)
    elif _is_tar(path):
        yield from _iter_tar(path, reader)
    else:
        raise SourceError(f"{path}: not a folder, .tar(.gz) or .zip archive")


def fingerprint(source: str | os.PathLike) -> str:
    """A cheap identity of the source's content: paths, sizes and modification times."""
    path = Path(source).resolve()
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    digest = hashlib.sha256(str(path).encode())
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
            stat = file.lstat()
            digest.update(
                f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    else:
        stat = path.stat()
        digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def unsafe_reason(name: str) -> str | None:
    """Why an archive member path would escape the target folder, or None when it is safe."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (name[1:2] == ":"):
        return "unsafe path in archive (absolute)"
    if ".." in posix.parts:
        return "unsafe path in archive (contains '..')"
    return None


def _iter_folder(root: Path, reader: _Reader) -> Iterator[Member]:
    resolved_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        # os.walk lists links to folders among the folders and never enters them: report them
        # here, or their files would vanish without a trace.
        links = sorted(d for d in dirnames if Path(dirpath, d).is_symlink())
        dirnames[:] = sorted(d for d in dirnames if d not in links)
        for link in links:
            name = Path(dirpath, link).relative_to(root).as_posix()
            yield Member(name, None, "symbolic link to a folder (not followed)")
        for filename in sorted(filenames):
            file = Path(dirpath, filename)
            name = file.relative_to(root).as_posix()
            if file.is_symlink() and not file.resolve().is_relative_to(resolved_root):
                yield Member(name, None, "symbolic link pointing outside the folder")
            elif not file.is_file():
                yield Member(name, None, "not a regular file")
            else:
                try:
                    with open(file, "rb") as handle:
                        member = reader.member(name, os.fstat(handle.fileno()).st_size, handle.read)
                except OSError as error:  # unreadable: one file, not the whole run
                    yield Member(name, None, f"cannot read file ({error.strerror or error})")
                    continue
                yield member


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _iter_tar(path: Path, reader: _Reader) -> Iterator[Member]:
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for info in archive:
                if info.isdir():
                    continue
                problem = unsafe_reason(info.name)
                if problem is None and (info.issym() or info.islnk()):
                    problem = "link in archive (not followed)"
                elif problem is None and not info.isfile():
                    problem = "not a regular file"
                if problem:
                    yield Member(info.name, None, problem)
                    continue
                handle = archive.extractfile(info)
                yield reader.member(info.name, info.size, handle.read if handle else lambda n: b"")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise SourceError(f"{path}: damaged archive ({error})") from error


def _iter_zip(path: Path, reader: _Reader) -> Iterator[Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                problem = unsafe_reason(info.filename)
                if problem is None and (info.external_attr >> 16) & 0o170000 == 0o120000:
                    problem = "link in archive (not followed)"
                limits = reader.limits
                ratio = info.file_size / max(info.compress_size, 1)
                if problem is None and info.file_size >= limits.ratio_from_bytes:
                    if ratio > limits.max_ratio:
                        problem = (
                            f"zip bomb: {_mb(info.compress_size)} would inflate to "
                            f"{_mb(info.file_size)} ({ratio:.0f} times, limit {limits.max_ratio:g})"
                        )
                if problem:
                    yield Member(info.filename, None, problem)
                    continue
                try:
                    with archive.open(info) as handle:
                        member = reader.member(info.filename, info.file_size, handle.read)
                # Corrupt deflate data raises zlib.error, an encrypted member RuntimeError, an
                # unsupported compression method NotImplementedError: all confined to one member.
                except (zipfile.BadZipFile, OSError, zlib.error) as error:
                    yield Member(info.filename, None, f"damaged archive member ({error})")
                    continue
                except (RuntimeError, NotImplementedError) as error:
                    yield Member(info.filename, None, f"unreadable archive member ({error})")
                    continue
                yield member
    except zipfile.BadZipFile as error:
        raise SourceError(f"{path}: damaged archive ({error})") from error


def _mb(count: int) -> str:
    """A byte count for people: kB below a MB, MB below a GB, then GB."""
    for unit, scale in (("kB", 2**10), ("MB", 2**20)):
        if count < 1024 * scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 2**30:.1f} GB"
