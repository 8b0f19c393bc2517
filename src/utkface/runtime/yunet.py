"""YuNet, the built-in face detector: a 232 KB ONNX file in the package, run by ONNX Runtime and
decoded in numpy, so `pip install .` finds faces in whole photos without dlib.

    boxes, scores, points = detect(pixels)   # (H, W, 3) uint8 RGB -> (K, 4), (K,), (K, 5, 2)

Model: `face_detection_yunet_2023mar.onnx` from OpenCV Zoo (MIT, Copyright (c) 2020 Shiqi Yu;
`weights/face_detection_yunet_2023mar.LICENSE.txt` beside it; "YuNet: A tiny millisecond-level
face detector", Machine Intelligence Research, 2023), the zoo's bytes unchanged: `SHA256` is
checked every time it is loaded. Input `input` float32 `(1, 3, 640, 640)`, BGR, 0..255, the size
fixed in the file, so a photo is letterboxed into 640x640 (scaled to fit, padded right and
below with black) and the results scaled back. Outputs, per stride s in 8, 16, 32 over the
(640/s)^2 grid cells in row-major order: `cls_s`, `obj_s` (already sigmoid; score =
sqrt(cls * obj)), `bbox_s` (dx, dy, log w, log h in stride units: centre = (col + dx, row + dy)
* s, size = exp(.) * s), `kps_s` (5 x (dx, dy) in stride units). Then a score threshold and
greedy IoU non-maximum suppression, as OpenCV's `cv2.FaceDetectorYN` does (an earlier check
matched it to 1.2e-4 on 20 inputs).

Landmarks, in this order: right eye, left eye, nose tip, right mouth corner, left mouth corner
(the subject's right: the left of the image for a frontal face). `faces.py` maps them onto
UTKFace's framing with `TEMPLATE`.
"""

from __future__ import annotations

import os
import threading
from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

from utkface.runtime.errors import CheckpointError, require
from utkface.runtime.released import verify_sha256

FILE = "face_detection_yunet_2023mar.onnx"
LICENSE_FILE = "face_detection_yunet_2023mar.LICENSE.txt"  # beside it, shipped with it
SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
SIDE = 640  # the input side fixed in the file
STRIDES = (8, 16, 32)
OUTPUT_NAMES = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)
# Chosen on 300 val-split crops pasted into photos (`python -m benchmarks.pasted --split val
# --threshold T`): found 100% at 0.6 and 0.75, 93.0% at 0.9 (OpenCV demos' threshold).
SCORE_THRESHOLD = 0.6
NMS_IOU = 0.3  # OpenCV's default
# Mean position of YuNet's 5 points in 200 px UTKFace crops (order above): `python -m
# benchmarks.pasted --template` (`faces.measure_template(crops, "yunet")`) over 1,000 crops of
# the train split (every 17th, seed 0's split), each pasted on a grey canvas twice its side;
# rounded to 0.1 px.
TEMPLATE = (
    (60.4, 56.8),
    (137.4, 57.1),
    (98.0, 102.9),
    (65.0, 136.5),
    (132.6, 136.7),
)
ORT_HINT = "ONNX Runtime is missing: pip install onnxruntime"

_lock = threading.Lock()
_sessions: dict[int, object] = {}  # process id -> session (a forked worker builds its own)


def path() -> Path:
    """Where the model file is in this installation."""
    return Path(str(files("utkface.runtime").joinpath("weights", FILE)))


def session():
    """This process's ONNX Runtime session, built on first use after checking the file's
    SHA-256 (`CheckpointError` for a changed file). One intra-op thread: detection runs in
    `Predictor`'s worker pool, one photo per worker."""
    with _lock:
        pid = os.getpid()
        if pid not in _sessions:
            _sessions[pid] = load(path())
        return _sessions[pid]


def load(source: str | os.PathLike, sha256: str = SHA256):
    """A session for the YuNet file at `source`, refused unless it has the digest `sha256`."""
    ort = require("onnxruntime", ORT_HINT)
    try:
        data = Path(source).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{source}: cannot read the face detector ({error})") from error
    verify_sha256(source, data, sha256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def detect(
    pixels: np.ndarray, threshold: float | None = None, runner=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces in an `(H, W, 3)` uint8 RGB image, surest first: boxes `(K, 4)` (left, top,
    right, bottom), scores `(K,)` in 0..1, landmarks `(K, 5, 2)`, all in the image's pixels.
    `threshold`: the lowest score kept (default `SCORE_THRESHOLD`); `runner`: a session to use
    instead of the package's (tests)."""
    height, width = pixels.shape[:2]
    scale = SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    canvas = np.zeros((SIDE, SIDE, 3), np.float32)  # letterbox: padded right and below
    canvas[: size[1], : size[0]] = resized[..., ::-1]  # RGB -> BGR
    outputs = (runner or session()).run(None, {"input": canvas.transpose(2, 0, 1)[None]})
    threshold = SCORE_THRESHOLD if threshold is None else threshold
    boxes, scores, points = decode(dict(zip(OUTPUT_NAMES, outputs)), threshold)
    keep = nms(boxes, scores, NMS_IOU)
    return boxes[keep] / scale, scores[keep], points[keep] / scale


def decode(outputs: dict[str, np.ndarray], threshold: float):
    """The raw outputs (see the module docstring) -> boxes `(N, 4)`, scores `(N,)` and
    landmarks `(N, 5, 2)` in the 640x640 input's pixels, for the cells scoring >= `threshold`."""
    boxes, scores, points = [], [], []
    for stride in STRIDES:
        cols = SIDE // stride
        score = np.sqrt(
            np.clip(outputs[f"cls_{stride}"][0, :, 0] * outputs[f"obj_{stride}"][0, :, 0], 0, 1)
        )
        cells = np.flatnonzero(score >= threshold)
        grid = np.stack([cells % cols, cells // cols], axis=1).astype(np.float32)  # (n, 2) col, row
        bbox = outputs[f"bbox_{stride}"][0, cells]  # (n, 4)
        centre = (grid + bbox[:, :2]) * stride
        half = np.exp(bbox[:, 2:]) * stride / 2
        boxes.append(np.hstack([centre - half, centre + half]))
        kps = outputs[f"kps_{stride}"][0, cells].reshape(-1, 5, 2)
        points.append((grid[:, None, :] + kps) * stride)
        scores.append(score[cells])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, surest first."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        across = np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(
            boxes[best, 0], boxes[rest, 0]
        )
        down = np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(
            boxes[best, 1], boxes[rest, 1]
        )
        inter = np.clip(across, 0, None) * np.clip(down, 0, None)
        overlap = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)
