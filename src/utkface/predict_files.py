"""`utkface predict` over files: expand inputs, stream results to JSONL/CSV, draw annotations.

    utkface predict photos/ "more/*.jpg" --checkpoint best.pt --out faces.jsonl --annotate seen/

INPUTS are files, folders (recursive) or globs. Every input gets a result: an error for one that
cannot be read, and the run goes on. `--out` is written to a temp file and renamed when the run
ends, so an earlier file is never left half-overwritten. The faces themselves come from
`predict.Predictor`.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from glob import glob
from pathlib import Path
from typing import IO

from PIL import Image, ImageDraw, ImageFont

from utkface.atomic import atomic_open
from utkface.errors import OptionError
from utkface.images import open_rgb
from utkface.names import IMAGE_SUFFIXES
from utkface.predict import FaceResult, Prediction, Predictor

FOLDER_SUFFIXES = IMAGE_SUFFIXES + (".tif", ".tiff", ".gif")  # what a folder input picks up
OUTPUT_SUFFIXES = (".jsonl", ".csv")
CSV_COLUMNS = (
    "source",
    "error",
    "mode",
    "width",
    "height",
    "face",
    "left",
    "top",
    "right",
    "bottom",
    "score",
    "age",
    "age_low",
    "age_high",
    "gender",
    "gender_prob",
    "race",
    "race_prob",
)


@dataclass
class RunSummary:
    inputs: int = 0  # images tried, plus inputs that matched nothing
    failed: int = 0  # of those, how many gave an error
    faces: int = 0  # faces found in the rest

    def __str__(self) -> str:
        return f"{self.inputs} inputs, {self.failed} failed, {self.faces} faces"


def expand_inputs(
    inputs: Sequence[str | os.PathLike],
) -> tuple[list[tuple[Path, Path]], list[Prediction]]:
    """Files, folders (recursive, image suffixes only) and globs -> `(file, name for
    annotation)` pairs in order without repeats, and an error `Prediction` for each input that
    names nothing."""
    found: dict[Path, Path] = {}
    taken: set[Path] = set()
    errors = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            files = [
                f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in FOLDER_SUFFIXES
            ]
            pairs = [(f, Path(path.resolve().name) / f.relative_to(path)) for f in sorted(files)]
            if not pairs:
                errors.append(Prediction(str(entry), error="folder holds no image files"))
        elif path.exists():
            pairs = [(path, Path(path.name))]
        elif any(char in str(entry) for char in "*?["):
            pairs = [
                (Path(f), Path(Path(f).name))
                for f in sorted(glob(str(entry), recursive=True))
                if Path(f).is_file()
            ]
            if not pairs:
                errors.append(Prediction(str(entry), error="no files match this pattern"))
        else:
            errors.append(Prediction(str(entry), error="no such file or folder"))
            pairs = []
        for file, name in pairs:
            if file not in found:
                found[file] = _unique(name, taken)
    return list(found.items()), errors


def _unique(name: Path, taken: set[Path]) -> Path:
    """`name`, or `name-1`, `name-2`, ... if an earlier input already took it."""
    candidate, number = name, 0
    while candidate in taken:
        number += 1
        candidate = name.with_name(f"{name.stem}-{number}{name.suffix}")
    taken.add(candidate)
    return candidate


def predict_files(
    inputs: Sequence[str | os.PathLike],
    predictor: Predictor,
    *,
    out: str | os.PathLike | None = None,
    annotate: str | os.PathLike | None = None,
    faces: str | None = None,
    report: Callable[[Prediction], None] | None = None,
) -> RunSummary:
    """Predict on every file named by `inputs`; write `out` (.jsonl: one object per input;
    .csv: one row per face) atomically, annotated copies under `annotate`, and call `report`
    on each `Prediction`. Bad inputs are recorded as errors and the run goes on."""
    if out and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:  # before any work
        raise OptionError(
            f"--out {out}: unknown suffix; choose one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    files, errors = expand_inputs(inputs)
    names = dict(files)
    summary = RunSummary()
    # A failure anywhere leaves no partial `out` and any earlier file of that name untouched.
    output = atomic_open(out, "w", newline="", encoding="utf-8") if out else nullcontext()
    with output as stream:
        writer = _ResultWriter(stream, Path(out).suffix.lower() == ".csv") if out else None
        results = predictor.predict_iter([file for file, _ in files], faces)
        for prediction in itertools.chain(errors, results):
            summary.inputs += 1
            summary.failed += prediction.error is not None
            summary.faces += len(prediction.faces)
            if writer:
                writer.write(prediction)
            if annotate and prediction.error is None:
                _write_annotated(Path(prediction.source), prediction, Path(annotate), names)
            if report:
                report(prediction)
    return summary


def describe(prediction: Prediction) -> str:
    """One line for a person: `photo.jpg: 2 faces: 34 (25-45) female 91%; ...`."""
    if prediction.error:
        return f"{prediction.source}: error: {prediction.error}"
    labels = "; ".join(_label(face) for face in prediction.faces) or "no face found"
    count = len(prediction.faces)
    return f"{prediction.source}: {count} face{'' if count == 1 else 's'}: {labels}"


def _label(face: FaceResult) -> str:
    parts = []
    if face.age is not None:
        parts.append(f"{face.age:.0f}")
        if face.age_low is not None:
            parts.append(f"({face.age_low:.0f}-{face.age_high:.0f})")
    if face.gender_prob is not None:
        parts.append(f"{face.gender} {max(face.gender_prob, 1 - face.gender_prob):.0%}")
    if face.race is not None:
        parts.append(face.race)
    return " ".join(parts)


class _ResultWriter:
    """Streams results into an open text file: JSON lines (one per input) or CSV (one row per
    face)."""

    def __init__(self, file: IO[str], as_csv: bool):
        self.file = file
        self.csv = csv.DictWriter(file, CSV_COLUMNS) if as_csv else None
        if self.csv:
            self.csv.writeheader()

    def write(self, prediction: Prediction) -> None:
        if not self.csv:
            self.file.write(json.dumps(prediction.to_dict()) + "\n")
            return
        row = {
            key: getattr(prediction, key) for key in ("source", "error", "mode", "width", "height")
        }
        if not prediction.faces:
            self.csv.writerow(row)
        for index, face in enumerate(prediction.faces):
            values = asdict(face)
            left, top, right, bottom = values.pop("box")
            self.csv.writerow(
                {
                    **row,
                    **values,
                    "face": index,
                    "left": left,
                    "top": top,
                    "right": right,
                    "bottom": bottom,
                }
            )


def annotate_image(image: Image.Image, prediction: Prediction) -> Image.Image:
    """A copy of `image` with each face boxed and labelled (age, interval, gender)."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    scale = max(image.size) / 600
    font = ImageFont.load_default(size=max(12, round(14 * scale)))
    for face in prediction.faces:
        left, top, right, bottom = face.box
        colour = {"female": (230, 60, 140), "male": (40, 120, 230)}.get(face.gender, (40, 200, 80))
        draw.rectangle((left, top, right, bottom), outline=colour, width=max(2, round(2 * scale)))
        text = _label(face)
        x0, y0, x1, y1 = draw.textbbox((left, top), text, font=font)
        lift = y1 - y0 + 4 if top - (y1 - y0) - 4 >= 0 else 0  # above the box when it fits
        draw.rectangle((x0 - 2, y0 - lift - 2, x1 + 2, y1 - lift + 2), fill=colour)
        draw.text((left, top - lift), text, fill=(255, 255, 255), font=font)
    return image


def _write_annotated(
    file: Path, prediction: Prediction, folder: Path, names: dict[Path, Path]
) -> None:
    target = folder / names[file]
    if target.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        target = target.with_suffix(".png")
    with atomic_open(target) as out:
        image_format = Image.registered_extensions()[target.suffix.lower()]
        annotate_image(open_rgb(file), prediction).save(out, format=image_format, quality=90)
