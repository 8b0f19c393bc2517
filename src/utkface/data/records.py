"""What a prepared face is (`Record`), what was left out (`Skipped`), and the two CSV files of a
cache that hold them: `manifest.csv` (one row per face, in the order of `images.npy`) and
`skipped.csv` (one row per file left out, with the reason).

A record's age is exact (`age_min == age_max == age`) or an interval label, an age bin such as
FairFace's 20-29 (`age == -1`, `names.UNKNOWN_AGE`). Any other column of a labels CSV (FairFace's
`race7`) travels with the record (`extra`) into the manifest, for reports. Manifests written
before interval labels have neither interval nor extra columns; they read as exact ages.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utkface.runtime.names import UNKNOWN_AGE, age_band, band_ages, fill_exact_interval

LABEL_KEYS = ("age", "gender", "race", "age_min", "age_max")  # Scan.labels(): int64 arrays
MANIFEST = ("file", "age", "gender", "race", "split", "age_min", "age_max")  # then extras


@dataclass(frozen=True)
class Record:
    file: str  # path inside the source
    age: int  # UNKNOWN_AGE (-1) for an interval label (an age bin)
    gender: int
    race: int  # -1 when unknown
    split: str = ""
    source: str = ""  # which source of several (`multisource`); "" for a single one
    age_min: int = UNKNOWN_AGE  # the age interval, both ends inclusive; = age when exact
    age_max: int = UNKNOWN_AGE
    extra: tuple[tuple[str, str], ...] = ()  # other labels CSV columns (e.g. race7), reporting

    def __post_init__(self):
        fill_exact_interval(self)

    @property
    def band(self) -> str:
        return age_band(int(band_ages(self.age_min, self.age_max)))


@dataclass(frozen=True)
class Skipped:
    file: str
    reason: str


def extra_names(records) -> list[str]:
    """The names of the records' extra columns, in order of first appearance."""
    return list(dict.fromkeys(name for record in records for name, _ in record.extra))


def write_manifest(path: Path, records: Sequence[Record], splits: Sequence[str]) -> None:
    extras = extra_names(records)
    rows = [
        (r.file, r.age, r.gender, r.race, split, r.age_min, r.age_max)
        + tuple(dict(r.extra).get(name, "") for name in extras)
        for r, split in zip(records, splits)
    ]
    _write_csv(path, (*MANIFEST, *extras), rows)


def read_manifest(path: Path) -> list[Record]:
    with open(path, newline="") as file:
        return [_manifest_record(row) for row in csv.DictReader(file)]


def write_skipped(path: Path, skipped: Sequence[Skipped]) -> None:
    _write_csv(path, ("file", "reason"), [(s.file, s.reason) for s in skipped])


def read_skipped(path: Path) -> list[Skipped]:
    with open(path, newline="") as file:
        return [Skipped(row["file"], row["reason"]) for row in csv.DictReader(file)]


def _manifest_record(row: dict) -> Record:
    age = int(row["age"])
    return Record(
        row["file"],
        age,
        int(row["gender"]),
        int(row["race"]),
        row["split"],
        age_min=int(row.get("age_min") or age),  # older manifests: exact ages only
        age_max=int(row.get("age_max") or age),
        extra=tuple((key, value) for key, value in row.items() if key not in MANIFEST),
    )


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
