"""What the prediction and serving benchmarks feed the model: real UTKFace crops from the
shared archive (`$UTKFACE_DATA`), and whole photos made of them. No torch."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from utkface.data.dataset import default_source
from utkface.runtime.sources import iter_members


def utkface_crops(count: int) -> Iterator[tuple[str, bytes]]:
    """(file name, JPEG bytes) of the first `count` images of the archive; exits when fewer."""
    found = 0
    for member in iter_members(default_source()):
        if member.data:
            yield Path(member.name).name, member.data
            found += 1
            if found == count:
                return
    sys.exit(f"the archive {default_source()} holds only {found} images")


def write_crops(folder: Path, count: int) -> list[Path]:
    """The first `count` crops of the archive, written into `folder` (made here)."""
    folder.mkdir(parents=True)
    paths = []
    for name, data in utkface_crops(count):
        paths.append(folder / name)
        paths[-1].write_bytes(data)
    return paths


def composite(crops: list[Image.Image]) -> Image.Image:
    """A 900x600 photo with the crops pasted at growing sizes (110, 140, 170, ... px)."""
    canvas = Image.new("RGB", (900, 600), (90, 120, 150))
    for index, crop in enumerate(crops):
        side = 110 + 30 * index
        canvas.paste(crop.convert("RGB").resize((side, side)), (20 + 220 * index, 40 + 90 * index))
    return canvas
