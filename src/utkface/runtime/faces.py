"""Face detection and UTKFace-style crops, fully offline.

    from utkface.runtime.faces import detect_faces, crop_face
    for face in detect_faces(image):          # image: an RGB PIL image from images.open_rgb
        pixels = crop_face(image, face.chip, size=128)   # (128, 128, 3) uint8, as in UTKFace

Two detectors (`DETECTORS`, `detector=`; `--detector` of `utkface predict` and `serve`):
- `yunet` (default): OpenCV Zoo's YuNet, a 232 KB ONNX file shipped in the package and run by
  ONNX Runtime (`yunet.py`), so `pip install .` finds faces in whole photos. Its 5 landmarks
  are mapped onto UTKFace's framing by the least-squares similarity to `yunet.TEMPLATE`, their
  mean place in train-split UTKFace crops (`landmarks.chip_of`).
- `dlib` (extra `utkface[detect]`): dlib's HOG + linear SVM frontal face detector, then dlib's
  68-point landmarks and UTKFace's own chip recipe (`landmarks.py`), which re-makes UTKFace's
  crops exactly (their crops were made that way); `points=5` uses dlib's 5-point model and
  `landmarks.FIVE_POINT_TEMPLATE` instead.

On 300 val-split crops pasted into photos at random size, place and turn up to 30 degrees
(`python -m benchmarks.pasted --split val`), YuNet finds 100% of the faces (dlib 98.0%), in
about a quarter of dlib's time on test; dlib's 68-point crops are closer to the true crop (IoU
0.97 vs 0.88), which keeps the model's gender on them nearer its gender on the crops (BENCHMARKS.md,
"Built-in face detector (issue 21)"). Why HOG was dlib's choice among the detectors whose
weights ship in a PyPI package (Haar: misses faces that fill the frame, false positives; MTCNN
wheels: GPL-3 or broken; retina-face: TensorFlow) is in that file's history.

A face missed in the upright photo is looked for again in copies turned (and scaled) by the
detector's `RETRIES` (HOG finds faces tilted by up to about 15 degrees; YuNet, found every
pasted face upright, needs none); boxes and landmarks are mapped back into the photo. A box
without landmarks (a tracked box between detections in a video) is framed by `utkface_crop`,
the average UTKFace crop around the detector's box (`FRAMING`, `measure_framing`).

`auto` (`looks_aligned`): of 300 real 200x200 crops of the test split, all are taken as crops
with either detector (IoU of the face's crop with the frame >= 0.5: dlib 298, YuNet 291; no
face found in a small square image: the other 2 and 9).
"""

from __future__ import annotations

import contextlib
import math
import queue
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from utkface.runtime import yunet
from utkface.runtime.errors import OptionError, require
from utkface.runtime.images import RESAMPLE, square_resize
from utkface.runtime.landmarks import (
    CHIP_SIZE,
    FIVE_POINT_TEMPLATE,
    INSTALL_HINT,
    Box,
    Chip,
    DetectorUnavailable,
    Point,
    chip_of,
    extract_chip,
    find_landmarks,
    predictor,
)

DETECTORS = ("yunet", "dlib")
DEFAULT_DETECTOR = "yunet"  # the better on val-split pasted photos (`benchmarks.pasted`)
# Box framing, for a box without landmarks (e.g. a tracked box in a video): a UTKFace crop is
# square, scale times the longer side of the detector's box, its centre moved by shift box sides
# (x, y) (`measure_framing` on 500 UTKFace crops pasted at random sizes: for dlib, IoU with the
# true crop 0.85; for YuNet, train-split crops, every 17th, seed 0, all found).
FRAMING = {
    "dlib": (1.13, (0.007, 0.008)),
    "yunet": (0.914, (0.003, 0.075)),
}
DETECT_MAX_SIDE = 1280  # larger photos are shrunk to this longer side before detection
UPSAMPLE_MAX_SIDE = 640  # dlib: at or below this longer side, upsample once (faces of ~40 px)
# (degrees, scale) copies searched in turn when the upright photo has no face. dlib's HOG finds
# faces tilted by up to ~15 degrees; chosen on 150 val-split crops pasted at up to 30 degrees:
# found 136 upright, 145 adding +-12, 146 adding +-24, 148 adding +-24 at 3/4 size.
RETRIES = {
    "dlib": ((-12.0, 1.0), (12.0, 1.0), (-24.0, 1.0), (24.0, 1.0), (-24.0, 0.75), (24.0, 0.75)),
    "yunet": (),  # found 300 of 300 val-split pasted crops upright (`benchmarks.pasted`)
}
ALIGNED_MIN_IOU = 0.5  # auto: a face whose UTKFace crop covers half the frame or more -> aligned
ALIGNED_MAX_SIDE = 512  # auto: a square image this small with no face found -> aligned
SQUARE_RATIO = 1.25  # auto: longer / shorter side at most this counts as square
__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "Detection",
    "DetectorUnavailable",
    "INSTALL_HINT",
    "box_iou",
    "check_detector",
    "crop_face",
    "detect_faces",
    "looks_aligned",
    "measure_framing",
    "require_detector",
    "utkface_crop",
]


@dataclass(frozen=True)
class Detection:
    box: Box  # the detector's face box in the photo's pixels (EXIF-rotated); its bounds if turned
    score: float  # dlib: SVM margin (> 0 is a face); YuNet: 0..1; larger is surer
    landmarks: tuple[Point, ...]  # 68 or 5 (dlib), 5 (YuNet) points in the photo's pixels
    chip: Chip  # the rotated square UTKFace's recipe cuts around the landmarks

    @property
    def crop(self) -> Box:
        """The axis-aligned box around this face's UTKFace crop (may extend past the photo)."""
        return self.chip.bounds()


def check_detector(detector: str) -> None:
    """`OptionError` unless `detector` is one of `DETECTORS`."""
    if detector not in DETECTORS:
        raise OptionError(f"unknown detector {detector!r}; choose one of {', '.join(DETECTORS)}")


def require_detector(detector: str = DEFAULT_DETECTOR) -> None:
    """Load `detector` now, before a long run: `DetectorUnavailable` when dlib or its 68-point
    landmark model is missing (loading takes about a second, once per process), `CheckpointError`
    when YuNet's file is not the one shipped."""
    check_detector(detector)
    if detector == "yunet":
        yunet.session()
        return
    with _borrow():
        predictor(68)


_idle = queue.SimpleQueue()  # dlib detectors not in use; each call borrows one


@contextlib.contextmanager
def _borrow():
    """A dlib detector for this call alone: dlib releases the GIL while it detects, and a
    detector shared by two threads races on its scratch buffers (seen as wrong counts). Building
    one takes about 0.25 s, so they are kept for reuse, as many as threads have detected at
    once."""
    try:
        detector = _idle.get_nowait()
    except queue.Empty:
        detector = require("dlib", INSTALL_HINT, DetectorUnavailable).get_frontal_face_detector()
    try:
        yield detector
    finally:
        _idle.put(detector)


def detect_faces(
    image: Image.Image,
    upsample: int | None = None,
    points: int = 68,
    retries: Sequence[tuple[float, float]] | None = None,
    detector: str = DEFAULT_DETECTOR,
) -> list[Detection]:
    """Faces in an RGB image, left to right, each with its landmarks and UTKFace chip.
    `detector`: "yunet" (5 landmarks of its own) or "dlib" (HOG, then `points` = 68 or 5
    landmarks; `upsample`, dlib's upsample count, defaults to 1 for images whose longer side
    is at most `UPSAMPLE_MAX_SIDE` after shrinking, else 0). When the upright image has no face,
    copies turned and scaled by each of `retries` (degrees, scale; default the detector's
    `RETRIES`) are searched in turn until one has: a photo without any face costs
    `1 + len(retries)` detections."""
    check_detector(detector)
    retries = RETRIES[detector] if retries is None else retries
    found = []
    for angle, scale in ((0.0, 1.0), *retries):
        scale *= min(1.0, DETECT_MAX_SIDE / max(image.size))
        work = image
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            work = image.resize(size, RESAMPLE, reducing_gap=2.0)
        times = upsample
        if times is None:
            times = 1 if max(work.size) <= UPSAMPLE_MAX_SIDE else 0
        found = _detect_turned(work, angle, 1 / scale, detector, times, points)
        if found:
            break
    return sorted(found, key=lambda face: (face.box[0], face.box[1]))


def _find(detector: str, pixels: np.ndarray, upsample: int, points: int):
    """(box, score, (K, 2) landmarks) of each face in `pixels` by `detector`."""
    if detector == "yunet":
        return list(zip(*yunet.detect(pixels)))
    with _borrow() as hog:
        rects, scores, _ = hog.run(pixels, upsample, 0.0)
    found = []
    for r, score in zip(rects, scores):
        box = (r.left(), r.top(), r.right() + 1, r.bottom() + 1)
        found.append((box, score, np.asarray(find_landmarks(pixels, box, points))))
    return found


def _detect_turned(image, angle, scale, detector, upsample, points) -> list[Detection]:
    """Detect in `image` turned by `angle` degrees (counter-clockwise), then map boxes and
    landmarks back into the unturned image and multiply them by `scale`."""
    matrix = _turn_matrix(image.size, angle)  # turned (x, y, 1) -> image (x, y), (2, 3)
    turned = image
    if angle:
        size = _turned_size(image.size, angle)
        coefficients = tuple(matrix.ravel())
        turned = image.transform(size, Image.Transform.AFFINE, coefficients, RESAMPLE)
    found = []
    template = yunet.TEMPLATE if detector == "yunet" else FIVE_POINT_TEMPLATE
    for box, score, marks in _find(detector, np.asarray(turned), upsample, points):
        x0, y0, x1, y1 = box
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        corners = _apply(matrix, corners) * scale
        marks = _apply(matrix, np.asarray(marks)) * scale
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        landmarks = tuple((float(x), float(y)) for x, y in marks)
        found.append(
            Detection(
                box=(float(x0), float(y0), float(x1), float(y1)),
                score=float(score),
                landmarks=landmarks,
                chip=chip_of(landmarks, template),
            )
        )
    return found


def _turned_size(size: tuple[int, int], angle: float) -> tuple[int, int]:
    cos, sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    width, height = size
    return (math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos))


def _turn_matrix(size: tuple[int, int], angle: float) -> np.ndarray:
    """(2, 3) affine from a pixel of the copy turned by `angle` degrees to the pixel of the
    image it shows (PIL's AFFINE convention); the centres of the two coincide."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    turned = _turned_size(size, angle)
    rotation = np.array([[cos, sin], [-sin, cos]])
    centre, turned_centre = np.asarray(size) / 2, np.asarray(turned) / 2
    return np.hstack([rotation, (centre - rotation @ turned_centre)[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def utkface_crop(box: Box, detector: str = DEFAULT_DETECTOR) -> Box:
    """`detector`'s box -> the square crop UTKFace would have made around that face, on
    average (`FRAMING`), when no landmarks are at hand (a face's own `chip` is exact)."""
    scale, (shift_x, shift_y) = FRAMING[detector]
    left, top, right, bottom = box
    side = max(right - left, bottom - top)
    cx = (left + right) / 2 + shift_x * side
    cy = (top + bottom) / 2 + shift_y * side
    half = scale * side / 2
    return (cx - half, cy - half, cx + half, cy + half)


def crop_face(image: Image.Image | np.ndarray, crop: Chip | Box, size: int) -> np.ndarray:
    """Cut `crop` (a face's `chip`, or an upright square box) out of `image` as UTKFace did (a
    200 px chip, black outside the photo) and resize it to `(size, size, 3)` uint8 with the
    resize `images.load_rgb` applies to UTKFace's crops, so a photo's face reaches the model as
    a dataset crop does."""
    chip = crop if isinstance(crop, Chip) else Chip(tuple(float(v) for v in crop), 0.0)
    pixels = extract_chip(np.asarray(image), chip, CHIP_SIZE)
    return square_resize(Image.fromarray(pixels), size)


def looks_aligned(
    image: Image.Image, detector: str = DEFAULT_DETECTOR
) -> tuple[bool, list[Detection]]:
    """`--faces auto`: is this image already a UTKFace-like crop? Returns the answer and the
    faces found (reused when it is not). A roughly square image is aligned when a face's crop
    covers the frame (IoU >= `ALIGNED_MIN_IOU`), or when it is small and no face is found (a
    crop the detector misses, e.g. a profile); anything else goes to detection."""
    width, height = image.size
    if max(width, height) > SQUARE_RATIO * min(width, height):
        return False, detect_faces(image, detector=detector)
    frame = (0.0, 0.0, float(width), float(height))
    # A crop's face fills most of it, so the fast pass without upsampling or turning finds it.
    found = detect_faces(image, upsample=0, retries=(), detector=detector)
    if not found:
        found = detect_faces(image, detector=detector)
    if any(box_iou(face.crop, frame) >= ALIGNED_MIN_IOU for face in found):
        return True, found
    return (not found and max(width, height) <= ALIGNED_MAX_SIDE), found


def box_iou(a: Box, b: Box) -> float:
    across = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    down = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = across * down
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def measure_framing(
    crops: Iterable[np.ndarray], seed: int = 0, detector: str = DEFAULT_DETECTOR
) -> dict[str, float]:
    """Measure `detector`'s box-to-crop framing (`FRAMING`) on real UTKFace crops. Each crop
    is resized to a random side in 100..320 px and pasted at a random place on a grey canvas,
    so that a detector's coarse grid of window positions and sizes averages out. Returns
    `scale` (mean crop side / box's longer side), `shift_x`, `shift_y` (mean crop centre - box
    centre, in those sides) and `found` (fraction of crops with a face found)."""
    rng = np.random.default_rng(seed)
    rows = []
    count = 0
    for crop in crops:
        count += 1
        side = int(rng.integers(100, 321))
        left, top = (int(v) for v in rng.integers(side // 4, side, size=2))
        canvas = Image.new("RGB", (left + 2 * side, top + 2 * side), (127, 127, 127))
        canvas.paste(Image.fromarray(crop).resize((side, side), RESAMPLE), (left, top))
        found = detect_faces(canvas, retries=(), detector=detector)
        if not found:
            continue
        x0, y0, x1, y1 = max(found, key=lambda face: face.box[2] - face.box[0]).box
        width = max(x1 - x0, y1 - y0)
        rows.append(
            (
                side / width,
                (left + side / 2 - (x0 + x1) / 2) / width,
                (top + side / 2 - (y0 + y1) / 2) / width,
            )
        )
    if not rows:
        raise ValueError("no face found in any crop")
    values = np.asarray(rows)
    return {
        "scale": float(values[:, 0].mean()),
        "shift_x": float(values[:, 1].mean()),
        "shift_y": float(values[:, 2].mean()),
        "found": len(rows) / count,
    }


def measure_template(crops: Iterable[np.ndarray], detector: str = "dlib") -> np.ndarray:
    """Mean position `(5, 2)` of `detector`'s 5 landmarks in 200 px UTKFace crops (crops
    without a face are left out): dlib's 5-point model inside the box HOG gives on each crop
    (`landmarks.FIVE_POINT_TEMPLATE`); YuNet's on each crop pasted in the middle of a grey
    canvas twice its side (`yunet.TEMPLATE`)."""
    found = []
    for crop in crops:
        if detector == "dlib":
            faces = detect_faces(
                Image.fromarray(crop), upsample=0, points=5, retries=(), detector="dlib"
            )
            if faces:
                found.append(faces[0].landmarks)
            continue
        margin = crop.shape[0] // 2
        canvas = Image.new("RGB", (4 * margin, 4 * margin), (127, 127, 127))
        canvas.paste(Image.fromarray(crop), (margin, margin))
        faces = detect_faces(canvas, retries=(), detector=detector)
        if faces:
            face = max(faces, key=lambda face: face.score)
            found.append(np.asarray(face.landmarks) - margin)
    if not found:
        raise ValueError("no face found in any crop")
    return np.asarray(found).mean(axis=0)
