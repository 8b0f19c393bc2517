"""Facial landmarks and UTKFace's own crop recipe, from dlib's shape predictors.

    points = find_landmarks(pixels, box)          # 68 (x, y) points in the photo
    chip = chip_of(points)                        # the rotated square UTKFace would have cut
    crop = extract_chip(pixels, chip)             # (200, 200, 3) uint8, as in UTKFace

UTKFace's crops were made with dlib: 68-point landmarks, then `dlib.get_face_chip_details`
with its defaults (a 200 px chip, padding 0.2), which rotates the eyes level, scales the face to
a fixed size and centres it. Re-cropping a UTKFace crop this way gives the crop back (mean
absolute difference 5.3 grey levels over the 191 of 200 crops where HOG finds the face).

Models: `shape_predictor_68_face_landmarks.dat` and `shape_predictor_5_face_landmarks.dat` from
the PyPI package `face-recognition-models` (in the `detect` extra). The 68-point model is under
iBUG 300-W's non-commercial terms, the same as UTKFace's; the 5-point model is public domain.
dlib's chip recipe at the same padding frames 5-point landmarks differently (20.9 grey levels
from the crop), so the 5-point model maps its points onto `FIVE_POINT_TEMPLATE` instead: where
those points sit, on average, in real UTKFace crops of the train split (`faces.measure_template`).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def chip_of(landmarks: Iterable[Point]) -> Chip:
    """The chip UTKFace's recipe cuts around these landmarks: dlib's `get_face_chip_details`
    (size 200, padding 0.2) for 68 points, a similarity onto `FIVE_POINT_TEMPLATE` for 5."""
    import dlib

    points = [dlib.point(round(x), round(y)) for x, y in landmarks]
    if len(points) == 68:
        xs, ys = zip(*((p.x, p.y) for p in points))
        rect = dlib.rectangle(min(xs), min(ys), max(xs), max(ys))
        details = dlib.get_face_chip_details(
            dlib.full_object_detection(rect, points), CHIP_SIZE, CHIP_PADDING
        )
    elif len(points) == 5:
        template = dlib.dpoints([dlib.dpoint(x, y) for x, y in FIVE_POINT_TEMPLATE])
        image = dlib.dpoints([dlib.dpoint(p.x, p.y) for p in points])
        details = dlib.chip_details(template, image, dlib.chip_dims(CHIP_SIZE, CHIP_SIZE))
    else:
        raise ValueError(f"expected 68 or 5 landmarks, got {len(points)}")
    r = details.rect
    return Chip((r.left(), r.top(), r.right(), r.bottom()), float(details.angle))


def extract_chip(pixels: np.ndarray, chip: Chip, size: int = CHIP_SIZE) -> np.ndarray:
    """Cut `chip` out of an `(H, W, 3)` uint8 image as `(size, size, 3)` uint8 with dlib's
    `extract_image_chip` (bilinear, with a pyramid first when the face is much larger than the
    chip); parts outside the photo are black, as in UTKFace's crops near a border."""
    import dlib

    details = dlib.chip_details(dlib.drectangle(*chip.rect), dlib.chip_dims(size, size), chip.angle)
    return dlib.extract_image_chip(np.ascontiguousarray(pixels), details)
