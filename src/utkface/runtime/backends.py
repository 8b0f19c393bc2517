"""What runs a model file, and batched prediction through it.

    backend = load_backend("model.onnx")                    # ONNX Runtime, in every install
    backend = load_backend("runs/x/best.pt", "torch")       # PyTorch: extra utkface[train]
    predictions = predict_batches(backend, images, batch_size=256, tta=True)

A backend is a callable `uint8 (B, S, S, 3) -> dict of float32 numpy predictions` (the keys of
`model_io.OUTPUT_NAMES` its model has) with `.preprocess` (an `InputSpec`; `.size` is the crop
side), `.meta` (the model's metadata, as `models.checkpoint.load_checkpoint` gives it), `.name`
(one of `BACKENDS`) and `.device`. `Predictor` needs only the call, `.preprocess` and `.meta`.

- `onnx`: ONNX Runtime (`onnx_backend.OnnxBackend`). An `.onnx` file is loaded as it is; a
  training checkpoint is exported to ONNX in memory first, which needs PyTorch.
- `torch`: PyTorch on a training checkpoint (`.pt` or `.safetensors`).

A training checkpoint needs PyTorch whichever backend runs it, so it is loaded by the models
stage (`models.backends.load`, named by `CHECKPOINT_LOADER`). No runtime module imports that
stage, and an ONNX file never reaches it: `load_backend` imports it by name for a checkpoint
only, the way an optional dependency is imported, and without PyTorch says which extra to
install. The torch backend is thus a plug-in from above, not a dependency of the runtime.
"""

from __future__ import annotations

import os

import numpy as np

from utkface.runtime.errors import TRAIN_HINT, OptionError, require
from utkface.runtime.model_io import average_views
from utkface.runtime.onnx_backend import OnnxBackend, is_onnx

BACKENDS = ("onnx", "torch")
CHECKPOINT_LOADER = "utkface.models.backends"  # the models stage's loader of checkpoints


def check_backend(name: str) -> str:
    """`name` when it is one of `BACKENDS`, else `OptionError` naming them."""
    if name not in BACKENDS:
        raise OptionError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def default_backend(path: str | os.PathLike) -> str:
    """`onnx` for an ONNX export, `torch` for a training checkpoint."""
    return "onnx" if is_onnx(path) else "torch"


def load_backend(
    path: str | os.PathLike,
    backend: str | None = None,
    device: str | None = None,
    threads: int | None = None,
):
    """The backend `backend` (default: `default_backend(path)`) running the model in `path`
    on `device` (PyTorch; default: a GPU if there is one, else the CPU; ONNX Runtime runs on
    the CPU) with `threads` threads (None: the library's default)."""
    backend = check_backend(backend or default_backend(path))
    if is_onnx(path):
        if backend != "onnx":
            raise OptionError(f"{path} is an ONNX export: it runs with the onnx backend only")
        if device not in (None, "cpu"):
            raise OptionError(f"the onnx backend runs on the CPU here, not {device!r}")
        return OnnxBackend(path, threads=threads)
    checkpoints = require(CHECKPOINT_LOADER, f"{TRAIN_HINT}; {path} is a training checkpoint")
    return checkpoints.load(path, backend, device=device, threads=threads)


def predict_batches(
    backend, images: np.ndarray, batch_size: int = 256, tta: bool = False
) -> dict[str, np.ndarray]:
    """Predictions for `(N, S, S, 3)` uint8 images in batches of `batch_size`; `tta` combines
    each face with its mirror image (`model_io.average_views`)."""
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size])
        outputs = backend(batch)
        if tta:
            outputs = average_views([outputs, backend(np.ascontiguousarray(batch[:, :, ::-1]))])
        for key, value in outputs.items():
            chunks.setdefault(key, []).append(value)
    if not chunks:  # no images: the backend's empty outputs
        return backend(np.asarray(images[:0]))
    return {key: np.concatenate(parts) for key, parts in chunks.items()}
