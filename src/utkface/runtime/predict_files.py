"""`utkface predict` over files: stream inputs through the model into resumable part files.

    utkface predict photos/ "more/*.jpg" list.txt --checkpoint best.pt --out results/ --resume

Inputs (files, folders, globs, manifests; `--shard K/N`) are streamed by `predict_inputs`, so
the first photo is predicted at once; results go out as they come through
`predict_output.PartWriter` (part files that are each whole; `--resume` skips the inputs they
hold; `--out F.jsonl|F.csv` joins them into one file at the end). Every input gets a result: an
error for one that cannot be read, and the run goes on. Decoding and face detection run in the
`Predictor`'s worker pool, crops of many files are batched through the model, and annotated
copies are drawn here.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from utkface.runtime.atomic import atomic_open
from utkface.runtime.errors import OptionError
from utkface.runtime.images import open_rgb
from utkface.runtime.predict import Predictor
from utkface.runtime.predict_inputs import Item, count_inputs, iter_inputs
from utkface.runtime.predict_output import FILE_SUFFIXES, PartWriter, join_parts
from utkface.runtime.results import Prediction


@dataclass
class RunSummary:
    inputs: int = 0  # images tried, plus inputs that matched nothing
    failed: int = 0  # of those, how many gave an error
    faces: int = 0  # faces found in the rest
    resumed: int = 0  # inputs done by an earlier run (--resume), not tried again

    def add(self, prediction: Prediction) -> None:
        self.inputs += 1
        self.failed += prediction.error is not None
        self.faces += len(prediction.faces)

    def __str__(self) -> str:
        text = f"{self.inputs} inputs, {self.failed} failed, {self.faces} faces"
        return text + (f" ({self.resumed} done before, skipped)" if self.resumed else "")


def predict_files(
    inputs: Sequence[str | os.PathLike],
    predictor: Predictor,
    *,
    out: str | os.PathLike | None = None,
    out_format: str | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    part_size: int = 1000,
    annotate: str | os.PathLike | None = None,
    faces: str | None = None,
    report: Callable[[Prediction], None] | None = None,
    progress: bool = False,
) -> RunSummary:
    """Predict on every input of `inputs` in `shard`; write the results under `out` (a folder
    of part files, or one .jsonl/.csv file; see `predict_output`), annotated copies under
    `annotate`, and call `report` on each `Prediction`. With `resume`, inputs that `out`
    already holds are skipped. Bad inputs are recorded as errors and the run goes on."""
    writer, joined = open_output(out, out_format, resume, part_size)  # before any work
    done = writer.done if writer else set()
    summary = RunSummary(resumed=len(done))
    total = count_inputs(inputs, shard) if progress else None
    bar = tqdm(
        total=None if total is None else max(0, total - len(done)),
        desc="predict",
        unit="img",
        disable=not progress,
        mininterval=1.0,
    )
    items = (item for item in iter_inputs(inputs, shard) if item.source not in done)
    try:
        for item, prediction in _predictions(items, predictor, faces):
            summary.add(prediction)
            if writer:
                writer.write(prediction)
            if annotate and prediction.error is None:
                _write_annotated(item, prediction, Path(annotate))
            if report:
                report(prediction)
            bar.update()
        if writer:
            writer.flush()
    except BaseException:
        if writer:  # keep what is finished (Ctrl-C, a failure): --resume goes on from there
            writer.flush()
            if writer.folder.is_dir() and not any(writer.folder.iterdir()):
                writer.folder.rmdir()
        raise
    finally:
        bar.close()
    if joined:
        join_parts(writer.folder, joined)
    return summary


def open_output(
    out: str | os.PathLike | None, out_format: str | None, resume: bool, part_size: int
) -> tuple[PartWriter | None, Path | None]:
    """The `PartWriter` for `--out`, and the single file its parts are joined into (if any)."""
    if out is None:
        if resume:
            raise OptionError("--resume needs --out (the results to continue)")
        return None, None
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if out_format not in (None, suffix[1:]):
            raise OptionError(f"--out {out} is {suffix[1:]}, not --format {out_format}")
        parts = out.with_name(out.name + ".parts")
        return PartWriter(parts, suffix[1:], resume, part_size), out
    if suffix and not out.is_dir():
        raise OptionError(
            f"--out {out}: unknown suffix; choose one of {', '.join(FILE_SUFFIXES)}, "
            "or a folder (no suffix) for part files"
        )
    return PartWriter(out, out_format or "jsonl", resume, part_size), None


def _predictions(
    items: Iterator[Item], predictor: Predictor, faces: str | None
) -> Iterator[tuple[Item, Prediction]]:
    """The one place where an input meets what predicts on it, in input order: an entry that
    named nothing gets its error; an image file goes through `Predictor.predict_iter`."""
    fed: deque[Item] = deque()

    def images() -> Iterator[Path]:
        for item in items:
            fed.append(item)
            if item.error is None:
                yield item.path

    def named_nothing(item: Item) -> tuple[Item, Prediction]:
        return item, Prediction(item.source, error=item.error)

    for prediction in predictor.predict_iter(images(), faces):
        while fed[0].error is not None:
            yield named_nothing(fed.popleft())
        yield fed.popleft(), prediction
    yield from map(named_nothing, fed)


def describe(prediction: Prediction) -> str:
    """One line for a person: `photo.jpg: 2 faces: 34 (25-45) female 91%; ...`."""
    if prediction.error:
        return f"{prediction.source}: error: {prediction.error}"
    labels = "; ".join(face.text() for face in prediction.faces) or "no face found"
    count = len(prediction.faces)
    return f"{prediction.source}: {count} face{'' if count == 1 else 's'}: {labels}"


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
        text = face.text()
        x0, y0, x1, y1 = draw.textbbox((left, top), text, font=font)
        lift = y1 - y0 + 4 if top - (y1 - y0) - 4 >= 0 else 0  # above the box when it fits
        draw.rectangle((x0 - 2, y0 - lift - 2, x1 + 2, y1 - lift + 2), fill=colour)
        draw.text((left, top - lift), text, fill=(255, 255, 255), font=font)
    return image


def _write_annotated(item: Item, prediction: Prediction, folder: Path) -> None:
    target = folder / item.name
    if target.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp", ".bmp"):
        target = target.with_suffix(".png")
    with atomic_open(target) as out:
        image_format = Image.registered_extensions()[target.suffix.lower()]
        annotate_image(open_rgb(item.path), prediction).save(out, format=image_format, quality=90)
