"""Fuzzing the one decoder: thousands of corrupted JPEG, PNG, GIF, BMP and WebP files (bytes
flipped, runs overwritten, truncated, spliced) go through `images.load_rgb`; each must decode to
an `(S, S, 3)` uint8 image or raise `ImageError`, never anything else.

Hypothesis runs derandomized (the same cases on every run), so a failure reproduces; it prints
the smallest failing input it finds.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from conftest import face_pixels
from PIL import Image

from utkface.runtime.images import ImageError, load_rgb

hypothesis = pytest.importorskip("hypothesis", reason="the test extra is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SIZE = 24


def _encode(format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face_pixels(3, 40)).save(buffer, format=format, **options)
    return buffer.getvalue()


SEEDS = {
    "jpeg": _encode("JPEG", quality=85),
    "progressive jpeg": _encode("JPEG", quality=85, progressive=True),
    "png": _encode("PNG"),
    "palette png": _encode("PNG", bits=4, optimize=True),
    "gif": _encode("GIF"),
    "bmp": _encode("BMP"),
    "webp": _encode("WEBP", quality=80),
}


KINDS = ("flip", "overwrite", "truncate", "splice")
# A case: which seed file, then up to four (kind, position, value) edits. Plain integers keep
# Hypothesis's cost per case low (it dominates: ~2 ms, against ~1 ms to decode).
CASES = st.tuples(
    st.sampled_from(sorted(SEEDS)),
    st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 2**16), st.integers(0, 2**16)),
        min_size=1,
        max_size=4,
    ),
)


def corrupt(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, position, value in edits:
        at = position % max(len(data), 1)
        if kind == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif kind == "overwrite":  # a run of 1..16 random bytes
            data[at : at + 1 + value % 16] = random.Random(value).randbytes(1 + value % 16)
        elif kind == "truncate":
            del data[at:]
        elif data:  # splice: insert a copy of another part (repeated markers, chunks, headers)
            start = value % len(data)
            data[at:at] = data[start : start + 1 + value % 64]
    return bytes(data)


@settings(
    max_examples=2500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(CASES)
def test_corrupted_files_decode_or_raise_image_error(case):
    name, edits = case
    try:
        pixels = load_rgb(corrupt(SEEDS[name], edits), SIZE)
    except ImageError:
        return
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8


def test_the_seeds_decode():
    """The uncorrupted files decode to the picture they were made from (so the fuzz cases start
    from valid files, not from something already refused)."""
    expected = load_rgb(Image.fromarray(face_pixels(3, 40)), SIZE).astype(int)
    for name, data in SEEDS.items():
        error = np.abs(load_rgb(data, SIZE).astype(int) - expected).mean()
        assert error < (12 if "palette" in name or name == "gif" else 4), name
