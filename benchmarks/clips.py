"""Test and benchmark videos: real UTKFace crops moving across a background, noise per frame.

    crops = real_crops(4)                     # (4, 200, 200, 3) uint8 from $UTKFACE_DATA
    frames = list(moving_faces(crops, size=(640, 480), frames=100))
    write_clip("clip.mp4", frames, fps=25)    # or .mkv, .y4m (PyAV)

Each face gets its own horizontal lane and crosses the frame from one side to the other (faces
in neighbouring lanes go opposite ways, at different speeds), so faces never overlap and each
should keep one track. The background is a fixed smooth gradient with texture; every frame gets
fresh Gaussian noise, so consecutive frames differ as camera frames do.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from utkface.data.dataset import default_source
from utkface.runtime.images import RESAMPLE
from utkface.runtime.sources import iter_members


def real_crops(count: int, source: str | os.PathLike | None = None, step: int = 97) -> np.ndarray:
    """`count` 200x200 UTKFace crops, every `step`-th image of the archive (RGB uint8)."""
    from utkface.runtime.images import load_rgb

    members = (m for m in iter_members(source or default_source()) if m.data)
    picked = itertools.islice(members, 1, 1 + count * step, step)
    return np.stack([load_rgb(member.data, 200) for member in picked])


def moving_faces(
    crops: Sequence[np.ndarray],
    size: tuple[int, int] = (640, 480),
    frames: int = 100,
    side: int | None = None,
    noise: float = 6.0,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """`frames` RGB uint8 `(H, W, 3)` frames of `size` (width, height) with each crop, resized
    to `side` px (default: as large as its lane allows, at most 200), crossing the frame."""
    width, height = size
    lanes = len(crops)
    side = side or min(200, height // lanes - 8, width // 3)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    background = np.stack([90 + 80 * x, 110 + 60 * y, 150 - 50 * x * y], axis=-1)
    background += rng.normal(0, 10, (height, width, 1))  # fixed texture
    faces = [np.asarray(Image.fromarray(c).resize((side, side), RESAMPLE), float) for c in crops]
    gap = (height - lanes * side) / (lanes + 1)
    travel = width - side
    for index in range(frames):
        frame = background.copy()
        for lane, face in enumerate(faces):
            progress = (index / max(frames - 1, 1)) * (1.0 - 0.15 * lane)  # no wrap-around
            progress = progress if lane % 2 == 0 else 1.0 - progress
            left, top = round(progress * travel), round(gap + lane * (side + gap))
            frame[top : top + side, left : left + side] = face
        frame += rng.normal(0, noise, frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def write_clip(path: str | os.PathLike, frames, fps: float = 25.0, crf: int | None = None) -> None:
    """Write RGB frames to `path` with `video.VideoWriter` (container by suffix; `crf` 0:
    lossless H.264, the same decoded pixels on every run)."""
    from utkface.runtime.video import VideoWriter

    with VideoWriter(path, fps, crf) as writer:
        for frame in frames:
            writer.write(frame)
