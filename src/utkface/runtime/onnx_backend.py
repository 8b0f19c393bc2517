"""The runtime's backend: an exported model (`utkface export --format onnx`) in ONNX Runtime.

    backend = OnnxBackend("model.onnx")         # or the bytes of one
    outputs = backend(crops)                    # uint8 (B, S, S, 3) -> dict of numpy predictions

The graph holds the whole prediction (normalization in, decoding out), so nothing else is
needed: input `images`, uint8 `(batch, S, S, 3)` RGB as `images.load_rgb` makes it; outputs the
keys of `model_io.OUTPUT_NAMES` the model has. The checkpoint's metadata rides in the file's
`metadata_props` (`utkface.preprocess`, `utkface.model`, `utkface.labels`, `utkface.checkpoint`
...); `meta` gives it in the shape `models.checkpoint.load_checkpoint` gives a checkpoint's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utkface.runtime import released
from utkface.runtime.errors import CheckpointError, require
from utkface.runtime.model_io import InputSpec

INPUT_NAME = "images"
META_PREFIX = "utkface."
ORT_HINT = "ONNX Runtime is missing (a dependency of utkface): pip install onnxruntime"


class OnnxBackend:
    """Runs an exported model in ONNX Runtime: uint8 `(B, S, S, 3)` -> dict of float32 numpy
    predictions (keys of `model_io.OUTPUT_NAMES`), like every backend.

    A file's SHA-256 is checked first when `sha256` is given, and always for the released
    model's file. Session options are tuned for CPU latency: all graph optimizations,
    sequential execution, `threads` intra-op threads (default: ONNX Runtime's choice, one per
    physical core) that sleep rather than spin when idle. One instance is safe to share
    between threads (`InferenceSession.run` is thread-safe).
    """

    name, device = "onnx", "cpu"

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        sha256: str | None = None,
    ):
        ort = require("onnxruntime", ORT_HINT)
        name = "<model bytes>" if isinstance(model, bytes) else str(model)
        data = model if isinstance(model, bytes) else _read(Path(model))
        released.verify_sha256(name, data, sha256 or released.expected_sha256(name))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        # Spinning idle threads cost 2x latency with 2 threads on a busy 2-core machine (6.9 vs
        # 15 ms per 128 px image, measured), and a server shares the cores with decoding.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=list(providers))
        except Exception as error:  # ONNX Runtime raises its own types for a bad graph
            raise CheckpointError(f"{name}: not a readable ONNX model ({error})") from error
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = checkpoint_meta(decode_metadata(props), name)
        self.preprocess: InputSpec = self.meta["preprocess"]
        self.outputs = [output.name for output in self.session.get_outputs()]
        self._shapes = [(output.name, output.shape) for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        size = self.preprocess.size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"expected uint8 (B, {size}, {size}, 3) images, got {images.dtype} {images.shape}"
            )
        if len(images) == 0:  # e.g. a photo with no face: no call into the session
            return {name: np.zeros((0, *shape[1:]), np.float32) for name, shape in self._shapes}
        values = self.session.run(self.outputs, {INPUT_NAME: np.ascontiguousarray(images)})
        return dict(zip(self.outputs, values))


def decode_metadata(props: dict[str, str]) -> dict:
    """The `utkface.*` entries of an export's `metadata_props`, prefix removed, JSON decoded."""
    meta = {}
    for key, value in props.items():
        if key.startswith(META_PREFIX):
            key = key[len(META_PREFIX) :]
            try:
                meta[key] = json.loads(value) if value[:1] in "{[" else value
            except json.JSONDecodeError:
                meta[key] = value
    return meta


def checkpoint_meta(exported: dict, name: str) -> dict:
    """An export's metadata as a checkpoint's (`model`, `preprocess` as an `InputSpec`,
    `labels`, `config`, `metrics`, `epoch`, `path`), plus `format` "onnx" and the rest."""
    if "preprocess" not in exported:
        raise CheckpointError(f"{name}: not a utkface ONNX export (no metadata)")
    meta = {key: value for key, value in exported.items() if key != "checkpoint"}
    record = exported.get("checkpoint") or {}
    meta.update(
        preprocess=InputSpec.from_dict(exported["preprocess"]),
        config=record.get("config") or {},
        metrics=record.get("metrics") or {},
        epoch=record.get("epoch"),
        values=record.get("values"),
        path=name,
        format="onnx",
    )
    return meta


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether `path` names an ONNX export (by its suffix, as every command tells them)."""
    return Path(path).suffix.lower() == ".onnx"


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    return path.read_bytes()
