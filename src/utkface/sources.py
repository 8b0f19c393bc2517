"""Read the files of a UTKFace download: a folder, a `.tar(.gz)` or a `.zip`, as downloaded.

Archives are read in place, never unpacked, so no member can write anywhere. Members with an
unsafe path (absolute, `..`), links and special files are reported, never followed.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from utkface.errors import UtkfaceError


@dataclass(frozen=True)
class Member:
    """One file of a source: its path inside the source and its bytes, or why it was refused."""

    name: str
    data: bytes | None
    problem: str | None = None


class SourceError(UtkfaceError, ValueError):
    """The source itself (not one of its files) cannot be read."""


def iter_members(source: str | os.PathLike) -> Iterator[Member]:
    """Yield every file of a folder (recursively, sorted) or archive, in a stable order."""
    path = Path(source)
    if path.is_dir():
        yield from _iter_folder(path)
    elif not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    elif zipfile.is_zipfile(path):
        yield from _iter_zip(path)
    elif _is_tar(path):
        yield from _iter_tar(path)
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


def _iter_folder(root: Path) -> Iterator[Member]:
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
                    data = file.read_bytes()
                except OSError as error:  # unreadable: one file, not the whole run
                    yield Member(name, None, f"cannot read file ({error.strerror or error})")
                    continue
                yield Member(name, data)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _iter_tar(path: Path) -> Iterator[Member]:
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
                yield Member(info.name, handle.read() if handle else b"")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise SourceError(f"{path}: damaged archive ({error})") from error


def _iter_zip(path: Path) -> Iterator[Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                problem = unsafe_reason(info.filename)
                if problem is None and (info.external_attr >> 16) & 0o170000 == 0o120000:
                    problem = "link in archive (not followed)"
                if problem:
                    yield Member(info.filename, None, problem)
                    continue
                try:
                    data = archive.read(info)
                # Corrupt deflate data raises zlib.error, an encrypted member RuntimeError, an
                # unsupported compression method NotImplementedError: all confined to one member.
                except (zipfile.BadZipFile, OSError, zlib.error) as error:
                    yield Member(info.filename, None, f"damaged archive member ({error})")
                    continue
                except (RuntimeError, NotImplementedError) as error:
                    yield Member(info.filename, None, f"unreadable archive member ({error})")
                    continue
                yield Member(info.filename, data)
    except zipfile.BadZipFile as error:
        raise SourceError(f"{path}: damaged archive ({error})") from error
