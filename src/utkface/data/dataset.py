"""Ingestion: scan a UTKFace download, validate every file, split, and cache decoded pixels.

    utkface prepare --data ../shared/UTKFace.tar.gz --size 128

A file's split is a pure function of its base name and the seed (a hash), so reruns and added
files never move a file between splits. Stratification by age band and gender therefore holds in
expectation, not exactly: each stratum's share of a split differs from the target by binomial
noise, about sqrt(p(1 - p) / n). On the shared archive (strata of 413 to 3,869 files, seed 0)
the largest deviation is 3.7 percentage points; tests/test_data.py checks every stratum.

Decoded images are cached as one uint8 `.npy` array (memory-mapped on load) together with the
manifest and the list of skipped files; a second `prepare` with the same inputs and settings
opens the cache at once.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import mmap
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from tqdm import tqdm

from utkface.data.records import (
    LABEL_KEYS,
    Record,
    Skipped,
    extra_names,
    read_manifest,
    read_skipped,
    write_manifest,
    write_skipped,
)
from utkface.runtime import images as image_io
from utkface.runtime.atomic import building_dir
from utkface.runtime.errors import OptionError, UtkfaceError
from utkface.runtime.lifeline import Lifeline
from utkface.runtime.names import GENDERS, Label, LabelError, parse_name
from utkface.runtime.sources import Limits, fingerprint, iter_members

SPLITS = ("train", "val", "test")
CACHE_VERSION = 2  # bump when the cached pixels or manifest would change (2: no JPEG draft)
# <checkout>/src/utkface/data.py -> <checkout>/../shared/UTKFace.tar.gz
DEFAULT_DATA = Path(__file__).resolve().parents[4] / "shared" / "UTKFace.tar.gz"


@dataclass
class Scan:
    """Every file of a source: decoded images of the labelled ones, and what was skipped."""

    images: np.ndarray  # (N, S, S, 3) uint8, in the order of `records`
    records: list[Record]
    skipped: list[Skipped]

    @property
    def seen(self) -> int:
        return len(self.records) + len(self.skipped)

    def labels(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """(N,) int64 arrays `age` (-1 for an interval), `gender`, `race`, `age_min`, `age_max`."""
        chosen = self.records if indices is None else [self.records[i] for i in indices]
        return {
            key: np.array([getattr(record, key) for record in chosen], dtype=np.int64)
            for key in LABEL_KEYS
        }

    def extras(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The extra label columns (`Record.extra`) as (N,) object arrays, "" where missing."""
        chosen = self.records if indices is None else [self.records[i] for i in indices]
        names = extra_names(chosen)
        values = [dict(record.extra) for record in chosen]
        return {name: np.array([v.get(name, "") for v in values], dtype=object) for name in names}


@dataclass
class Dataset(Scan):
    """A prepared, split and cached source. `images` is memory-mapped from the cache."""

    cache_dir: Path = field(default_factory=Path)

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise OptionError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return np.array([i for i, r in enumerate(self.records) if r.split == split], dtype=np.int64)

    def summary(self) -> str:
        lines = [
            f"seen {self.seen} files: used {len(self.records)}, skipped {len(self.skipped)}",
            f"cache: {self.cache_dir}",
        ]
        for split in SPLITS:
            chosen = [r for r in self.records if r.split == split]
            genders = Counter(GENDERS[r.gender] for r in chosen)
            bands = Counter(r.band for r in chosen)
            lines.append(
                f"  {split:5s} {len(chosen):6d}  "
                + " ".join(f"{g}={genders[g]}" for g in GENDERS)
                + "  ages: "
                + " ".join(f"{b}={n}" for b, n in sorted(bands.items(), key=_band_order))
            )
        reasons = Counter(s.reason for s in self.skipped)
        for reason, count in reasons.most_common():
            lines.append(f"  skipped {count:5d}: {reason}")
        if self.skipped:
            lines.append(f"  every skipped file is listed in {self.cache_dir / 'skipped.csv'}")
        return "\n".join(lines)


def default_source() -> Path:
    """`$UTKFACE_DATA`, else the shared archive beside this checkout."""
    return Path(os.environ.get("UTKFACE_DATA", DEFAULT_DATA))


def default_cache() -> Path:
    return Path(os.environ.get("UTKFACE_CACHE", Path.home() / ".cache" / "utkface"))


def split_of(name: str, seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split of a file: a hash of its base name and the seed, mapped onto `fractions`."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    digest = hashlib.sha256(f"{seed}:{base}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return split
    return SPLITS[-1]


def scan(
    source: str | os.PathLike | None = None,
    size: int = 128,
    workers: int | None = None,
    progress: bool = False,
    allocate: Callable[[int], np.ndarray] | None = None,
    limits: Limits | None = None,
    label: Callable[[str], Label] | None = None,
    decode: Callable[[bytes, int], np.ndarray] | None = None,
) -> Scan:
    """Read, label and decode every file of `source`. One bad file never stops the scan.
    `limits` bounds what is read (see `sources.Limits`; files past them are skipped).

    `allocate(n)`, when given, makes the `(n, size, size, 3)` array the pixels are decoded into
    (rows of files that fail to decode are compacted away), so `prepare` can decode straight
    into its memory map. `label(name)` gives a member's labels (default: its UTKFace name) or
    raises `LabelError` with the reason; `decode(bytes, size)` (default `images.load_rgb`) gives
    its pixels or raises `images.ImageError` (both must be picklable for the worker processes).
    """
    source = Path(source) if source is not None else default_source()
    records, skipped, payloads = [], [], []
    for member in iter_members(source, limits):
        if member.problem:
            skipped.append(Skipped(member.name, member.problem))
            continue
        try:
            found = label(member.name) if label else parse_name(member.name)
        except LabelError as error:
            skipped.append(Skipped(member.name, str(error) if label else f"bad name: {error}"))
            continue
        records.append(
            Record(
                member.name,
                found.age,
                found.gender,
                found.race,
                age_min=found.age_min,
                age_max=found.age_max,
                extra=found.extra,
            )
        )
        payloads.append(member.data)
    shape = (len(payloads), size, size, 3)
    target = allocate(len(payloads)) if allocate else np.empty(shape, dtype=np.uint8)
    decode = decode or image_io.load_rgb  # looked up now, not when this module loaded
    problems = _decode_all(payloads, size, target, workers, progress, decode)
    del payloads
    kept = [i for i, problem in enumerate(problems) if problem is None]
    skipped += [Skipped(records[i].file, p) for i, p in enumerate(problems) if p is not None]
    if len(kept) < len(records):  # move the decoded rows up over the failed ones
        for row, i in enumerate(kept):
            target[row] = target[i]
        target = target[: len(kept)]
    return Scan(images=target, records=[records[i] for i in kept], skipped=skipped)


def prepare(
    source: str | os.PathLike | None = None,
    size: int = 128,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    workers: int | None = None,
    progress: bool = False,
    limits: Limits | None = None,
    scanner: Callable | None = None,
    scanner_settings: dict | None = None,
) -> Dataset:
    """Scan, split and cache `source`; reuse the cache when inputs and settings match.
    `limits` bounds what is read from `source` (default `sources.Limits()`).

    `scanner` reads `source` like `scan` (its default: UTKFace names); another one, such as a
    labelled collection's (`labelled.scanner`, which `multisource.prepare_sources` passes),
    comes with `scanner_settings`, what besides the files decides its pixels and labels, so
    they key the cache too."""
    source = Path(source) if source is not None else default_source()
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise OptionError(f"split fractions {list(fractions)} must be three numbers summing to 1")
    settings = {
        "version": CACHE_VERSION,
        "source": str(source.resolve()),
        "fingerprint": fingerprint(source),
        "size": size,
        "seed": seed,
        "fractions": [float(f) for f in fractions],
        "pillow": PIL.__version__,  # another decoder version may give other pixels
    }
    if limits is not None and limits != Limits():  # other limits may skip other files
        settings["limits"] = dataclasses.asdict(limits)
    settings.update(scanner_settings or {})  # none for UTKFace: its caches keep their names
    scanner = scanner or scan
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache_dir = Path(out or default_cache()) / f"{source.name.split('.')[0]}-{size}px-{key}"
    if not (cache_dir / "meta.json").is_file():
        _build_cache(source, settings, cache_dir, workers, progress, limits, scanner)
    return _open_cache(cache_dir)


def _build_cache(
    source, settings, cache_dir: Path, workers, progress, limits, scanner=scan
) -> None:
    side = settings["size"]

    def fill(building: Path) -> dict:
        def allocate(count: int) -> np.ndarray:
            return _reserved_memmap(building / "pixels.npy", (count, side, side, 3))

        result = scanner(source, side, workers, progress, allocate=allocate, limits=limits)
        if len(result.images) < len(np.load(building / "pixels.npy", mmap_mode="r")):
            np.save(building / "images.npy", result.images)  # some failed: keep only kept rows
        del result.images
        if (building / "images.npy").exists():
            (building / "pixels.npy").unlink()
        else:
            (building / "pixels.npy").rename(building / "images.npy")
        split = [split_of(r.file, settings["seed"], settings["fractions"]) for r in result.records]
        write_manifest(building / "manifest.csv", result.records, split)
        write_skipped(building / "skipped.csv", result.skipped)
        return dict(settings, seen=result.seen, used=len(result.records))

    build_cache(cache_dir, fill)


def build_cache(cache_dir: Path, fill: Callable[[Path], dict]) -> None:
    """Build the cache folder `cache_dir` atomically: `fill(folder)` writes its files into a
    hidden folder beside it and returns its metadata, which is written last as `meta.json` (the
    mark of a complete cache, `caches.py`); then the folder is renamed into place, so a reader
    sees no cache or a whole one. A concurrent build that finished first wins.

    The hidden folder is `atomic.building_dir`'s: a build killed midway leaves it behind, and
    the next build of the same cache deletes it; a full disk is one `DiskFullError`."""
    with building_dir(cache_dir) as building:
        meta = fill(building)
        (building / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(building, cache_dir)
        except OSError:
            if not (cache_dir / "meta.json").is_file():  # not a concurrent build that won
                raise


def _reserved_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new `.npy` of uint8 zeros, memory-mapped for writing, with its disk blocks reserved:
    pages of a sparse mapping that find the disk full kill the process (SIGBUS) when written,
    where reserving them first fails here, as an OSError."""
    pixels = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return pixels
    with open(path, "r+b") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it
                raise
    return pixels


def _open_cache(cache_dir: Path) -> Dataset:
    images = np.load(cache_dir / "images.npy", mmap_mode="r")
    records = read_manifest(cache_dir / "manifest.csv")
    skipped = read_skipped(cache_dir / "skipped.csv")
    if len(records) != len(images):
        raise UtkfaceError(
            f"{cache_dir}: cache is inconsistent; delete the folder and prepare again"
        )
    return Dataset(images=images, records=records, skipped=skipped, cache_dir=cache_dir)


_TARGET: np.ndarray | None = None  # the shared output array, inherited by forked workers


def _decode_into(job: tuple[int, bytes, int, Callable]) -> tuple[int, str | None]:
    index, payload, size, decode = job
    try:
        _TARGET[index] = decode(payload, size)
        return index, None
    except image_io.ImageError as error:
        return index, str(error)
    except Exception as error:  # a decoder bug on one odd file must not stop the other 20,000
        return index, f"unexpected error while decoding ({type(error).__name__}: {error})"


def _decode_all(
    payloads: list[bytes], size: int, target: np.ndarray, workers, progress, decode
) -> list:
    """Decode into `target[i]`; returns the problem of each payload (None when decoded).

    Forked workers write straight into `target` (shared memory or a shared file mapping), so
    only the compressed bytes travel between processes, never the pixels.
    """
    global _TARGET
    workers = workers or os.cpu_count() or 1
    parallel = workers > 1 and len(payloads) >= 256 and os.name == "posix"  # fork needed
    staging = target
    if parallel and not isinstance(target, np.memmap):
        # Anonymous shared memory, so forked workers' writes are seen here.
        buffer = mmap.mmap(-1, max(target.nbytes, 1))
        staging = np.frombuffer(buffer, dtype=np.uint8).reshape(target.shape)
    _TARGET = staging
    problems: list[str | None] = [None] * len(payloads)
    jobs = ((i, payload, size, decode) for i, payload in enumerate(payloads))
    bar = tqdm(total=len(payloads), desc="decode", unit="img", disable=not progress)
    # Workers end with this process however it ends (a worker the pool replaces later is
    # tied to the pool's own thread instead, which lasts until the pool is terminated).
    lifeline = Lifeline.here()
    pool = multiprocessing.get_context("fork").Pool(workers, lifeline.hold) if parallel else None
    try:
        results = (
            pool.imap_unordered(_decode_into, jobs, chunksize=64)
            if pool
            else map(_decode_into, jobs)
        )
        for index, problem in results:
            problems[index] = problem
            bar.update()
    finally:
        if pool:
            pool.terminate()
        bar.close()
        _TARGET = None
    if staging is not target:
        target[:] = staging
    return problems


def _band_order(item):
    label = item[0]
    return int(label.split("-")[0].rstrip("+"))


__all__ = ["Dataset", "Record", "Scan", "Skipped", "build_cache", "prepare", "scan", "split_of"]
