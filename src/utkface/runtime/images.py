"""The one image decoder: any file, bytes, PIL image or array -> RGB uint8.

The dataset cache, prediction, evaluation and the web demo all decode through here, so the
pixels a model is trained on and the pixels it serves on are made the same way.

One pixel path: a file (path or bytes) is decoded in full, like a PIL image or an array, then
EXIF-rotated, converted to RGB (16-bit samples scaled by 255/65535, transparency on white) and
cut to a square by `square_resize`. So a photo gives the same pixels, and the same prediction,
whichever way it is given. (JPEG draft mode, a DCT downscale at decode time, was dropped for
this: it changed the pixels of files only. On UTKFace's 200 px crops it never applied at 112 or
128 px (the same pixels, the same speed); where it did, at 64 and 32 px, decoding is now 1.6-2x
slower: 860 against 1,417 images/s at 64 px, one thread, 2,000 crops, shared 2-core machine.)

An image whose shorter side is under `MIN_FACE_SIDE` pixels is refused: there is no face to
read in it (see the constant).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utkface.runtime.errors import UtkfaceError

# Larger inputs are refused rather than decoded: a 10k x 10k photo is plenty for a face.
MAX_PIXELS = 100_000_000
RESAMPLE = Image.Resampling.BILINEAR
ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held
SIXTEEN_BIT = 257.0  # 65535 / 255: a 16-bit sample onto the 0..255 scale
# Smallest side of a face crop worth a prediction. The baseline model (MobileNetV2, 112 px, its
# epoch 5) on 400 val crops shrunk to a side of 8 / 16 / 20 / 24 / 32 / 48 px and back: age MAE
# 13.0 / 8.3 / 7.8 / 7.1 / 6.5 / 5.6 years (4.7 at 200 px), gender 67 / 83 / 87 / 90 / 91 / 92 %
# (94 %). From 24 px on, gender is within 4 points of full size; below, both degrade fast.
MIN_FACE_SIDE = 24

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageError(UtkfaceError, ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def open_rgb(src: ImageSource) -> Image.Image:
    """Decode `src` in full into an RGB PIL image, honouring EXIF orientation."""
    if isinstance(src, np.ndarray):
        return _array_to_pil(src)
    image = src if isinstance(src, Image.Image) else _open_file(src)
    try:
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode image: {error}") from error


def load_rgb(src: ImageSource, size: int) -> np.ndarray:
    """Decode `src`, centre-crop it to a square and resize to `(size, size, 3)` uint8."""
    return square_resize(open_rgb(src), size)


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, then resize to `(size, size, 3)` uint8 (no crop on UTKFace).
    Raises `ImageError` for an image too small to be a face (`check_face_size`)."""
    width, height = image.size
    check_face_size(width, height)
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), RESAMPLE, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def check_face_size(width: int, height: int) -> None:
    """Raise `ImageError` when a `width` x `height` image (or face crop) is under
    `MIN_FACE_SIDE` pixels on its shorter side."""
    if min(width, height) < MIN_FACE_SIDE:
        raise ImageError(
            f"image is {width}x{height} px, too small to be a face: a face needs at least "
            f"{MIN_FACE_SIDE} px on each side (MIN_FACE_SIDE)"
        )


def _open_file(src: str | os.PathLike | bytes) -> Image.Image:
    if isinstance(src, bytes):
        if not src:
            raise ImageError("empty file (0 bytes)")
        handle: object = io.BytesIO(src)
    else:
        path = Path(src)
        if not path.is_file():
            raise ImageError("no such file")
        if path.stat().st_size == 0:
            raise ImageError("empty file (0 bytes)")
        handle = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)  # type: ignore[arg-type]
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})")
            image.load()
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError("not an image (unrecognised format)") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image too large: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"corrupt or truncated image: {error}") from error
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, not black: the usual look of a cut-out photo.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: 0..65535 onto 0..255, as Pillow reads 16-bit RGB (not by the
        # image's own peak, which would brighten a dark photo).
        eight = _rounded(np.asarray(image, dtype=np.float64) / SIXTEEN_BIT)
        return Image.fromarray(eight).convert("RGB")
    return image.convert("RGB")


def _rounded(values: np.ndarray) -> np.ndarray:
    """Values on the 0..255 scale, rounded and clipped to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"array of shape {array.shape} is not an HxW, HxWx1, HxWx3 or HxWx4 image")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            array = array / SIXTEEN_BIT  # as for a 16-bit file
        elif np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = _rounded(array)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))
