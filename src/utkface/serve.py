"""The web demo: a JSON API and a page that annotates an uploaded photo.

    utkface serve --checkpoint runs/x/best.pt [--host 127.0.0.1] [--port 8000] [--backend onnx]

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
- `GET /api/info`: the model, backend and limits.

Bad uploads get a 4xx JSON answer `{"error": code, "detail": message}`: 400 not an image or
corrupt, 413 request or image too large, 415 type not accepted. The request body is counted as
it streams and refused past `max_bytes`; the pixel count is read from the header before
decoding. Uploads are kept in memory (a multipart file part larger than 1 MB is spooled by
Starlette to the system temp dir and deleted); nothing else is written. The model is loaded once
and shared; predictions run in a worker thread, `concurrency` at a time.
"""

from __future__ import annotations

import io
import os
import time
from importlib import resources
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from utkface import images as image_io
from utkface.errors import OptionError

if TYPE_CHECKING:
    from utkface.predict import FaceResult, Predictor

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


class ApiError(Exception):
    """A bad request: answered as `{"error": code, "detail": detail}` with `status`."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def create_app(
    model: str | os.PathLike | Predictor,
    *,
    backend: str = "torch",
    faces: str = "auto",
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    accepted_types: dict[str, str] | None = None,
    concurrency: int = 1,
) -> FastAPI:
    """The app, around a `Predictor` or a checkpoint path (loaded here, once, with `backend`
    and `faces`, see `predict.Predictor`)."""
    if isinstance(model, (str, os.PathLike)):
        from utkface.predict import Predictor

        predictor = Predictor.from_checkpoint(model, device="cpu", backend=backend, faces=faces)
    else:
        predictor = model
    accepted = dict(accepted_types or ACCEPTED_TYPES)
    if max_pixels > image_io.MAX_PIXELS:
        raise OptionError(f"max_pixels {max_pixels} is above images.MAX_PIXELS")
    page = resources.files("utkface").joinpath("static/index.html").read_text(encoding="utf-8")
    limiter = anyio.CapacityLimiter(concurrency)  # one forward pass at a time uses every core
    info = {
        "model": getattr(predictor, "meta", {}).get("model"),
        "backend": getattr(predictor, "backend_name", backend),
        "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels},
        "accepted_types": sorted(accepted),
    }

    app = FastAPI(title="utkface", description="Age and gender from faces", docs_url="/api/docs")
    app.state.predictor = predictor
    app.add_middleware(_BodyLimit, max_bytes=max_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.code, "detail": error.detail}, status_code=error.status)

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
        data, declared = await _read_upload(request, accepted)
        found = _check_image(data, declared, accepted, max_pixels)
        started = time.perf_counter()
        result = await anyio.to_thread.run_sync(predictor.predict, data, limiter=limiter)
        if result.error:
            raise ApiError(400, "corrupt_image", f"the image cannot be decoded: {result.error}")
        return {
            "image": {"width": result.width, "height": result.height, "format": found},
            "mode": result.mode,  # "aligned": taken as one face crop; "detect": faces searched
            "faces": [_face_json(face) for face in result.faces],
            "backend": info["backend"],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    return app


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


class _BodyLimit:
    """ASGI middleware: 413 as soon as a request body passes `max_bytes` (by Content-Length or
    by counting a streamed body), before anything is parsed or spooled."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode()
        if length.isdigit() and int(length) > self.max_bytes:
            return await _too_large(self.max_bytes, scope, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(self.max_bytes, scope, send)


class _TooLarge(Exception):
    pass


async def _too_large(max_bytes: int, scope, send) -> None:
    await JSONResponse(
        {
            "error": "too_large",
            "detail": f"the upload is larger than {max_bytes / 2**20:.0f} MB",
        },
        status_code=413,
    )(scope, None, send)


def run(
    checkpoint: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "torch",
    **options,
) -> None:
    """Load the model once and serve until interrupted."""
    import uvicorn

    app = create_app(checkpoint, backend=backend, **options)
    uvicorn.run(app, host=host, port=port, workers=1, log_level="info")
