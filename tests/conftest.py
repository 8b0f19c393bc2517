"""Fixtures shared by every test module.

Real data (skipped with the reason when the download is absent):
- `real_data`: path of the UTKFace download, `$UTKFACE_DATA` or `../shared/UTKFace.tar.gz`.
- `real_dataset`: that download prepared once per session at `REAL_SIZE` px in a temporary
  cache (about 7 s on 2 cores); share it rather than preparing the real data again.

Generated data (fast, no download needed):
- `jpeg_bytes(seed, size)`: bytes of a small, smooth, face-sized RGB JPEG.
- `face_names(count, start=0)`: distinct valid UTKFace names spread over every age band,
  both genders and all races.
- `make_faces(folder, names=None, count=24, size=64)`: writes JPEGs under UTKFace names.
- `face_folder`: a folder of 24 such files covering every age band, both genders, all races.

Every test runs with `$UTKFACE_CACHE` pointing at a session temp folder, so no test writes
into the user's `~/.cache/utkface`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utkface.data.dataset import Dataset, default_source, prepare
from utkface.runtime.names import AGE_BANDS, RACES

REAL_SIZE = 32  # small: the session's real prepare is shared, and speed matters more than detail


def face_pixels(seed: int = 0, size: int = 64) -> np.ndarray:
    """A deterministic `(size, size, 3)` uint8 picture: smooth gradients plus a bright disc,
    so it compresses like a photo and different seeds give visibly different images."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-60, 60, size=(2, 3))
    image = base + x[..., None] * slope[0] + y[..., None] * slope[1]
    cy, cx = rng.uniform(0.3, 0.7, size=2)
    disc = ((y - cy) ** 2 + (x - cx) ** 2) < 0.05
    image[disc] += 50
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def utk_names(count: int, start: int = 0) -> list[str]:
    """`count` distinct, valid UTKFace names; ages cycle over every age band, genders and races
    alternate, and the datetime part is unique per index."""
    ages = [low + (index % (high - low + 1)) for index, (_, low, high) in enumerate(AGE_BANDS)]
    names = []
    for index in range(start, start + count):
        age = ages[index % len(ages)]
        gender = index % 2
        race = index % len(RACES)
        names.append(f"{age}_{gender}_{race}_2017{index:013d}.jpg.chip.jpg")
    return names


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory) -> None:
    """Point the default cache at a temp folder for the whole session."""
    previous = os.environ.get("UTKFACE_CACHE")
    os.environ["UTKFACE_CACHE"] = str(tmp_path_factory.mktemp("default-cache"))
    yield
    if previous is None:
        os.environ.pop("UTKFACE_CACHE", None)
    else:
        os.environ["UTKFACE_CACHE"] = previous


@pytest.fixture(scope="session")
def real_data() -> Path:
    path = default_source()
    if not path.exists():
        pytest.skip(f"real UTKFace download not found at {path} (set UTKFACE_DATA to it)")
    return path


@pytest.fixture(scope="session")
def real_dataset(real_data: Path, tmp_path_factory) -> Dataset:
    return prepare(real_data, size=REAL_SIZE, out=tmp_path_factory.mktemp("real-cache"))


@pytest.fixture(scope="session")
def jpeg_bytes() -> Callable[..., bytes]:
    def make(seed: int = 0, size: int = 64, quality: int = 90) -> bytes:
        return encode_jpeg(face_pixels(seed, size), quality)

    return make


@pytest.fixture(scope="session")
def face_names() -> Callable[..., list[str]]:
    return utk_names


@pytest.fixture(scope="session")
def make_faces() -> Callable[..., list[Path]]:
    """`make_faces(folder, names=None, count=24, size=64) -> paths`: one JPEG per name
    (default `utk_names(count)`), each with its own picture; `folder` is created."""

    def make(
        folder: str | os.PathLike,
        names: Sequence[str] | None = None,
        count: int = 24,
        size: int = 64,
    ) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for seed, name in enumerate(names if names is not None else utk_names(count)):
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(face_pixels(seed, size)))
            paths.append(path)
        return paths

    return make


@pytest.fixture
def face_folder(tmp_path: Path, make_faces) -> Path:
    folder = tmp_path / "faces"
    make_faces(folder, count=24)
    return folder
