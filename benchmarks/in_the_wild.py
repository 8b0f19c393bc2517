"""UTKFace's crop recipe on faces in larger photos: found, re-cropped, and scored like the crop.

    python -m benchmarks.in_the_wild --checkpoint runs/x/best.pt [--count 300] [--points 68]

Takes `--count` UTKFace crops of the **test split** (`data.split_of`, seed 0; spread over the
archive), pastes each, turned by up to `--max-angle` degrees and resized to a random side, at a
random place in a larger photo of smooth colour noise (`wild_photo`), then runs the project's
own face path on the photo (`faces.detect_faces` + `faces.crop_face`, the path of
`--faces detect`). It prints:

- found: faces detected inside the pasted square, of `--count`;
- crop difference: mean absolute difference, in grey levels (0..255), between the 200 px crop
  cut from the photo and the original crop, over the faces found;
- with `--checkpoint`: age MAE and gender accuracy on the photos (`Predictor`, faces `detect`)
  against the same model on the original crops (faces `aligned`), over the faces found.

Without `--checkpoint` only the model-free numbers are measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from utkface.data.dataset import default_source, split_of
from utkface.runtime import faces, landmarks
from utkface.runtime.atomic import atomic_write
from utkface.runtime.images import RESAMPLE
from utkface.runtime.names import parse_name
from utkface.runtime.sources import iter_members


def split_crops(source: str | Path, count: int, split: str = "test", every: int = 7):
    """(crops, labels) of `count` crops of `split`, taking every `every`-th file of it so they
    spread over the archive: crops (count, 200, 200, 3) uint8, labels {"age", "gender"}."""
    crops, ages, genders = [], [], []
    seen = 0
    for member in iter_members(source):
        if member.problem or split_of(member.name) != split:
            continue
        seen += 1
        if seen % every:
            continue
        try:
            label = parse_name(member.name)
            image = Image.open(io.BytesIO(member.data)).convert("RGB")
        except Exception:  # an odd file of the archive is simply not used here
            continue
        if image.size != (landmarks.CHIP_SIZE, landmarks.CHIP_SIZE):
            continue
        crops.append(np.asarray(image))
        ages.append(label.age)
        genders.append(label.gender)
        if len(crops) == count:
            break
    return np.stack(crops), {"age": np.array(ages), "gender": np.array(genders)}


def background(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour noise: a photo-like background with no face in it."""
    noise = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), dtype=np.uint8)
    return Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)


def wild_photo(
    crop: np.ndarray,
    rng: np.random.Generator,
    sides: tuple[int, int] = (90, 320),
    max_angle: float = 30.0,
) -> tuple[Image.Image, tuple[float, float, float]]:
    """`crop` resized to a random side, turned by up to `max_angle` degrees and pasted at a
    random place of a larger background (1.6 to 3 times the face's turned size). Returns the
    photo and where the crop's centre went, with its side and turn (counter-clockwise):
    (x, y, side, degrees)."""
    side = int(rng.integers(sides[0], sides[1] + 1))
    angle = float(rng.uniform(-max_angle, max_angle))
    face = Image.fromarray(crop).resize((side, side), RESAMPLE)
    mask = Image.new("L", face.size, 255)
    face = face.rotate(angle, RESAMPLE, expand=True)
    mask = mask.rotate(angle, Image.Resampling.NEAREST, expand=True)
    width = int(face.width * rng.uniform(1.6, 3.0))
    height = int(face.height * rng.uniform(1.6, 3.0))
    photo = background(width, height, rng)
    left = int(rng.integers(0, width - face.width + 1))
    top = int(rng.integers(0, height - face.height + 1))
    photo.paste(face, (left, top), mask)
    return photo, (left + face.width / 2, top + face.height / 2, float(side), angle)


def recrop(photo: Image.Image, where: tuple, points: int = 68, detector: str = "dlib"):
    """The face `detector` finds at the pasted place (its centre within half a side of the
    pasted crop's centre) and its 200 px crop, or (None, None) when no face is found there."""
    x, y, side = where[:3]
    near = [
        face
        for face in faces.detect_faces(photo, points=points, detector=detector)
        if math.dist(((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2), (x, y))
        < side / 2
    ]
    if not near:
        return None, None
    face = max(near, key=lambda face: face.score)
    return face, landmarks.extract_chip(np.asarray(photo), face.chip)


def measure(crops: np.ndarray, seed: int = 0, points: int = 68, max_angle: float = 30.0):
    """Paste every crop into a photo and re-crop it. Returns the photos, a boolean `found`
    array and the mean absolute difference of each found crop from its original (NaN when
    missed)."""
    rng = np.random.default_rng(seed)
    photos, found, difference = [], [], []
    for crop in crops:
        photo, where = wild_photo(crop, rng, max_angle=max_angle)
        face, recropped = recrop(photo, where, points)
        photos.append(photo)
        found.append(face is not None)
        difference.append(
            np.abs(recropped.astype(np.int16) - crop).mean() if face is not None else np.nan
        )
    return photos, np.array(found), np.array(difference)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="score age/gender on photos and crops with it")
    parser.add_argument("--data", default=None, help="UTKFace download (default: $UTKFACE_DATA)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--points", type=int, default=68, choices=landmarks.POINT_COUNTS)
    parser.add_argument("--max-angle", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    crops, labels = split_crops(args.data or default_source(), args.count)
    started = time.perf_counter()
    photos, found, difference = measure(crops, args.seed, args.points, args.max_angle)
    seconds = time.perf_counter() - started
    result = {
        "faces": len(crops),
        "found": int(found.sum()),
        "found_share": float(found.mean()),
        "crop_difference": float(np.nanmean(difference)),
        "crop_difference_p90": float(np.nanpercentile(difference, 90)),
        "ms_per_photo": 1000 * seconds / len(crops),
    }
    print(
        f"{args.points}-point recipe, {len(crops)} test-split crops pasted at up to "
        f"{args.max_angle:g} degrees: found {result['found']}/{len(crops)} "
        f"({100 * result['found_share']:.1f}%), crop difference {result['crop_difference']:.2f} "
        f"grey levels (90th percentile {result['crop_difference_p90']:.2f}), "
        f"{result['ms_per_photo']:.0f} ms per photo"
    )
    if args.checkpoint:
        result.update(_score(args.checkpoint, crops, photos, found, labels))
        print(
            f"on the {result['found']} faces found: age MAE {result['photo_mae']:.2f} on photos "
            f"vs {result['crop_mae']:.2f} on crops ({result['photo_mae'] - result['crop_mae']:+.2f}"
            f"), gender accuracy {100 * result['photo_gender_acc']:.1f}% vs "
            f"{100 * result['crop_gender_acc']:.1f}%"
        )
    if args.json:
        result.update(checkpoint=args.checkpoint, points=args.points, max_angle=args.max_angle)
        atomic_write(args.json, json.dumps(result, indent=2) + "\n")
    return result


def _score(checkpoint, crops, photos, found, labels) -> dict:
    from utkface.runtime.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, workers=1, detector="dlib")
    kept = np.flatnonzero(found)
    on_crops = predictor.predict(crops[kept], faces="aligned")
    on_photos = predictor.predict([photos[i] for i in kept], faces="detect")
    result = {}
    for name, predictions in (("crop", on_crops), ("photo", on_photos)):
        # Where the detector saw more than one face in a photo, the surest one is scored.
        chosen = [max(p.faces, key=lambda f: f.score or 0) for p in predictions]
        age = np.array([face.age for face in chosen])
        female = np.array([face.gender_prob >= 0.5 for face in chosen])
        result[f"{name}_mae"] = float(np.abs(age - labels["age"][kept]).mean())
        result[f"{name}_gender_acc"] = float((female == labels["gender"][kept]).mean())
    return result


if __name__ == "__main__":
    main()
