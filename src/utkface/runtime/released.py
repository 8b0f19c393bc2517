"""The released model: weights shipped inside the package, used whenever no checkpoint is given.

    Predictor.from_pretrained()            # the Python API
    utkface predict photo.jpg              # predict, serve, evaluate and export: no --checkpoint

The file is `weights/<NAME>.safetensors` (pickle-free weights plus JSON metadata, see
`checkpoint.py`); `checkpoint.read_checkpoint` checks its SHA-256 against `SHA256` every time it
is loaded, so a damaged or replaced file is refused, not used. How it was trained and how it
scores is MODEL_CARD.md; its recipe is configs/release.toml. The weights were trained on
UTKFace, which is for non-commercial research only, and carry that restriction (the code's
MIT licence does not cover them).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

NAME = "utkface-mnv2-112-2026.11"  # model family, input side, release
SHA256 = "9d415afb73fe651d78b601784e3fac73346c5032dfa289a82697f949fee0379d"
TERMS = "weights trained on UTKFace: non-commercial research use only (see MODEL_CARD.md)"


def path() -> Path:
    """Where the released weights are in this installation."""
    return Path(str(files("utkface.runtime").joinpath("weights", f"{NAME}.safetensors")))


def expected_sha256(source: str | os.PathLike) -> str | None:
    """`SHA256` when `source` is the released file (however it is spelt), else None."""
    try:
        return SHA256 if Path(source).resolve() == path().resolve() else None
    except OSError:
        return None


def output_path(checkpoint: str | os.PathLike, name: str) -> Path:
    """Where a command writes `name` by default: beside `checkpoint`, or in the current folder
    for the released model (its folder is the installed package)."""
    folder = Path.cwd() if expected_sha256(checkpoint) else Path(checkpoint).parent
    return folder / name


def describe() -> str:
    """One line naming the released model, for `utkface --version`."""
    return f"model {NAME} (sha256 {SHA256[:12]}, {TERMS})"
