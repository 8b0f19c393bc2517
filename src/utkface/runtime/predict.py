"""Age and gender for every face in any photo: the `Predictor` API and `utkface predict`.

    predictor = Predictor.from_pretrained()                         # the released model
    predictor = Predictor.from_checkpoint("runs/x/best.pt")          # or your own; loaded once
    result = predictor.predict("photo.jpg")                         # one input -> Prediction
    results = predictor.predict(["a.png", pil_image, array])        # many -> list, same order
    for face in result.faces:
        face.box, face.age, face.age_low, face.age_high, face.gender, face.gender_prob

Running over files and folders (`utkface predict`) is `predict_files.py`; videos and camera
frames, faces followed into tracks with smoothed estimates (`predictor.predict_video(...)`), are
`video_faces.py`.

Inputs are paths, bytes, PIL images or numpy arrays, all decoded by `images.open_rgb` (EXIF
orientation, any mode and bit depth, decompression-bomb limit). `faces` says where the faces are:
`aligned` - the input is already a UTKFace-like crop (centre-cropped and resized like the
training data); `detect` - find every face (`faces.detect_faces`) and cut a UTKFace-style crop
around each; `auto` - decide per image (`faces.looks_aligned`). `detector` finds them: `yunet`
(the default, shipped in the package) or `dlib` (extra `utkface[detect]`). An input that cannot
be read gives a `Prediction` with `error` set and the others go on. Inputs are decoded and
faces found in a thread pool (processes with `processes=True`, as `utkface predict` does);
crops from many inputs are batched through the model.

`gender_prob` is P(female), as everywhere in this project; the confidence in the predicted
`gender` is `max(gender_prob, 1 - gender_prob)`. `age_low`/`age_high` are the 10th/90th
percentiles of the predicted age distribution (None for a model that regresses one number).

The model runs behind a backend (`backends.py`): any callable `uint8 (B, S, S, 3) -> dict of
numpy predictions` (keys of `model_io.OUTPUT_NAMES`) with `.preprocess` (`.size`) and `.meta`.
An ONNX export runs on ONNX Runtime (`onnx_backend.OnnxBackend`), in every install: the released
model is one. A training checkpoint runs on PyTorch, or is exported in memory for `onnx`; both
need the extra `utkface[train]`.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from utkface.runtime import faces as face_finder
from utkface.runtime import released
from utkface.runtime.backends import default_backend, load_backend
from utkface.runtime.errors import OptionError
from utkface.runtime.images import ImageError, ImageSource, open_rgb, square_resize
from utkface.runtime.lifeline import Lifeline
from utkface.runtime.results import FaceResult, Prediction, fill_face

FACE_MODES = ("auto", "detect", "aligned")


@dataclass
class Prepared:
    prediction: Prediction
    crops: np.ndarray  # (K, S, S, 3) uint8, one per face in `prediction.faces`


class Predictor:
    """Batched age/gender prediction with one loaded model (see the module docstring)."""

    def __init__(
        self,
        backend,
        faces: str = "auto",
        batch_size: int = 16,
        workers: int | None = None,
        backend_name: str = "custom",
        processes: bool = False,
        detector: str = face_finder.DEFAULT_DETECTOR,
    ):
        check_mode(faces)
        face_finder.check_detector(detector)
        if batch_size < 1:
            raise OptionError(f"batch_size must be at least 1, got {batch_size}")
        self.backend, self.backend_name = backend, backend_name
        self.meta, self.size = backend.meta, backend.preprocess.size
        self.faces, self.batch_size, self.detector = faces, batch_size, detector
        # Threads suit a server (the GIL is released while decoding); `processes` puts
        # decoding and detection on every core for big file runs (`utkface predict`).
        self.processes = processes
        cores = os.cpu_count() or 1
        self.workers = workers or (cores if processes else min(4, cores))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        backend: str | None = None,
        threads: int | None = None,
        **kwargs,
    ) -> Predictor:
        """The model in `path`, run by `backend` (default: onnx for an `.onnx` export, torch
        for a training checkpoint; see `backends.load_backend`); `kwargs` are `Predictor`'s."""
        backend = backend or default_backend(path)
        loaded = load_backend(path, backend, device=device, threads=threads)
        return cls(loaded, backend_name=backend, **kwargs)

    @classmethod
    def from_pretrained(cls, device: str = "cpu", backend: str = "onnx", **kwargs) -> Predictor:
        """The released model shipped in the package (`released.py`, MODEL_CARD.md), its
        SHA-256 checked when loaded: the ONNX export on ONNX Runtime, or with `backend="torch"`
        its PyTorch weights (extra `utkface[train]`); the options are `from_checkpoint`'s."""
        path = released.path(backend)
        return cls.from_checkpoint(path, device=device, backend=backend, **kwargs)

    def predict(self, images, faces: str | None = None) -> Prediction | list[Prediction]:
        """One input (path, bytes, PIL image, `(H, W[, C])` array) -> one `Prediction`; a list,
        tuple or `(N, H, W, C)` array -> a list in the same order."""
        single = isinstance(images, (str, os.PathLike, bytes, Image.Image)) or (
            isinstance(images, np.ndarray) and images.ndim < 4
        )
        results = list(self.predict_iter([images] if single else images, faces))
        return results[0] if single else results

    def predict_iter(
        self, images: Iterable[ImageSource], faces: str | None = None
    ) -> Iterator[Prediction]:
        """Predictions in input order, streamed: at most a few batches are in memory."""
        mode = faces or self.faces
        check_mode(mode)
        if mode != "aligned":
            face_finder.require_detector(self.detector)  # fail before the run, naming the extra
        # Inputs in flight: the workers decode the next batches while the model runs on one
        # (with 4 in flight they waited through each forward pass; BENCHMARKS.md, issue 21).
        window = max(2 * self.workers, 4 * self.batch_size)
        with self._pool() as pool:
            pending: list[Prepared] = []
            queued: deque = deque()
            for index, image in enumerate(images):
                source = str(image) if isinstance(image, (str, os.PathLike)) else f"<input {index}>"
                queued.append(
                    pool.submit(prepare_input, image, mode, self.size, source, self.detector)
                )
                while len(queued) >= window or (queued and queued[0].done()):
                    pending.append(queued.popleft().result())
                    # a batch of crops, or as many inputs: those without a face (unreadable,
                    # or no face found) must not pile up here waiting for crops
                    crops = sum(len(item.crops) for item in pending)
                    if crops >= self.batch_size or len(pending) >= self.batch_size:
                        yield from self._finish(pending)
                        pending = []
            for future in queued:
                pending.append(future.result())
            yield from self._finish(pending)

    def predict_video(self, source, **options):
        """Per-frame `video_faces.FrameResult`s for a video file (extra `utkface[video]`) or an
        iterable of frames, faces followed into tracks with smoothed estimates; see
        `video_faces.predict_video` for the options (`every`, `max_frames`, ...)."""
        from utkface.runtime.video_faces import predict_video

        return predict_video(self, source, **options)

    def _pool(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(self.workers, thread_name_prefix="utkface-decode")
        # fork where there is one (as `data.prepare`): workers start at once, without
        # importing torch again; they only decode and detect. They are started by the first
        # `submit`, on the thread that made the pool (`predict_iter` does both before it
        # yields), which is what `Lifeline.here` needs to know.
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_start_worker, initargs=(Lifeline.here(),)
        )

    def _finish(self, pending: list[Prepared]) -> Iterator[Prediction]:
        """Run the model over every crop of `pending`, fill in the faces, yield in order."""
        crops = np.concatenate([item.crops for item in pending]) if pending else None
        if crops is not None and len(crops):
            chunks = [
                self.backend(crops[i : i + self.batch_size])
                for i in range(0, len(crops), self.batch_size)
            ]
            outputs = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}
            row = 0
            for item in pending:
                for face in item.prediction.faces:
                    fill_face(face, {key: value[row] for key, value in outputs.items()})
                    row += 1
        for item in pending:
            yield item.prediction


def prepare_input(
    src: ImageSource,
    mode: str,
    size: int,
    source: str,
    detector: str = face_finder.DEFAULT_DETECTOR,
) -> Prepared:
    """Decode one input and cut its `size` px face crops (runs in a worker thread or process;
    the Ray path runs it in tasks), faces found by `detector`. `source` names the input in its
    `Prediction`."""
    empty = np.zeros((0, size, size, 3), np.uint8)
    try:
        image = open_rgb(src)
        prediction = Prediction(source, width=image.width, height=image.height)
        aligned, found = (mode == "aligned", [])
        if mode == "auto":
            aligned, found = face_finder.looks_aligned(image, detector)
        elif mode == "detect":
            found = face_finder.detect_faces(image, detector=detector)
        if aligned:
            # The very pixels of training: `images.load_rgb` is `square_resize(open_rgb)`.
            # Refuses an image too small to be a face.
            crops = square_resize(image, size)[None]
        else:
            pixels = np.asarray(image)
            crops = [face_finder.crop_face(pixels, face.chip, size) for face in found]
    except ImageError as error:
        return Prepared(Prediction(source, error=str(error)), empty)
    except Exception as error:  # a decoder bug on one odd file must not stop the run
        return Prepared(Prediction(source, error=f"{type(error).__name__}: {error}"), empty)
    if aligned:
        prediction.mode = "aligned"
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        prediction.faces = [FaceResult(box=(left, top, left + side, top + side))]
        return Prepared(prediction, crops)
    prediction.mode = "detect"
    prediction.faces = [FaceResult(box=face.box, score=face.score) for face in found]
    return Prepared(prediction, np.stack(crops) if crops else empty)


def _start_worker(lifeline: Lifeline) -> None:
    """A pool worker ends with the process that made it, however that ended (`lifeline.py`).
    Ctrl-C reaches the whole process group: workers leave it to the main process, which
    writes out what is finished and stops them."""
    lifeline.hold()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_mode(faces: str) -> None:
    """`OptionError` unless `faces` is one of `FACE_MODES`."""
    if faces not in FACE_MODES:
        raise OptionError(f"unknown faces mode {faces!r}; choose one of {', '.join(FACE_MODES)}")


# ---- files in, files out: the library side of `utkface predict` --------------------------------
