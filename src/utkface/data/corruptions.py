"""UTKFace-C: age and gender under the photo conditions real inputs come in.

    python -m benchmarks.robustness runs/x/best.pt             # val split, a table
    utkface evaluate --checkpoint best.pt --split val --corruptions

Each condition is applied to the full-resolution 200 px crops of the archive (as a camera, an
upload or a user's own cropping would act on a face before this project sees it), and the
result is then resized to the model's input size with the very resize of `images.load_rgb`, like
any real input. Strengths are fixed; where a condition has a direction or an amount (rotation,
shift, scale), each image draws its own from a generator seeded by (seed, image, condition), so
the table is reproducible and independent of batch order.

| condition | what it does to the 200 px crop |
|---|---|
| `jpeg20` | saved as JPEG at quality 20 (PIL's libjpeg, 4:2:0), as a heavily compressed upload |
| `blur` | Gaussian blur, sigma 2 px (about 1.1 px at 112 px): a slightly out-of-focus shot |
| `noise` | Gaussian noise, sigma 12 grey levels per pixel and channel: a high-ISO phone photo |
| `low_res32` | shrunk to 32 px (antialiased) and back: a face 32 px wide in the photo |
| `grayscale` | luma only (PIL `L`), in three equal channels: a black-and-white photo |
| `dark` | -2 stops (a quarter of the light) in linear light (gamma 2.2) |
| `bright` | +1.5 stops in linear light, clipped at white: an over-exposed face |
| `rotate` | turned about the centre by an angle uniform in +-20 degrees; corners black |
| `shift` | the crop window moved by 10-15 % of its side in a random direction; outside black |
| `scale` | the crop window 10-15 % smaller or larger (zoom in or out) about its centre |

Black is what UTKFace's own crops show beyond a photo's border, so the geometric conditions fill
with it. Training's photo augmentation (`augment.py`) draws each condition from a range around
these strengths, on the training size, so it never sees this table's exact images.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from utkface.data.dataset import split_of
from utkface.runtime.images import ImageError, open_rgb, square_resize
from utkface.runtime.names import LabelError, parse_name
from utkface.runtime.sources import iter_members

GAMMA = 2.2
Corruption = Callable[[Image.Image, np.random.Generator], Image.Image]


def _jpeg(image: Image.Image, rng) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=20)
    return Image.open(buffer).convert("RGB")


def _blur(image: Image.Image, rng) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=2.0))


def _noise(image: Image.Image, rng) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 12, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def _low_res(image: Image.Image, rng) -> Image.Image:
    small = image.resize((32, 32), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
    return small.resize(image.size, Image.Resampling.BILINEAR)


def _grayscale(image: Image.Image, rng) -> Image.Image:
    return image.convert("L").convert("RGB")


def _exposure(stops: float) -> Corruption:
    table = [
        round(255 * min(1.0, (v / 255) ** GAMMA * 2.0**stops) ** (1 / GAMMA)) for v in range(256)
    ]

    def expose(image: Image.Image, rng) -> Image.Image:
        return image.point(table * 3)

    return expose


def _rotate(image: Image.Image, rng) -> Image.Image:
    return image.rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR)


def _window(image: Image.Image, dx: float, dy: float, side: float) -> Image.Image:
    """The square window of `side` px centred `dx`, `dy` px off the centre (black outside)."""
    width, height = image.size
    cx, cy = width / 2 + dx, height / 2 + dy
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    # Scale (side / width) and offset, mapping the output frame onto the window.
    scale = side / width
    return image.transform(
        image.size,
        Image.Transform.AFFINE,
        (scale, 0, box[0], 0, scale, box[1]),
        Image.Resampling.BILINEAR,
    )


def _shift(image: Image.Image, rng) -> Image.Image:
    distance = rng.uniform(0.10, 0.15) * image.width
    direction = rng.uniform(0, 2 * math.pi)
    dx, dy = distance * math.cos(direction), distance * math.sin(direction)
    return _window(image, dx, dy, image.width)


def _scale(image: Image.Image, rng) -> Image.Image:
    factor = rng.uniform(0.10, 0.15) * rng.choice([-1, 1])
    return _window(image, 0.0, 0.0, image.width * (1 + factor))


CORRUPTIONS: dict[str, Corruption] = {
    "jpeg20": _jpeg,
    "blur": _blur,
    "noise": _noise,
    "low_res32": _low_res,
    "grayscale": _grayscale,
    "dark": _exposure(-2.0),
    "bright": _exposure(1.5),
    "rotate": _rotate,
    "shift": _shift,
    "scale": _scale,
}


@dataclass
class FullCrops:
    """Crops of one split at the archive's resolution, with labels."""

    images: list[Image.Image]
    labels: dict[str, np.ndarray]  # "age", "gender" int arrays
    files: list[str]


def load_full_crops(
    source: str | os.PathLike,
    split: str | None = "val",
    seed: int = 0,
    limit: int | None = None,
) -> FullCrops:
    """The crops of `split` (`data.split_of` with `seed`; None = every file) decoded at full
    resolution by `images.open_rgb`; files `prepare` would skip (bad name, undecodable) are left
    out, and at most `limit` are kept."""
    images, ages, genders, files = [], [], [], []
    for member in iter_members(source):
        if member.problem or (split is not None and split_of(member.name, seed) != split):
            continue
        try:
            label = parse_name(member.name)
            image = open_rgb(member.data)
        except (LabelError, ImageError):
            continue
        images.append(image)
        ages.append(label.age)
        genders.append(label.gender)
        files.append(member.name)
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise ValueError(f"no usable images in split {split!r} of {source}")
    labels = {"age": np.array(ages), "gender": np.array(genders)}
    return FullCrops(images, labels, files)


def corrupt(image: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """One condition of `CORRUPTIONS` applied to a full-resolution RGB crop."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](image, rng)


def corrupted_batch(crops: FullCrops, name: str | None, size: int, seed: int = 0) -> np.ndarray:
    """(N, size, size, 3) uint8: every crop under condition `name` (None = clean), resized."""
    index = list(CORRUPTIONS).index(name) if name else -1
    out = np.empty((len(crops.images), size, size, 3), np.uint8)
    for i, image in enumerate(crops.images):
        if name:
            image = corrupt(image, name, np.random.default_rng([seed, i, index]))
        out[i] = square_resize(image, size)
    return out


def robustness(
    predict: Callable[[np.ndarray], dict[str, np.ndarray]],
    crops: FullCrops,
    size: int,
    names: Sequence[str] = tuple(CORRUPTIONS),
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Age MAE and gender accuracy, clean and under each condition. `predict` maps uint8
    images to the predictions of `inference.predict_arrays`. Returns
    `{"n", "rows": [{"condition", "age_mae", "age_mae_increase", "gender_acc",
    "gender_acc_change"}], "mean_age_mae_increase", "mean_gender_acc_change"}` (the means over
    the conditions, clean excluded)."""
    from tqdm import tqdm

    rows = []
    conditions = [None, *names]
    for name in tqdm(conditions, desc="UTKFace-C", unit="condition", disable=not progress):
        predictions = predict(corrupted_batch(crops, name, size, seed))
        row = {"condition": name or "clean"}
        if "age" in predictions:
            row["age_mae"] = float(np.abs(predictions["age"] - crops.labels["age"]).mean())
        if "gender_prob" in predictions:
            female = predictions["gender_prob"] >= 0.5
            row["gender_acc"] = float((female == crops.labels["gender"]).mean())
        rows.append(row)
    clean = rows[0]
    for row in rows:
        for key, change in (("age_mae", "age_mae_increase"), ("gender_acc", "gender_acc_change")):
            if key in row:
                row[change] = row[key] - clean[key]
    result = {"n": len(crops.images), "rows": rows}
    for change in ("age_mae_increase", "gender_acc_change"):
        values = [row[change] for row in rows[1:] if change in row]
        if values:
            result[f"mean_{change}"] = float(np.mean(values))
    return result
