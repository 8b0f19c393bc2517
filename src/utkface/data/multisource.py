"""Several data sources as one dataset: `utkface train --data A --data B`, `evaluate` per source.

A source is a UTKFace download (folder, `.tar.gz`, `.zip`; labels from the file names) or a
collection of photos with a labels CSV, written `PHOTOS::labels.csv` (see `labelled`). Each is
prepared and cached on its own by `data.prepare`, with its own split by the hash of each file's
name and the seed, so adding a source never moves a file of another between splits. The
combined dataset concatenates their images and records, and every record carries its source's
name (`Record.source`), which `evaluate` breaks the metrics down by. The images of prepared
sources are stacked once into a cache of their own (`combined-<key>/`, listed by `utkface cache`),
memory-mapped like any cache, so no process holds a copy of them in its memory.

One UTKFace source alone is exactly `data.prepare(path)`, nothing added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utkface.data import dataset as data
from utkface.runtime.errors import OptionError

SEPARATOR = "::"  # PHOTOS::labels.csv


@dataclass(frozen=True)
class SourceSpec:
    path: Path
    labels: Path | None = None  # a labels CSV; None: labels from UTKFace names
    faces: str = "auto"  # how photos of a labelled source become crops (`predict.FACE_MODES`)

    @property
    def name(self) -> str:
        return self.path.name.split(".")[0] or str(self.path)

    def __str__(self) -> str:
        return f"{self.path}{SEPARATOR}{self.labels}" if self.labels else str(self.path)


def parse_sources(
    data_args: str | os.PathLike | Sequence | SourceSpec | None,
    labels: str | os.PathLike | None = None,
    faces: str = "auto",
) -> list[SourceSpec]:
    """`--data` values (`PATH` or `PHOTOS::labels.csv`, one or a list; None = the default data)
    -> specs. `labels` (the `--labels` flag) labels the only source; with several, each names
    its own labels with `::`."""
    if data_args is None:
        data_args = [data.default_source()]
    elif isinstance(data_args, (str, os.PathLike, SourceSpec)):
        data_args = [data_args]
    specs = [
        item if isinstance(item, SourceSpec) else _parse_one(str(item), faces) for item in data_args
    ]
    if labels is not None:
        if len(specs) != 1 or specs[0].labels is not None:
            raise OptionError(
                f"--labels labels a single --data; with several sources write each as "
                f"PHOTOS{SEPARATOR}LABELS.csv"
            )
        specs = [dataclasses.replace(specs[0], labels=Path(labels))]
    return specs


def prepare_sources(
    sources,
    size: int = 128,
    out=None,
    seed: int = 0,
    workers=None,
    progress: bool = False,
    limits=None,
) -> data.Dataset:
    """`data.prepare` of every source (each cached and split on its own, each read within
    `limits`, a `sources.Limits`), combined."""
    specs = parse_sources(sources)
    parts = [
        data.prepare(
            spec.path,
            size=size,
            out=out,
            seed=seed,
            workers=workers,
            progress=progress,
            limits=limits,
            **_reader(spec),
        )
        for spec in specs
    ]
    if len(parts) == 1:
        return parts[0]
    return combine(parts, unique_names(specs))


def _reader(spec: SourceSpec) -> dict:
    """How `data.prepare` reads a source: by UTKFace names (its default), or by the labels CSV
    (`labelled.scanner`, whose settings key the cache)."""
    if spec.labels is None:
        return {}
    from utkface.data.labelled import cache_settings, scanner

    return {
        "scanner": scanner(spec.labels, spec.faces),
        "scanner_settings": cache_settings(spec.labels, spec.faces),
    }


def scan_sources(sources, size: int = 128, workers=None, progress: bool = False) -> data.Scan:
    """Every file of every source, unsplit (`evaluate --split all`)."""
    from utkface.data.labelled import scanner

    specs = parse_sources(sources)
    parts = [
        (scanner(spec.labels, spec.faces) if spec.labels else data.scan)(
            spec.path, size, workers=workers, progress=progress
        )
        for spec in specs
    ]
    return parts[0] if len(parts) == 1 else combine(parts, unique_names(specs))


@dataclass
class Combined(data.Dataset):
    """Several prepared sources in one: images and records concatenated in source order."""

    parts: dict[str, data.Dataset] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.parts)} sources: {len(self.records)} images used in all"]
        for name, part in self.parts.items():
            lines += [f"[{name}]", part.summary()]
        return "\n".join(lines)


def combine(parts: list[data.Scan], names: list[str]) -> data.Scan:
    """One Scan (or `Combined` dataset, when every part is prepared) of several, each record
    tagged with its source's name and each skipped file prefixed with it."""
    records = [
        dataclasses.replace(record, source=name)
        for name, part in zip(names, parts)
        for record in part.records
    ]
    skipped = [
        data.Skipped(f"{name}: {item.file}", item.reason)
        for name, part in zip(names, parts)
        for item in part.skipped
    ]
    if all(isinstance(part, data.Dataset) for part in parts):
        images, folder = _stacked(parts)
        return Combined(images, records, skipped, cache_dir=folder, parts=dict(zip(names, parts)))
    images = np.concatenate([np.asarray(part.images) for part in parts])  # (N, S, S, 3) uint8
    return data.Scan(images, records, skipped)


def _stacked(parts: list[data.Dataset]) -> tuple[np.ndarray, Path]:
    """The parts' images, in order, memory-mapped from a cache folder beside theirs, built the
    first time (a part prepared anew has a new folder name, so the key changes with it)."""
    names = [str(part.cache_dir.resolve()) for part in parts]
    key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
    folder = parts[0].cache_dir.parent / f"combined-{key}"

    def fill(building: Path) -> dict:
        shape = (sum(len(part.images) for part in parts), *parts[0].images.shape[1:])
        target = np.lib.format.open_memmap(
            building / "images.npy", mode="w+", dtype=np.uint8, shape=shape
        )
        row = 0
        for part in parts:
            for start in range(0, len(part.images), 4096):  # a few hundred MB at a time
                chunk = part.images[start : start + 4096]
                target[row : row + len(chunk)] = chunk
                row += len(chunk)
        target.flush()
        del target
        return {
            "source": " + ".join(str(part.cache_dir.name) for part in parts),
            "fingerprint": key,
            "size": int(shape[1]),
            "used": int(shape[0]),
            "parts": names,
        }

    if not (folder / "meta.json").is_file():
        data.build_cache(folder, fill)
    return np.load(folder / "images.npy", mmap_mode="r"), folder


def unique_names(specs: list[SourceSpec]) -> list[str]:
    """Source names for reports: the path's name, numbered when two sources share one."""
    names: list[str] = []
    for spec in specs:
        name, count = spec.name, 2
        while name in names:
            name, count = f"{spec.name}-{count}", count + 1
        names.append(name)
    return names


def column_names(names: Sequence[str]) -> dict[str, str]:
    """`{source name: short key}` for metric columns and `--mix`: the name's first word in
    lower case (`UTKFace` -> `utkface`, `fairface-train-40k` -> `fairface`), or the whole name
    in lower case with `_` between its words where two sources share a first word."""
    words = {name: re.findall(r"[a-z0-9]+", name.lower()) or ["source"] for name in names}
    firsts = [parts[0] for parts in words.values()]
    unique = len(set(firsts)) == len(firsts)
    return {name: parts[0] if unique else "_".join(parts) for name, parts in words.items()}


def _parse_one(text: str, faces: str) -> SourceSpec:
    path, _, labels = text.partition(SEPARATOR)
    if _ and not labels:
        raise OptionError(f"--data {text!r}: write PHOTOS{SEPARATOR}LABELS.csv")
    return SourceSpec(Path(path), Path(labels) if labels else None, faces)
