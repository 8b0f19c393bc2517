"""The one image decoder: any file, bytes, PIL image or array -> RGB uint8.

The dataset cache, prediction, evaluation and the web demo all decode through here, so the
pixels a model is trained on and the pixels it serves on are made the same way.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utkface.errors import UtkfaceError

# Larger inputs are refused rather than decoded: a 10k x 10k photo is plenty for a face.
MAX_PIXELS = 100_000_000
RESAMPLE = Image.Resampling.BILINEAR
ORIENTATION = 0x0112  # the EXIF tag that says how the camera was held

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


class ImageError(UtkfaceError, ValueError):
    """An input that cannot be turned into an RGB image; the message says why."""


def open_rgb(src: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Decode `src` into an RGB PIL image, honouring EXIF orientation.

    `draft_size` lets JPEG decoding downscale by 1/2, 1/4 or 1/8 in the DCT while staying at
    least that many pixels on each side, which is several times faster than a full decode.
    """
    if isinstance(src, np.ndarray):
        return _array_to_pil(src)
    image = src if isinstance(src, Image.Image) else _open_file(src, draft_size)
    try:
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot decode image: {error}") from error


def load_rgb(src: ImageSource, size: int) -> np.ndarray:
    """Decode `src`, centre-crop it to a square and resize to `(size, size, 3)` uint8."""
    image = open_rgb(src, draft_size=size)
    return square_resize(image, size)


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Centre square crop, then resize to `(size, size, 3)` uint8 (no crop on UTKFace)."""
    width, height = image.size
    side = min(width, height)
    if side == 0:
        raise ImageError("image has zero width or height")
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), RESAMPLE, reducing_gap=None)
    return np.asarray(image, dtype=np.uint8)


def _open_file(src: str | os.PathLike | bytes, draft_size: int | None) -> Image.Image:
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
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
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
        # 16-bit greyscale: scale to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array / peak * 255.0).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"array of shape {array.shape} is not an HxW, HxWx1, HxWx3 or HxWx4 image")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))
