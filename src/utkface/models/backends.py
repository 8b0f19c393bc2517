"""The backends of a training checkpoint (`.pt`, `.safetensors`), which need PyTorch.

    backend = load("runs/x/best.pt", "torch")      # what runtime.backends.load_backend calls

- `torch`: `TorchBackend`, the checkpoint's model through `inference.predict_arrays`.
- `onnx`: the checkpoint exported to ONNX in memory (`export.export_model`, no file written)
  and run by the runtime's `OnnxBackend`; `utkface export` writes the same graph to a file.

Both give what every backend gives (`runtime/backends.py`): uint8 crops in, numpy predictions
out, `.preprocess` and `.meta`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from utkface.models.checkpoint import load_checkpoint
from utkface.models.inference import predict_arrays
from utkface.runtime.onnx_backend import OnnxBackend


class TorchBackend:
    """The checkpoint's model through `inference.predict_arrays`."""

    name = "torch"

    def __init__(self, model, meta: dict):
        self.model, self.meta, self.preprocess = model, meta, meta["preprocess"]
        self.device = str(next(model.parameters()).device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> TorchBackend:
        return cls(*load_checkpoint(path, device=device))

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return predict_arrays(self.model, self.preprocess, images, batch_size=max(1, len(images)))


def load(
    path: str | os.PathLike, backend: str, device: str | None = None, threads: int | None = None
):
    """The `backend` ("torch" or "onnx") running the checkpoint in `path`; `device` for torch
    (default: a GPU if there is one), `threads` its CPU threads (torch's are per process)."""
    if backend == "onnx":
        from utkface.models.export import export_model  # onnx and onnxscript only when asked for

        model, meta = load_checkpoint(path)
        return OnnxBackend(export_model(model, meta).SerializeToString(), threads=threads)
    if threads:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return TorchBackend.from_checkpoint(path, device=device)
