"""What `utkface predict` reads: files, folders, globs and manifests, streamed as they are found.

Nothing is listed up front, so the first photo is predicted at once however many there are:
folders are walked one directory at a time (each directory's entries sorted, so a run's order is
the same every time), globs are expanded lazily (in the order the file system gives), and
manifests are read as they go. A manifest is an input ending in `.txt` (one path per line; blank
lines and `#` comments skipped), `.csv` (a `path` or `file` column) or `.parquet` (the same
columns, read in record batches; needs pyarrow, extra `utkface[parquet]`). Relative paths in a
manifest are relative to the manifest's folder.

`shard=(K, N)` keeps the inputs whose path hashes to K modulo N: a pure function of the path, so
an input's shard never changes when other inputs are added, and N machines given the same inputs
with K = 0..N-1 share them out without overlap.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from glob import iglob
from pathlib import Path

from utkface.runtime.errors import OptionError, require
from utkface.runtime.names import IMAGE_SUFFIXES

FOLDER_SUFFIXES = IMAGE_SUFFIXES + (".tif", ".tiff", ".gif")  # what a folder input picks up
MANIFEST_SUFFIXES = (".txt", ".csv", ".parquet")
MANIFEST_COLUMNS = ("path", "file")
PARQUET_HINT = "Parquet files need pyarrow, an optional extra: pip install 'utkface[parquet]'"


@dataclass(frozen=True)
class Item:
    """One input to predict on, or an entry that named nothing (`error` set, `path` None)."""

    source: str  # how the results name it: the path as found, or the entry as given
    path: Path | None
    name: Path  # its place under `--annotate`, unique within the run
    error: str | None = None


def parse_shard(text: str) -> tuple[int, int]:
    """`"K/N"` -> `(K, N)` with 0 <= K < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise OptionError(f"--shard {text!r}: expected K/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise OptionError(f"--shard {text!r}: need 0 <= K < N")
    return index, count


def in_shard(source: str, shard: tuple[int, int]) -> bool:
    index, count = shard
    if count == 1:
        return True
    digest = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index


def iter_inputs(inputs: Sequence[str | os.PathLike], shard=(0, 1)) -> Iterator[Item]:
    """Every input of `inputs` in `shard`, in order, each file once.

    What is kept to take each file once, and to give each a name of its own, grows with the
    inputs: two strings an input (about 300 bytes with a 34-character path, sets included),
    not `Path`s (about 475)."""
    seen: set[str] = set()
    taken: set[str] = set()
    for entry in inputs:
        found, problem = False, None
        try:
            for path, name in _expand(entry):
                found = True
                source = str(path)
                if source in seen or not in_shard(source, shard):
                    continue
                seen.add(source)
                yield Item(source, path, _unique(name, taken))
        except (OSError, ValueError) as error:  # an unreadable manifest; the rest goes on
            problem = f"cannot read manifest: {error}"
        problem = problem or (None if found else _nothing_found(Path(entry)))
        if problem and str(entry) not in seen and in_shard(str(entry), shard):
            seen.add(str(entry))
            yield Item(str(entry), None, Path(Path(entry).name), error=problem)


def count_inputs(inputs: Sequence[str | os.PathLike], shard=(0, 1)) -> int | None:
    """How many inputs `iter_inputs` will give (repeats aside), when known without walking
    folders or globs: files and manifests only (a manifest is read once more); else None."""
    total = 0
    for entry in inputs:
        path = Path(entry)
        if path.is_dir() or not path.exists():
            return None
        paths = _manifest(path) if _is_manifest(path) else [path]
        total += sum(in_shard(str(p), shard) for p in paths)
    return total


def _expand(entry: str | os.PathLike) -> Iterator[tuple[Path, Path]]:
    """`(file, name for annotation)` pairs of one entry, lazily."""
    path = Path(entry)
    if path.is_dir():
        root = Path(path.resolve().name)
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            for file in sorted(files):
                if Path(file).suffix.lower() in FOLDER_SUFFIXES:
                    found = Path(folder) / file
                    yield found, root / found.relative_to(path)
    elif _is_manifest(path):
        for file in _manifest(path):
            yield file, Path(file.name)
    elif path.exists():
        yield path, Path(path.name)
    elif any(char in str(entry) for char in "*?["):
        for file in iglob(str(entry), recursive=True):
            if os.path.isfile(file):
                yield Path(file), Path(Path(file).name)


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def _manifest(path: Path) -> Iterator[Path]:
    """The paths a manifest lists, read as they go; relative ones from the manifest's folder."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        with path.open(encoding="utf-8") as lines:
            names = (line.strip() for line in lines)
            yield from (_near(path, n) for n in names if n and not n.startswith("#"))
        return
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            column = _path_column(path, reader.fieldnames or [])
            yield from (_near(path, row[column]) for row in reader if row[column])
        return
    pq = require("pyarrow.parquet", f"{path}: {PARQUET_HINT}")
    table = pq.ParquetFile(path)
    column = _path_column(path, table.schema_arrow.names)
    for batch in table.iter_batches(columns=[column], batch_size=65_536):
        yield from (_near(path, name) for name in batch.column(0).to_pylist() if name)


def _near(manifest: Path, name: str) -> Path:
    """`name` from `manifest`'s folder, normalised (`a/../b` -> `b`) so that one file listed
    two ways is still one input."""
    return Path(os.path.normpath(manifest.parent / name))


def _path_column(path: Path, columns: Sequence[str]) -> str:
    for column in MANIFEST_COLUMNS:
        if column in columns:
            return column
    raise OptionError(f"{path.name} has no 'path' or 'file' column (columns: {list(columns)})")


def _nothing_found(path: Path) -> str:
    if path.is_dir():
        return "folder holds no image files"
    if _is_manifest(path):
        return "manifest lists no files"
    if any(char in str(path) for char in "*?["):
        return "no files match this pattern"
    return "no such file or folder"


def _unique(name: Path, taken: set[str]) -> Path:
    """`name`, or `name-1`, `name-2`, ... if an earlier input already took it."""
    candidate, number = name, 0
    while str(candidate) in taken:
        number += 1
        candidate = name.with_name(f"{name.stem}-{number}{name.suffix}")
    taken.add(str(candidate))
    return candidate
