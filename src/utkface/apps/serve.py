"""The web demo: a JSON API and a page that annotates an uploaded photo.

    utkface serve [--checkpoint model.onnx|best.pt] [--host 127.0.0.1] [--port 8000]
                  [--backend onnx|torch] [--workers 1] [--concurrency 1] [--queue 16]

Without `--checkpoint` it serves the released model's ONNX export on ONNX Runtime (no PyTorch,
no export at start); a training checkpoint runs on PyTorch (`--backend onnx` exports it in
memory first), extra `utkface[train]`.

- `GET /`: a page where a person drops or chooses a photo and sees the faces boxed and labelled
  (drawn client-side on a canvas from the JSON answer).
- `POST /api/predict`: the image as the raw request body (`Content-Type: image/jpeg`, ...) or as
  the `file` field of a multipart form (`curl -F file=@photo.jpg`). Answers
  `{"image": {width, height, format}, "mode", "faces": [{box, age, age_interval, gender,
  gender_probability, female_probability, race?, race_probability?, detector_score?}],
  "backend", "elapsed_ms"}` with `box` = `[left, top, right, bottom]` in pixels of the
  EXIF-rotated photo, `age_interval` the 10th..90th percentile in years, `gender_probability`
  the confidence in `gender` and `female_probability` P(female). `mode` is "aligned" when the
  photo was taken as one UTKFace-like face crop, "detect" when faces were searched for.
- `POST /api/track?session=ID`: the camera mode of the page; one frame, faces tracked over the
  session's frames on the server, answered with each track's smoothed estimate (see
  `_add_camera_route`).
- `GET /api/info`: the model, backend and limits.

Bad uploads get a 4xx JSON answer `{"error": code, "detail": message}`: 400 not an image or
corrupt, 408 upload too slow, 413 request or image too large, 415 type not accepted, 422 image
too small to hold a face. A busy server answers 503 with `Retry-After` (`serve_limits.py`: each
worker process runs `concurrency` predictions at once, lets `queue` more wait, and refuses the
rest before reading their bodies). The request body is counted as it streams and refused past
`max_bytes`; the pixel count is read from the header before decoding. Uploads are kept in memory
(a multipart file part larger than 1 MB is spooled by Starlette to the system temp dir and
deleted); nothing else is written. Each worker process loads the model once; predictions run in
worker threads.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from utkface.apps.serve_limits import Admission, ApiError, BodyLimit
from utkface.runtime import images as image_io
from utkface.runtime.errors import OptionError
from utkface.runtime.lifeline import Lifeline

if TYPE_CHECKING:
    from utkface.runtime.predict import FaceResult, Predictor

MAX_BYTES = 10 * 2**20  # request body limit: a large phone photo is 5-8 MB
MAX_PIXELS = min(image_io.MAX_PIXELS, 40_000_000)  # a 48 MP phone photo is refused, 40 MP is not
# declared content type -> the decoded format it must be (the bytes are checked, not the name)
ACCEPTED_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
}
UNDECLARED = ("", "application/octet-stream")  # formats are sniffed from the bytes instead
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'"
    ),
}


WORKER_OPTIONS = "UTKFACE_SERVE_OPTIONS"  # create_app's arguments, as JSON, for worker processes


def create_app(
    model: str | os.PathLike | Predictor,
    *,
    backend: str | None = None,
    faces: str = "auto",
    detector: str | None = None,
    threads: int | None = None,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    accepted_types: dict[str, str] | None = None,
    admission: Admission | None = None,
) -> FastAPI:
    """The app, around a `Predictor` or a model file (loaded here, once, with `backend`,
    `faces`, `detector` and `threads`, see `predict.Predictor`). `admission` bounds the
    requests at once and their waiting times (default: `serve_limits.Admission()`)."""
    if isinstance(model, (str, os.PathLike)):
        from utkface.runtime.predict import Predictor

        chosen = {"detector": detector} if detector else {}  # else the Predictor's default
        predictor = Predictor.from_checkpoint(
            model, device="cpu", backend=backend, threads=threads, faces=faces, **chosen
        )
    else:
        predictor = model
    accepted = dict(accepted_types or ACCEPTED_TYPES)
    if max_pixels > image_io.MAX_PIXELS:
        raise OptionError(f"max_pixels {max_pixels} is above images.MAX_PIXELS")
    page = resources.files("utkface.apps").joinpath("static/index.html").read_text(encoding="utf-8")
    gate = admission or Admission()
    info = {
        "model": getattr(predictor, "meta", {}).get("model"),
        "backend": getattr(predictor, "backend_name", backend),
        "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels, **gate.limits()},
        "accepted_types": sorted(accepted),
    }

    app = FastAPI(title="utkface", description="Age and gender from faces", docs_url="/api/docs")
    app.state.predictor, app.state.admission = predictor, gate
    app.add_middleware(BodyLimit, max_bytes=max_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def api_info() -> dict:
        return info

    @app.post("/api/predict")
    async def api_predict(request: Request) -> dict:
        result, found, elapsed_ms = await _on_upload(
            request, gate, accepted, max_pixels, predictor.predict
        )
        if result.error:
            raise ApiError(400, "corrupt_image", f"the image cannot be decoded: {result.error}")
        return {
            "image": {"width": result.width, "height": result.height, "format": found},
            "mode": result.mode,  # "aligned": taken as one face crop; "detect": faces searched
            "faces": [_face_json(face) for face in result.faces],
            "backend": info["backend"],
            "elapsed_ms": elapsed_ms,
        }

    _add_camera_route(app, predictor, accepted, max_pixels, gate)
    return app


SESSION_PATTERN = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _add_camera_route(app: FastAPI, predictor, accepted, max_pixels, gate: Admission) -> None:
    """`POST /api/track?session=ID`: one camera frame (an image body, as for /api/predict);
    faces are tracked across the session's frames on the server (`video_faces.FaceStream`, one
    per session in a bounded `tracking.SessionStore`). Answers `{"image", "faces": [{track,
    box, age, age_interval, gender, ...: the track's smoothed estimate; frame: the same keys for
    this frame's own estimate}], "elapsed_ms"}`."""
    from utkface.runtime.tracking import SessionStore
    from utkface.runtime.video_faces import FaceStream

    # A camera sends a few frames a second: too far apart to carry boxes over; detect on each.
    sessions = SessionStore(lambda: FaceStream(predictor, every=1))
    app.state.camera_sessions = sessions

    def track(stream: FaceStream, data: bytes, frame_time: float | None):
        try:
            image = image_io.open_rgb(data)
        except image_io.ImageError as error:
            raise ApiError(400, "corrupt_image", f"the image cannot be decoded: {error}") from error
        return stream.step(image, time.monotonic() if frame_time is None else frame_time)

    @app.post("/api/track")
    async def api_track(request: Request, session: str = "", t: float | None = None) -> dict:
        # `t`: the frame's capture time in seconds on the page's clock, so tracks and smoothing
        # follow the camera, not the server's load (a slow answer does not end the tracks)
        if not SESSION_PATTERN.fullmatch(session):
            raise ApiError(400, "bad_session", "session must be 8-64 letters, digits, - or _")
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise ApiError(400, "bad_time", "t must be a capture time in seconds, >= 0")
        result, found, elapsed_ms = await _on_upload(
            request, gate, accepted, max_pixels, lambda data: track(sessions.get(session), data, t)
        )
        faces = [
            {**_face_json(face.smoothed), "track": face.track, "frame": _face_json(face.face)}
            for face in result.faces
        ]  # the track's smoothed estimate, and under "frame" this frame's own
        return {
            "image": {"width": result.width, "height": result.height, "format": found},
            "faces": faces,
            "elapsed_ms": elapsed_ms,
        }


async def _on_upload(request: Request, gate: Admission, accepted, max_pixels, work):
    """What both image routes do: admitted by `gate` (503 past its bound, before the body is
    read), the upload read within its timeout, the image's header checked, then `work(bytes)`
    run in the gate's pool. Returns `(work's result, image format, milliseconds of work)`."""
    async with gate.admit():
        data, declared = await gate.upload(_read_upload(request, accepted))
        found = _check_image(data, declared, accepted, max_pixels)
        started = time.perf_counter()
        result = await gate.run(work, data)
    return result, found, round((time.perf_counter() - started) * 1000, 1)


async def _read_upload(request: Request, accepted: dict[str, str]) -> tuple[bytes, str]:
    """The uploaded bytes and their declared content type, from a raw body or a form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "no_file", "send the image as the form field 'file'")
            data = await upload.read()
            declared = (upload.content_type or "").split(";")[0].strip().lower()
        finally:
            await form.close()
    else:
        data, declared = await request.body(), content_type
    if declared not in accepted and declared not in UNDECLARED:
        raise ApiError(
            415,
            "unsupported_type",
            f"{declared} is not accepted; send one of {', '.join(sorted(accepted))}",
        )
    if not data:
        raise ApiError(400, "empty", "the upload is empty (0 bytes)")
    return data, declared


def _check_image(data: bytes, declared: str, accepted: dict[str, str], max_pixels: int) -> str:
    """The image format, after checking it and the pixel count from the header alone. The
    bytes themselves go to the predictor, which decodes them exactly as the dataset was."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            found, (width, height) = header.format, header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ApiError(400, "not_an_image", "the upload is not an image file") from error
    except Image.DecompressionBombError as error:
        raise ApiError(413, "too_many_pixels", f"the image is too large: {error}") from error
    allowed = {accepted[declared]} if declared in accepted else set(accepted.values())
    if found not in allowed:
        raise ApiError(
            415,
            "unsupported_type",
            f"the file is {found}, not {' or '.join(sorted(allowed))}",
        )
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.0f}",
        )
    try:  # refused before it takes a slot: the predictor would refuse it too
        image_io.check_face_size(width, height)
    except image_io.ImageError as error:
        raise ApiError(422, "too_small", str(error)) from error
    return found


def _face_json(face: FaceResult) -> dict:
    """A `FaceResult` for the page: rounded numbers, `gender_probability` = confidence in
    `gender`, `female_probability` = P(female)."""
    out: dict = {"box": [round(float(v)) for v in face.box]}
    if face.age is not None:
        out["age"] = round(face.age, 1)
    if face.age_low is not None:
        out["age_interval"] = [round(face.age_low), round(face.age_high)]
    if face.gender_prob is not None:
        out["gender"] = face.gender
        out["gender_probability"] = round(max(face.gender_prob, 1 - face.gender_prob), 4)
        out["female_probability"] = round(face.gender_prob, 4)
    if face.race is not None:
        out["race"], out["race_probability"] = face.race, round(face.race_prob, 4)
    if face.score is not None:
        out["detector_score"] = round(face.score, 3)
    return out


def run(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str | None = None,
    workers: int = 1,
    limits: dict | None = None,
    **options,
) -> None:
    """Serve until interrupted, with `workers` processes (each loads the model once and admits
    requests by `limits`, the keyword arguments of `serve_limits.Admission`). `options` are
    `create_app`'s other keyword arguments."""
    import uvicorn

    if workers < 1:
        raise OptionError(f"--workers must be at least 1, got {workers}")
    # Build one app here even for several workers: a bad checkpoint or option fails now, with
    # its message, instead of in every worker process uvicorn would keep restarting.
    app = create_app(checkpoint, backend=backend, admission=Admission(**(limits or {})), **options)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app
    # uvicorn starts (and restarts) the workers from this thread: each ends with this process
    here = Lifeline.here()
    settings = {"checkpoint": str(checkpoint), "backend": backend, "workers": workers,
                "lifeline": [here.parent, here.main_thread]}  # fmt: skip
    os.environ[WORKER_OPTIONS] = json.dumps({**settings, "limits": limits or {}, **options})
    uvicorn.run(
        "utkface.apps.serve:worker_app", factory=True, host=host, port=port, workers=workers,
        log_level="info",
    )  # fmt: skip


def worker_app() -> FastAPI:
    """The app of one of `run`'s worker processes, from the options `run` left in the
    environment. The cores are shared out between the workers' model threads."""
    options = json.loads(os.environ[WORKER_OPTIONS])
    lifeline = options.pop("lifeline", None)  # absent for an app made outside `run` (tests)
    if lifeline:
        Lifeline(*lifeline).hold()
    workers, limits = options.pop("workers"), options.pop("limits")
    threads = max(1, (os.cpu_count() or 1) // workers)
    return create_app(
        options.pop("checkpoint"), admission=Admission(**limits), threads=threads, **options
    )
