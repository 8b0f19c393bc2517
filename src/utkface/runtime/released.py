"""The released model: files shipped inside the package, used whenever no checkpoint is given.

    Predictor.from_pretrained()            # the Python API
    utkface predict photo.jpg              # predict, serve, evaluate, info: no --checkpoint

Two files of the same model, one per backend (`path(backend)`):
- `weights/<NAME>.onnx`: the ONNX export (`utkface export --format onnx`, preprocessing and
  decoding inside the graph, metadata in the file), run by ONNX Runtime in every install. The
  default of every command and of `Predictor.from_pretrained`.
- `weights/<NAME>.safetensors`: the PyTorch weights it was exported from (pickle-free, see
  `models/checkpoint.py`), for `--backend torch`, `utkface export` and fine-tuning; they need
  the extra `utkface[train]`.

Each file's SHA-256 is checked against `SHA256` every time it is loaded (`verify_sha256`, by
`onnx_backend.OnnxBackend` and `checkpoint.read_checkpoint`), so a damaged or replaced file is
refused, not used. How the model was trained and how it scores is MODEL_CARD.md (with the
ONNX export's parity against the PyTorch weights); its recipe is configs/release-v2.1.toml. The
weights were trained on UTKFace, which is for non-commercial research only, and carry that
restriction (the code's MIT licence does not cover them).
"""

from __future__ import annotations

import hashlib
import os
from importlib.resources import files
from pathlib import Path

from utkface.runtime.errors import CheckpointError, OptionError

NAME = "utkface-mnv2-112-2026.12.1"  # model family, input side, release
FILES = {"onnx": f"{NAME}.onnx", "torch": f"{NAME}.safetensors"}  # backend -> file
SHA256 = {
    "onnx": "921cf4f99b6c88b4ea9afcdc722c263c7aa764d3329edc2e64b8851028487332",
    "torch": "fe1504df146e04d6aae314d6871e26f4e3f118686be9c6db72a3bceb10172e08",
}
TERMS = (
    "weights trained on UTKFace (non-commercial research use only) and FairFace (CC BY 4.0, "
    "attribution): see MODEL_CARD.md"
)


def path(backend: str = "onnx") -> Path:
    """Where the released file for `backend` ("onnx" or "torch") is in this installation."""
    if backend not in FILES:
        raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(FILES)}")
    return Path(str(files("utkface.runtime").joinpath("weights", FILES[backend])))


def expected_sha256(source: str | os.PathLike) -> str | None:
    """The digest `source` must have when it is a released file (however it is spelt), else
    None."""
    try:
        resolved = Path(source).resolve()
        return next((SHA256[b] for b in FILES if resolved == path(b).resolve()), None)
    except OSError:
        return None


def verify_sha256(name: str | os.PathLike, data: bytes, sha256: str | None) -> None:
    """`CheckpointError` naming `name` unless `data` has the digest `sha256` (None: no check)."""
    if sha256 is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise CheckpointError(
            f"{name}: SHA-256 {actual} does not match the expected {sha256.lower()}; "
            "the file is damaged or not the one expected, so it was not loaded"
        )


def output_path(checkpoint: str | os.PathLike, name: str) -> Path:
    """Where a command writes `name` by default: beside `checkpoint`, or in the current folder
    for the released model (its folder is the installed package)."""
    folder = Path.cwd() if expected_sha256(checkpoint) else Path(checkpoint).parent
    return folder / name


def describe() -> str:
    """One line naming the released model, for `utkface --version`."""
    return f"model {NAME} (sha256 {SHA256['onnx'][:12]}, {TERMS})"
