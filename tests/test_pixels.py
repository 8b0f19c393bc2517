"""One pixel path: a photo gives the same pixels, and the same prediction, whether it comes as a
path, bytes, a PIL image or an array, and whether it is stored EXIF-rotated, as CMYK, with 16-bit
samples or as greyscale. Images too small to be a face are refused with a clear error.

Predictions come from a tiny random model with batch-norm statistics from real crops
(`tiny_checkpoints.py`). Its outputs move with the picture, and also with pixel noise far more
than a trained model's do: re-encoding a crop as a quality-95 JPEG moves its age by tens of
years. So the variants here are stored losslessly (PNG with an EXIF orientation, CMYK TIFF,
16-bit PNG, greyscale PNG) and must give the upright original's pixels exactly; the JPEG
variants must give exactly the pixels of their own decoded samples turned upright. With a
trained model (the released one, or the checkpoint in `UTKFACE_PARITY_CHECKPOINT`),
`test_trained_model_parity_on_jpeg_variants` compares the lossy JPEG variants with the original
by prediction, within `AGE_TOLERANCE` and `FEMALE_TOLERANCE`. Each parity test also checks that
ignoring the orientation tag would fail it.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoints import tiny_checkpoint

from utkface.runtime import images, released
from utkface.runtime.images import MIN_FACE_SIDE, ImageError, load_rgb
from utkface.runtime.predict import Predictor
from utkface.runtime.sources import iter_members

SIZE = 64
# "The same prediction" for a lossy copy, with a trained model. Measured with the baseline run's
# epoch-3 checkpoint on 100 val crops against the upright lossless original (|delta| median /
# max): a plain quality-95 re-encode moves age 0.04 / 0.40 years and P(female) 0.0002 / 0.013;
# the EXIF 6 / 8, CMYK and greyscale JPEGs at most 0.69 years and 0.021. Reading the rotated
# files without their tag moves age 6.6 / 55 years and P(female) 0.38 / 0.92.
AGE_TOLERANCE = 1.0  # years
FEMALE_TOLERANCE = 0.03  # P(female)
FLOAT_NOISE = 1e-4  # the same pixels in another batch position: float summation order only
JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0}  # 4:4:4, as good cameras save


@pytest.fixture(scope="module")
def originals(real_data) -> list[np.ndarray]:
    """Four real 200x200 UTKFace crops, upright RGB."""
    members = (m for m in iter_members(real_data) if m.data and m.name.endswith(".jpg"))
    picked = itertools.islice(members, 7, 2000, 500)
    return [np.asarray(Image.open(io.BytesIO(m.data)).convert("RGB")) for m in picked]


@pytest.fixture(scope="module")
def predictor(originals, tmp_path_factory) -> Predictor:
    calibration = np.stack([load_rgb(pixels, SIZE) for pixels in originals])
    path = tiny_checkpoint(tmp_path_factory.mktemp("pixels") / "tiny.pt", calibration, SIZE)
    return Predictor.from_checkpoint(path, faces="aligned", workers=1)


def encode(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def sideways(pixels: np.ndarray, tag: int) -> np.ndarray:
    """The pixels as a sensor held sideways records them: EXIF orientation `tag` turns them
    upright again (6: turn 90 degrees clockwise to view, 8: counter-clockwise)."""
    return np.ascontiguousarray(np.rot90(pixels, k=1 if tag == 6 else -1))


def with_orientation(pixels: np.ndarray, tag: int, **options) -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION] = tag
    return encode(Image.fromarray(sideways(pixels, tag)), exif=exif, **options)


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit RGB PNG of 8-bit pixels (each sample x 257, so 255 -> 65535). Pillow cannot
    write one, so the chunks are written here."""
    height, width, _ = pixels.shape
    samples = (pixels.astype(">u2") * 257).reshape(height, width * 3)
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)  # filter 0 on each row

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16-bit truecolour
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def grey(pixels: np.ndarray) -> np.ndarray:
    """The photo in shades of grey, as RGB with R = G = B (Pillow's ITU-R 601 luma)."""
    return np.asarray(Image.fromarray(pixels).convert("L"))[..., None].repeat(3, axis=2)


def lossless_variants(pixels: np.ndarray) -> dict[str, bytes]:
    """The same upright photo stored losslessly in the ways cameras and editors store it."""
    upright = Image.fromarray(pixels)
    shades = grey(pixels)[..., 0]
    return {
        "EXIF orientation 6 (PNG)": with_orientation(pixels, 6, format="PNG"),
        "EXIF orientation 8 (PNG)": with_orientation(pixels, 8, format="PNG"),
        "CMYK TIFF": encode(upright.convert("CMYK"), format="TIFF"),
        "16-bit RGB PNG": png16(pixels),
        "greyscale PNG": encode(Image.fromarray(shades), format="PNG"),
        "16-bit greyscale PNG": encode(
            Image.fromarray(shades.astype(np.uint16) * 257), format="PNG"
        ),
    }


def jpeg_variants(pixels: np.ndarray) -> dict[str, bytes]:
    """The lossy ones: what phones and print workflows write."""
    upright = Image.fromarray(pixels)
    return {
        "upright JPEG": encode(upright, **JPEG),
        "EXIF orientation 6 (JPEG)": with_orientation(pixels, 6, **JPEG),
        "EXIF orientation 8 (JPEG)": with_orientation(pixels, 8, **JPEG),
        "CMYK JPEG": encode(upright.convert("CMYK"), **JPEG),
        "greyscale JPEG": encode(upright.convert("L"), **JPEG),
    }


def outputs(predictor: Predictor, inputs: list) -> np.ndarray:
    """(N, 2) age and P(female) of each input."""
    results = predictor.predict(inputs)
    for result in results:
        assert result.error is None, result.error
    return np.array([(r.faces[0].age, r.faces[0].gender_prob) for r in results])


def assert_close(got: np.ndarray, want: np.ndarray, age_tol: float, female_tol: float, what):
    age, female = np.abs(got - want).max(axis=0)
    assert age <= age_tol and female <= female_tol, (what, age, female)


def test_path_bytes_pil_and_array_give_the_same_pixels_and_prediction(predictor, tmp_path):
    # 300x240: larger than twice the model's side, where JPEG draft decoding used to shrink files
    # (and only files) in the DCT; not square, so the centre crop is tested too.
    pixels = np.asarray(Image.fromarray(_mosaic()).resize((300, 240), Image.Resampling.BICUBIC))
    data = encode(Image.fromarray(pixels), **JPEG)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    sources = {
        "path": path,
        "str": str(path),
        "bytes": data,
        "PIL": Image.open(path),
        "array": decoded,
        "float array": decoded / 255.0,
        "16-bit array": decoded.astype(np.uint16) * 257,
    }
    want = load_rgb(path, SIZE)
    for name, source in sources.items():
        np.testing.assert_array_equal(load_rgb(source, SIZE), want, err_msg=name)
    got = outputs(predictor, list(sources.values()))
    assert_close(got, got[:1], FLOAT_NOISE, FLOAT_NOISE, "path/bytes/PIL/array")


def test_lossless_rotated_cmyk_16_bit_and_grey_files_give_the_original_pixels(predictor, originals):
    stored = [lossless_variants(pixels) for pixels in originals]
    greys = [grey(pixels) for pixels in originals]
    want = outputs(predictor, list(originals))
    want_grey = outputs(predictor, list(greys))
    assert np.ptp(want[:, 0]) > 4 * AGE_TOLERANCE  # the model tells these photos apart
    for name in stored[0]:
        for variant, pixels in zip(stored, greys if "grey" in name else originals):
            np.testing.assert_array_equal(load_rgb(variant[name], SIZE), load_rgb(pixels, SIZE))
        got = outputs(predictor, [variant[name] for variant in stored])
        expected = want_grey if "grey" in name else want
        assert_close(got, expected, FLOAT_NOISE, FLOAT_NOISE, name)


def test_jpeg_orientation_cmyk_and_grey_decode_to_their_own_samples(originals):
    """Lossy files: the decoded samples, turned upright by hand (orientation) or as stored
    (CMYK, grey), are exactly what the pipeline gives; and they are near the original."""
    for pixels in originals:
        for name, data in jpeg_variants(pixels).items():
            with Image.open(io.BytesIO(data)) as image:
                samples = np.asarray(image.convert("RGB"))
            for tag in (6, 8):
                if f"orientation {tag}" in name:
                    samples = np.rot90(samples, k=-1 if tag == 6 else 1)  # what the tag says
            np.testing.assert_array_equal(load_rgb(data, SIZE), load_rgb(samples, SIZE), name)
            reference = grey(pixels) if "grey" in name else pixels
            error = np.abs(samples.astype(float) - reference)
            assert error.mean() < 3.0, (name, error.mean())  # a few levels of JPEG noise


def assert_orientation_matters(predictor: Predictor, originals, want: np.ndarray) -> None:
    """Reading the EXIF-rotated files without their tag would fail the parity checks, by far."""
    for tag in (6, 8):
        ignored = [sideways(pixels, tag) for pixels in originals]
        age, female = np.abs(outputs(predictor, ignored) - want).max(axis=0)
        assert age > 4 * AGE_TOLERANCE or female > 4 * FEMALE_TOLERANCE, (tag, age, female)


def test_tolerance_is_tighter_than_a_wrong_orientation(predictor, originals):
    assert_orientation_matters(predictor, originals, outputs(predictor, list(originals)))


def test_trained_model_parity_on_jpeg_variants(originals):
    checkpoint = os.environ.get("UTKFACE_PARITY_CHECKPOINT") or released.path()
    predictor = Predictor.from_checkpoint(checkpoint, faces="aligned")
    want = outputs(predictor, list(originals))
    want_grey = outputs(predictor, [grey(pixels) for pixels in originals])
    stored = [jpeg_variants(pixels) for pixels in originals]
    for name in stored[0]:
        got = outputs(predictor, [variant[name] for variant in stored])
        expected = want_grey if "grey" in name else want
        assert_close(got, expected, AGE_TOLERANCE, FEMALE_TOLERANCE, name)
    assert_orientation_matters(predictor, originals, want)


def test_too_small_to_be_a_face_is_refused(predictor):
    for side in (1, MIN_FACE_SIDE - 1):
        tiny = np.full((side, side + 30, 3), 128, np.uint8)
        result = predictor.predict(tiny)
        assert result.faces == [] and f"at least {MIN_FACE_SIDE} px" in result.error
        assert f"{side + 30}x{side} px" in result.error
        with pytest.raises(ImageError, match="too small to be a face"):
            load_rgb(tiny, SIZE)
    smallest = predictor.predict(np.full((MIN_FACE_SIDE, MIN_FACE_SIDE, 3), 128, np.uint8))
    assert smallest.error is None and len(smallest.faces) == 1


def _mosaic() -> np.ndarray:
    """A smooth, asymmetric 60x48 picture with detail at several scales."""
    y, x = np.mgrid[0:48, 0:60] / 48.0
    image = np.stack([120 + 80 * np.sin(3 * x + y), 90 + 60 * np.cos(5 * y), 60 + 90 * x * y], -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_png16_helper_writes_what_pillow_reads(tmp_path):
    pixels = _mosaic()
    Path(tmp_path / "deep.png").write_bytes(png16(pixels))
    with Image.open(tmp_path / "deep.png") as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), pixels)
