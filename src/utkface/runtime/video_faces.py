"""Age and gender of every face in a video or camera stream, followed over time.

    predictor = Predictor.from_checkpoint("best.pt")
    for result in predictor.predict_video("clip.mp4"):            # or frames: arrays / PIL
        for face in result.faces:
            face.track, face.face.age, face.smoothed.age, face.smoothed.gender

Each frame: faces are found by the detector (`faces.detect_faces`, on every `every`-th frame,
default `DEFAULT_EVERY`; in between, each track's box is extrapolated by `tracking.Tracker`),
each face is cropped like UTKFace and run through the predictor's backend, and the track's
running estimate is updated. A `TrackedFace` carries both the frame's own estimate (`face`) and
the track's smoothed one (`smoothed`). Files in, files out (`utkface predict clip.mp4`) is
`video_files.py`; decoding is `video.py` (PyAV); this module needs no PyAV when given frames.

The detector is the predictor's (`Predictor.detector`: YuNet by default, or dlib). dlib runs
without upsampling by default (`upsample=0`): it finds faces from about 80 px and costs ~20-50 ms
on a 640x480 frame against ~90 ms upsampled (2-core EPYC, measured); frames larger than
`faces.DETECT_MAX_SIDE` are shrunk before detection and boxes are mapped back. Between
detections a tracked box is cut with the detector's average framing (`faces.utkface_crop`).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from utkface.runtime import faces as face_finder
from utkface.runtime.errors import OptionError
from utkface.runtime.results import FaceResult, fill_face
from utkface.runtime.tracking import Estimate, Tracker

DEFAULT_FPS = 25.0  # time base for frames given as arrays without times
# Detect on every 2nd frame, track in between: on 640x480 clips of real crops moving ~10 px per
# frame, boxes keep IoU 0.95-0.97 with per-frame detection and smoothed ages stay within 0.16
# years of it, for 1.3-2x the frames/s (BENCHMARKS.md, "Video"); every 3rd: IoU 0.92-0.96.
DEFAULT_EVERY = 2


@dataclass
class TrackedFace:
    track: int  # track id, 1, 2, ... within one video or camera session
    face: FaceResult  # this frame's own estimate (box, age, interval, gender, detector score)
    smoothed: FaceResult  # the track's running estimate so far (same box)
    detected: bool = True  # the box is the detector's (False: extrapolated by the tracker)


@dataclass
class FrameResult:
    frame: int  # 0-based index in the stream
    time: float  # seconds
    width: int
    height: int
    faces: list[TrackedFace] = field(default_factory=list)
    detected: bool = True  # the detector ran on this frame


class FaceStream:
    """One stream's state: the predictor and its tracker. `step(image, time)` per frame."""

    def __init__(
        self, predictor, every: int = DEFAULT_EVERY, upsample: int = 0, tracker=None, **options
    ):
        if every < 1:
            raise OptionError(f"every must be at least 1, got {every}")
        self.detector = predictor.detector
        face_finder.require_detector(self.detector)  # before the first frame, naming the extra
        self.predictor, self.every, self.upsample = predictor, every, upsample
        self.tracker = tracker or Tracker(**options)
        self.count, self.last_time = 0, -math.inf
        self._lock = threading.Lock()  # a camera session's frames may arrive on two threads

    def step(self, image: np.ndarray | Image.Image, time: float) -> FrameResult:
        """`time` in seconds; a time before the previous frame's counts as that frame's."""
        with self._lock:
            self.last_time = max(self.last_time, time)
            return self._step(image, self.last_time)

    def _step(self, image: np.ndarray | Image.Image, time: float) -> FrameResult:
        picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
        if picture.mode != "RGB":  # frames are RGB already: no copy of every frame for nothing
            picture = picture.convert("RGB")
        detect = self.count % self.every == 0
        result = FrameResult(self.count, time, picture.width, picture.height, detected=detect)
        self.count += 1
        if detect:
            # No search of turned copies: a frame without a face would cost ~7 detections,
            # and the next frames will see the face anyway.
            found = face_finder.detect_faces(
                picture, upsample=self.upsample, retries=(), detector=self.detector
            )
            ids = self.tracker.match(time, [face.box for face in found])
            located = [(i, face.box, face.score) for i, face in zip(ids, found)]
        else:
            located = [
                (i, box, None) for i, box in self.tracker.predict(time) if _inside(box, picture)
            ]
        if not located:
            return result
        size, pixels = self.predictor.size, np.asarray(picture)  # one array for every face
        crops = np.stack(
            [
                face_finder.crop_face(pixels, face_finder.utkface_crop(box, self.detector), size)
                for _, box, _ in located
            ]
        )  # (K, S, S, 3) uint8
        outputs = self.predictor.backend(crops)
        for row, (track, box, score) in enumerate(located):
            values = {key: value[row] for key, value in outputs.items()}
            face = FaceResult(box=tuple(float(v) for v in box), score=score)
            fill_face(face, values)
            smoothed = _smoothed(face.box, self.tracker.observe(track, time, box, values))
            result.faces.append(TrackedFace(track, face, smoothed, detected=detect))
        return result


def predict_video(
    predictor,
    source: str | os.PathLike | Iterable,
    every: int = DEFAULT_EVERY,
    max_frames: int | None = None,
    fps: float = DEFAULT_FPS,
    **options,
) -> Iterator[FrameResult]:
    """Per-frame results for a video file (decoded by `video.read_frames`; a damaged file
    raises `video.VideoError` after the frames before the damage) or for an iterable of frames
    (`(H, W, 3)` RGB arrays or PIL images, `fps` apart). `options` go to `FaceStream`
    (`upsample`) and `tracking.Tracker` (`iou_threshold`, `max_missed_s`, `tau_s`)."""
    stream = FaceStream(predictor, every=every, **options)
    if isinstance(source, (str, os.PathLike)):
        from utkface.runtime.video import read_frames

        frames = ((frame.time, frame.image) for frame in read_frames(source, max_frames))
    else:
        frames = ((i / fps, image) for i, image in enumerate(itertools.islice(source, max_frames)))
    for time, image in frames:
        yield stream.step(image, time)


def _smoothed(box, estimate: Estimate) -> FaceResult:
    face = FaceResult(box=box)
    values = {key: getattr(estimate, key) for key in ("age", "age_low", "age_high", "gender_prob")}
    fill_face(face, {key: value for key, value in values.items() if value is not None})
    return face


def _inside(box, picture: Image.Image) -> bool:
    """Whether the centre of an extrapolated box is still in the frame."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return 0 <= cx < picture.width and 0 <= cy < picture.height
