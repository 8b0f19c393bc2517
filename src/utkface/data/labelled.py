"""Any labelled collection of face photos: a folder (or `.tar.gz` / `.zip`) plus a CSV of labels.

    utkface prepare --data PHOTOS --labels labels.csv [--faces auto|detect|aligned]

The CSV has a header row with the columns `file, gender`, the age as `age` or as an interval
`age_min, age_max` (or both columns), and optionally `race`:
- `file`: the photo's path inside PHOTOS (as `a/b.jpg`);
- `age`: years, 0..116 (a fraction is rounded to whole years, as the model's age classes are);
- `age_min`, `age_max`: an age bin, both ends inclusive (FairFace's 20-29, ...), used for rows
  whose `age` is empty; an upper end past 116 (FairFace's "70-120") is cut to 116, the last age
  the model knows. Such a record has `age` -1 (`names.UNKNOWN_AGE`) and trains and is scored on
  its interval (`training.losses.interval_nll`, `evaluation.age_bins`);
- `gender`: `0`/`1`, `male`/`female`, `m`/`f` (any case; 0 = male, 1 = female);
- `race`: `0`..`4` or a name (White, Black, Asian, Indian, Others; any case), empty = unknown;
- any other column (FairFace's `race7`) is kept with each record (`Record.extra`) for reports.

Every photo becomes one face crop like UTKFace's, with the public API of `faces`: `aligned`
takes the photo as it is (already a crop, decoded exactly like the UTKFace files), `detect`
finds the face (`detect_faces`) and cuts it with UTKFace's recipe (`crop_face` of the
detection's landmark `chip`), `auto` decides per photo (`looks_aligned`), as `utkface predict`
does. Nothing is dropped silently: a row with a bad label, a listed file that is missing, a
photo with no face or several faces, an undecodable file and a file the CSV does not list are
each skipped with the reason, and the rest goes on. `multisource.prepare_sources` caches the
result like a UTKFace download; the cache key includes the CSV's content, the face mode and the
crop code, so changing any of them makes a new cache.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
from pathlib import Path, PurePosixPath

import numpy as np

from utkface.runtime import faces as face_finder
from utkface.runtime import images as image_io
from utkface.runtime import landmarks, yunet
from utkface.runtime.errors import UtkfaceError
from utkface.runtime.names import MAX_AGE, RACES, UNKNOWN_AGE, UNKNOWN_RACE, Label, LabelError
from utkface.runtime.predict import check_mode  # the modes of `utkface predict --faces`

REQUIRED = ("file", "gender")
AGE_COLUMNS = (("age",), ("age_min", "age_max"))  # one of these sets
KNOWN = ("file", "age", "age_min", "age_max", "gender", "race")
LABEL_FORMAT = 2  # in the cache key: 2 = intervals and extra columns kept in the manifest
GENDER_WORDS = {"0": 0, "1": 1, "male": 0, "female": 1, "m": 0, "f": 1}
RACE_WORDS = {name.lower(): index for index, name in enumerate(RACES)} | {"other": 4}


class LabelsError(UtkfaceError, ValueError):
    """The labels file as a whole cannot be used (missing, no header, missing columns)."""


def read_labels(path: str | os.PathLike) -> tuple[dict[str, Label], list]:
    """`{file: Label}` of the usable rows and a `data.Skipped` per unusable one."""
    from utkface.data.dataset import Skipped

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is fine
    except FileNotFoundError:
        raise LabelsError(f"{path}: no such labels file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LabelsError(f"{path}: cannot read labels file ({error})") from error
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED if name not in header]
    if not any(all(name in header for name in names) for names in AGE_COLUMNS):
        missing.append("age (or age_min and age_max)")
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must name file, "
            f"age or age_min and age_max, gender and optionally race "
            f"(found: {', '.join(header) or 'nothing'})"
        )
    reader.fieldnames = header
    table: dict[str, Label] = {}
    rows_of: dict[str, int] = {}
    skipped = []
    for line, row in enumerate(reader, start=2):  # line 1 is the header
        file = _normal(row.get("file") or "")
        where = f"{path.name} line {line}"
        if not file:
            skipped.append(Skipped(f"{where}", "no file name"))
            continue
        if file in rows_of:
            reason = f"listed again in {where} (first on line {rows_of[file]})"
            skipped.append(Skipped(file, reason))
            continue
        rows_of[file] = line
        try:
            table[file] = parse_row(row)
        except LabelError as error:
            skipped.append(Skipped(file, f"bad label in {where}: {error}"))
    return table, skipped


def parse_row(row: dict) -> Label:
    """The Label of one CSV row (keys lower-case); `LabelError` names the bad field."""
    age_text = (row.get("age") or "").strip()
    low_text, high_text = ((row.get(key) or "").strip() for key in ("age_min", "age_max"))
    if age_text:
        age = _years(age_text, "age")
        if not 0 <= age <= MAX_AGE:
            raise LabelError(f"age {age_text} outside 0..{MAX_AGE}")
        low = high = age
    elif low_text and high_text:
        age, low, high = UNKNOWN_AGE, _years(low_text, "age_min"), _years(high_text, "age_max")
        if low > high:
            raise LabelError(f"age_min {low_text} > age_max {high_text}")
        if not 0 <= low <= MAX_AGE:
            raise LabelError(f"age_min {low_text} outside 0..{MAX_AGE}")
        high = min(high, MAX_AGE)
        if low == high:  # a one-year interval is an exact age
            age = low
    elif low_text or high_text:
        raise LabelError("an age interval needs both age_min and age_max")
    else:
        raise LabelError("no age: neither age nor age_min and age_max")
    gender_text = (row.get("gender") or "").strip()
    if gender_text.lower() not in GENDER_WORDS:
        raise LabelError(f"gender {gender_text!r} is not 0/1, male/female or m/f")
    race_text = (row.get("race") or "").strip()
    race = UNKNOWN_RACE
    if race_text:
        race = RACE_WORDS.get(race_text.lower(), int(race_text) if race_text.isdigit() else -2)
        if not 0 <= race < len(RACES):
            raise LabelError(
                f"race {race_text!r} is not 0..{len(RACES) - 1}, {', '.join(RACES)} or empty"
            )
    extra = tuple(
        (key, (value or "").strip()) for key, value in row.items() if key not in KNOWN and key
    )
    gender = GENDER_WORDS[gender_text.lower()]
    return Label(age, gender, race, age_min=low, age_max=high, extra=extra)


def _years(text: str, column: str) -> int:
    try:
        return round(float(text))
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        raise LabelError(f"{column} {text!r} is not a number") from None


def face_crop(payload: bytes, size: int, faces: str = "auto") -> np.ndarray:
    """One photo's `(size, size, 3)` uint8 face crop; `images.ImageError` says why there is none."""
    if faces == "aligned":
        return image_io.load_rgb(payload, size)
    image = image_io.open_rgb(payload)
    if faces == "auto":
        aligned, found = face_finder.looks_aligned(image)
        if aligned:  # `load_rgb` is `square_resize(open_rgb)`: the same pixels, decoded once
            return image_io.square_resize(image, size)
    else:
        found = face_finder.detect_faces(image)
    if not found:
        raise image_io.ImageError("no face found")
    if len(found) > 1:
        raise image_io.ImageError(f"{len(found)} faces found (a labelled photo needs one)")
    return face_finder.crop_face(np.asarray(image), found[0].chip, size)


def scan_labelled(
    photos: str | os.PathLike,
    labels: str | os.PathLike,
    size: int = 128,
    faces: str = "auto",
    workers: int | None = None,
    progress: bool = False,
    allocate=None,
    limits=None,
):
    """`data.scan` of a photo collection labelled by the CSV `labels` (see the module doc)."""
    from utkface.data.dataset import Skipped, scan

    check_mode(faces)
    table, skipped = read_labels(labels)
    if faces != "aligned":
        face_finder.require_detector()  # fail before the scan, naming the extra to install
    photos, labels = Path(photos), Path(labels)
    inside = _inside(labels, photos)  # the labels file itself is no photo
    found: set[str] = set()

    def label(name: str) -> Label:
        key = _normal(name)
        if key == inside:
            raise LabelError("the labels file itself")
        if key not in table:
            raise LabelError(f"not listed in {labels.name}")
        found.add(key)
        return table[key]

    result = scan(
        photos,
        size,
        workers,
        progress,
        allocate=allocate,
        limits=limits,
        label=label,
        decode=functools.partial(face_crop, faces=faces),
    )
    missing = [
        Skipped(file, f"missing: listed in {labels.name} but not in {photos.name}")
        for file in table
        if file not in found
    ]
    result.skipped += skipped + missing
    return result


def scanner(labels: str | os.PathLike, faces: str = "auto"):
    """A `data.scan`-like function of (source, size, workers, progress, allocate) for `prepare`."""

    def run(source, size, workers=None, progress=False, allocate=None, limits=None):
        return scan_labelled(source, labels, size, faces, workers, progress, allocate, limits)

    return run


def cache_settings(labels: str | os.PathLike, faces: str) -> dict:
    """What of a labelled source, besides the photos, decides the cached pixels and labels."""
    path = Path(labels)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise LabelsError(f"{path}: cannot read labels file ({error.strerror or error})") from error
    settings = {
        "labels": hashlib.sha256(content).hexdigest()[:16],
        "label_format": LABEL_FORMAT,
        "faces": faces,
    }
    if faces != "aligned":  # a new crop recipe crops again; `aligned` only decodes
        crop_code = b"".join(Path(m.__file__).read_bytes() for m in (face_finder, landmarks, yunet))
        settings["crop_code"] = hashlib.sha256(crop_code).hexdigest()[:16]
    return settings


def _normal(name: str) -> str:
    """A file name as listed or as found in the source: forward slashes, no leading `./`."""
    name = name.strip().replace("\\", "/")
    return PurePosixPath(name).as_posix() if name else ""


def _inside(file: Path, folder: Path) -> str | None:
    try:
        return file.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return None
