"""Video files in and out, through PyAV (FFmpeg bundled in its wheels): the extra `utkface[video]`.

    for frame in read_frames("clip.mp4", max_frames=300):   # Frame(index, time, image)
        frame.image                                          # (H, W, 3) RGB uint8
    with VideoWriter("annotated.mp4", fps=25.0) as out:      # H.264, written atomically
        out.write(rgb_array)

Any container and codec FFmpeg reads works (mp4, mkv, webm, mov, avi, ...). A file that cannot
be opened, or that breaks while it is decoded, raises `VideoError` naming the file, after every
frame decoded before the damage has been yielded; a file that ends well before the duration its
header declares (a truncated download) raises it too. PyAV is imported only here and only when
a video is read or written; without it `VideoUnavailable` names the extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from utkface.runtime.atomic import atomic_open
from utkface.runtime.errors import MissingExtra, UtkfaceError, require

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
    ".y4m", ".mjpeg", ".3gp", ".ogv",
)  # fmt: skip
INSTALL_HINT = "video support is an optional extra: pip install 'utkface[video]'"
FALLBACK_FPS = 25.0  # for a stream that declares no frame rate
# A stream that ends this many frames (and 1 %) before its declared duration was cut short.
TRUNCATION_FRAMES = 2


class VideoUnavailable(MissingExtra):
    """PyAV is not installed; the message names the extra that installs it."""


class VideoError(UtkfaceError):
    """A video that cannot be read (or not to its end); the message names the file."""


@dataclass
class Frame:
    index: int  # 0-based, in decoding order
    time: float  # presentation time in seconds from the start of the stream
    image: np.ndarray  # (H, W, 3) RGB uint8


@dataclass
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # as declared by the container; None when it does not say
    duration: float | None  # seconds, as declared


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av():
    return require("av", INSTALL_HINT, VideoUnavailable)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate, frame count and duration from the container's header."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            return _info(container, _video_stream(container, path))
    except av.FFmpegError as error:
        raise VideoError(f"{path}: not a readable video ({_reason(error)})") from error


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[Frame]:
    """Decode the first video stream frame by frame (see the module docstring for errors)."""
    av = _av()
    index, time = 0, 0.0
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoError(f"{path}: not a readable video ({_reason(error)})") from error
    with container:
        stream = _video_stream(container, path)
        info = _info(container, stream)
        stream.thread_type = "AUTO"  # FFmpeg decodes on its own threads
        try:
            for frame in container.decode(stream):
                if max_frames is not None and index >= max_frames:
                    return
                time = float(frame.time) if frame.time is not None else index / info.fps
                yield Frame(index, time, frame.to_ndarray(format="rgb24"))
                index += 1
        except av.FFmpegError as error:
            raise VideoError(
                f"{path}: damaged after frame {index} ({time:.2f} s): {_reason(error)}"
            ) from error
    if max_frames is None or index < max_frames:
        _check_complete(path, info, index, time)


def _check_complete(path, info: VideoInfo, decoded: int, last_time: float) -> None:
    """Raise `VideoError` when the stream stopped well short of what its header declares."""
    if decoded == 0:
        raise VideoError(f"{path}: no frame could be decoded")
    slack = TRUNCATION_FRAMES / info.fps
    if info.duration and last_time + 1 / info.fps < info.duration * 0.99 - slack:
        raise VideoError(
            f"{path}: ends after frame {decoded - 1} at {last_time:.2f} s of the "
            f"{info.duration:.2f} s its header declares (truncated or damaged)"
        )


def _video_stream(container, path):
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream")
    return container.streams.video[0]


def _info(container, stream) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else FALLBACK_FPS
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        # (with audio beside it, the container's duration may be the audio's)
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    frames = stream.frames or None
    if frames is None and duration:
        frames = round(duration * fps)
    return VideoInfo(stream.codec_context.width, stream.codec_context.height, fps, frames, duration)


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


# suffix -> (container format, codec); anything else is written as H.264 in MP4
WRITE_FORMATS = {
    ".mkv": ("matroska", "libx264"),
    ".y4m": ("yuv4mpegpipe", "rawvideo"),  # uncompressed, e.g. for a browser's fake camera
}


class VideoWriter:
    """RGB frames -> a yuv420p video file (H.264 in MP4 or Matroska, raw in `.y4m`), written to
    a temp file and renamed on success. The size is taken from the first frame (an odd side
    loses its last pixel: yuv420p needs even ones). `crf` is H.264's constant rate factor
    (default x264's 23; 0 is lossless: decoding gives back exactly the yuv420p frames written,
    where a lossy encoding may differ from run to run)."""

    def __init__(self, path: str | os.PathLike, fps: float, crf: int | None = None):
        self.path, self.fps, self.crf = Path(path), fps, crf
        self.format, self.codec = WRITE_FORMATS.get(self.path.suffix.lower(), ("mp4", "libx264"))
        self._file = self._container = self._stream = None

    def __enter__(self) -> VideoWriter:
        av = _av()
        self._opened = atomic_open(self.path, "wb")
        self._file = self._opened.__enter__()
        self._container = av.open(self._file, "w", format=self.format)
        return self

    def write(self, image: np.ndarray) -> None:
        av = _av()
        height, width = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
        if self._stream is None:
            rate = Fraction(self.fps).limit_denominator(1001)
            self._stream = self._container.add_stream(self.codec, rate=rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
            if self.crf is not None and self.codec == "libx264":
                self._stream.options = {"crf": str(self.crf)}
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image[:height, :width]), format="rgb24"
        )
        self._container.mux(self._stream.encode(frame))

    def __exit__(self, kind, error, trace) -> None:
        try:
            if error is None and self._stream is not None:
                self._container.mux(self._stream.encode())  # flush the encoder
            self._container.close()
        finally:
            self._opened.__exit__(kind, error, trace)
