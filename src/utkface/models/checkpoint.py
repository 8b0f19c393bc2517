"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint file alone rebuilds the network, its preprocessing and its label conventions, so
`predict`, `evaluate`, `export` and `serve` need no config or training code. Two formats, one
loader (`load_checkpoint` tells them apart by content):

- `.pt` (what `train` writes: `best.pt`, `last.pt`): a `torch.save` dict of tensors and plain
  Python values (str, int, float, bool, None, list, tuple, dict). It is read with
  `torch.load(weights_only=True)`, which refuses any other type, so a file from someone else
  cannot run code when it is loaded. `last.pt` of a run folder additionally holds the full
  training state (optimizer, weight average, step counters, history) that `train --resume`
  reads; `best.pt` holds weights and metadata only.
- `.safetensors` (`utkface export --format safetensors [--half]`): the weights as safetensors,
  which has no code path at all, and the metadata as JSON in the header's `__metadata__`
  (key `utkface`), all in one file; optionally fp16 weights, half the size.

`load_checkpoint(path, sha256=...)` checks the file's SHA-256 before parsing it.
`CheckpointError` (a file that is not a usable or not a safe model file) is the runtime's, shared
with ONNX exports. Files are
written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utkface.models.preprocess import Preprocess
from utkface.models.registry import build_model, model_entry, model_tasks
from utkface.runtime import released
from utkface.runtime.atomic import atomic_write
from utkface.runtime.errors import CheckpointError, OptionError
from utkface.runtime.model_info import describe_model
from utkface.runtime.names import GENDERS, MAX_AGE, RACES

FORMAT_VERSION = 1
LABELS = {
    "gender": {str(index): name for index, name in enumerate(GENDERS)},
    "gender_prob": "probability of female (gender 1)",
    "age_range": [0, MAX_AGE],
    "race": {str(index): name for index, name in enumerate(RACES)},
}
META_KEYS = ("format_version", "model", "preprocess", "labels", "config", "metrics", "epoch")
SAFETENSORS_KEY = "utkface"  # the entry of the safetensors `__metadata__` holding our JSON
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def model_spec(name: str, tasks, pretrained: bool = False, **kwargs) -> dict:
    """The `model` entry of a checkpoint; a network started from face-pretrained weights also
    records their file, digest, source, licence and terms (`start`)."""
    spec = {"name": name, "tasks": list(model_tasks(name, tasks)), "kwargs": dict(kwargs)}
    weights = model_entry(name).weights
    if pretrained and weights is not None:
        spec["start"] = weights.provenance()
    return spec


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: dict,
    preprocess: Preprocess,
    *,
    config: dict | None = None,
    metrics: dict | None = None,
    epoch: int = 0,
    extra: dict | None = None,
) -> None:
    """Write weights and metadata as `.pt`. `extra` holds resume state (optimizer, RNG...);
    numpy values in it are stored as tensors and Python numbers, so the file loads with
    `weights_only=True`."""
    state = {
        "format_version": FORMAT_VERSION,
        "model": spec,
        "preprocess": preprocess.to_dict(),
        "labels": LABELS,
        "config": config or {},
        "metrics": metrics or {},
        "epoch": epoch,
        "state_dict": _cpu_state_dict(model),
    }
    state.update(extra or {})
    # Into memory first: torch.save turns a failed write into a RuntimeError without its
    # cause, which would hide a full disk (atomic_write reports it, naming `path`).
    buffer = io.BytesIO()
    torch.save(_plain(state), buffer)
    atomic_write(path, buffer.getbuffer())


def save_safetensors(
    path: str | os.PathLike, model: nn.Module, meta: dict, dtype: torch.dtype = torch.float32
) -> None:
    """Write `safetensors_bytes(model, meta, dtype)` to `path`, atomically."""
    atomic_write(path, safetensors_bytes(model, meta, dtype))


def safetensors_bytes(model: nn.Module, meta: dict, dtype: torch.dtype = torch.float32) -> bytes:
    """`model`'s weights as safetensors with `meta` (the `META_KEYS` of a checkpoint, as
    `load_checkpoint` returns them) as JSON in the header. `dtype=torch.float16` halves the size:
    floating-point tensors are cast, integer buffers kept."""
    from safetensors.torch import save

    names = {value: key for key, value in DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    weights = {
        key: (value.to(dtype) if value.is_floating_point() else value).contiguous()
        for key, value in _cpu_state_dict(model).items()
    }
    info = {key: meta[key] for key in META_KEYS if key in meta}
    if isinstance(info.get("preprocess"), Preprocess):
        info["preprocess"] = info["preprocess"].to_dict()
    info.update(format_version=FORMAT_VERSION, dtype=names[dtype])
    return save(weights, metadata={SAFETENSORS_KEY: json.dumps(_plain(info))})


def read_checkpoint(source: str | os.PathLike | bytes, sha256: str | None = None) -> dict:
    """The checkpoint as a dict (metadata keys plus `state_dict`, and `train_state` in a
    `last.pt`), from a file or its bytes in either format, with a clear `CheckpointError` for a
    missing, foreign, corrupt or unsafe file, or one whose SHA-256 is not `sha256` (checked
    before parsing). The released model's file is always checked against `released.SHA256`."""
    path, data = _path_and_bytes(source)
    return _parse(path, data, sha256 or released.expected_sha256(path))


def _path_and_bytes(source: str | os.PathLike | bytes) -> tuple[Path, bytes]:
    if isinstance(source, bytes):
        return Path("<checkpoint bytes>"), source
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path, path.read_bytes()


def _parse(path: Path, data: bytes, sha256: str | None) -> dict:
    """`read_checkpoint` of bytes already read."""
    released.verify_sha256(path, data, sha256)
    state = _read_safetensors(path, data) if _is_safetensors(data) else _read_torch(path, data)
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a utkface checkpoint (no format_version)")
    if not isinstance(state["format_version"], int) or state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {state['format_version']} is newer than this utkface "
            f"understands ({FORMAT_VERSION}); upgrade utkface"
        )
    if not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"{path}: checkpoint holds no weights (no state_dict)")
    return state


def load_checkpoint(
    source: str | os.PathLike | bytes,
    device: str | torch.device = "cpu",
    sha256: str | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model from a `.pt` or `.safetensors` file (or its bytes) alone; see
    `read_checkpoint`. Returns `(float32 model in eval mode, metadata)`;
    `metadata["preprocess"]` is a `Preprocess`, `metadata["path"]` the file."""
    state = read_checkpoint(source, sha256)
    path = "<checkpoint bytes>" if isinstance(source, bytes) else source
    try:
        spec = state["model"]
        model = build_model(spec["name"], spec["tasks"], pretrained=False, **spec["kwargs"])
        model.load_state_dict(state.pop("state_dict"))  # fp16 weights are cast to float32 here
        preprocess = Preprocess.from_dict(state["preprocess"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: checkpoint does not fit its model ({error})") from error
    try:
        model = model.to(device).to(memory_format=torch.channels_last).eval()
    except (RuntimeError, AssertionError) as error:  # no such device, or not built for it
        raise OptionError(f"device {str(device)!r} cannot be used: {error}") from error
    meta = {key: value for key, value in state.items() if key in META_KEYS}
    meta.update(preprocess=preprocess, path=str(path))
    return model, meta


def init_weights(
    model: nn.Module, name: str, tasks, source: str | os.PathLike
) -> tuple[int, dict | None]:
    """Copy the weights of the checkpoint `source` ("released": the model shipped in the
    package) into `model`, a fresh `name` network with heads `tasks`: a fine-tune's start.
    The checkpoint must hold the same network; heads it lacks keep their initialisation.
    Returns how many tensors were copied, and the checkpoint's `start` (the face-pretrained
    weights it descends from, which the fine-tune then descends from too; None: ImageNet or
    no pretrained start)."""
    path = released.path("torch") if str(source) == "released" else Path(source)
    state = read_checkpoint(path)
    spec = state.get("model") or {}
    if spec.get("name") != name:
        raise CheckpointError(
            f"{path}: holds a {spec.get('name')!r} network; this run trains {name!r} "
            "(choose the same --model, or another --init)"
        )
    weights = state["state_dict"]
    missing = [key for key in model.state_dict() if key not in weights]
    unknown = [key for key in missing if not key.startswith("heads.")]
    if unknown:
        raise CheckpointError(f"{path}: lacks weights of this network ({', '.join(unknown[:3])})")
    extra = [key for key in weights if key not in model.state_dict()]
    kept = {key: value for key, value in weights.items() if key not in extra}
    try:
        model.load_state_dict(kept, strict=False)
    except RuntimeError as error:  # a shape differs: another width or head size
        raise CheckpointError(f"{path}: does not fit this network ({error})") from error
    return len(kept), spec.get("start")


def describe_checkpoint(source: str | os.PathLike) -> str:
    """What `utkface info` prints for a checkpoint (`model_info.describe_model`)."""
    path, data = _path_and_bytes(source)
    state = _parse(path, data, released.expected_sha256(path))
    weights = state["state_dict"].values()
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in weights if t.is_floating_point()})
    return describe_model(source, data, state, sum(t.numel() for t in weights), dtypes)


def _read_torch(path: Path, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses every global outside torch's allow-list before calling it.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if not found:  # not a pickle at all, or a damaged one
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged?)") from error
        raise CheckpointError(
            f"{path}: refused: the file asks to load `{found.group(1)}`; a checkpoint may hold "
            "only tensors and plain values, since anything else could run code when loaded"
        ) from error
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error


def _is_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header (`{`)."""
    return len(data) >= 10 and data[8:9] == b"{"


def _read_safetensors(path: Path, data: bytes) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        info = json.loads(header["__metadata__"][SAFETENSORS_KEY])
        weights = load(data)
    except (KeyError, TypeError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{path}: not a utkface safetensors file ({error})") from error
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: not a utkface safetensors file (bad metadata)")
    return {**info, "state_dict": weights}


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return {key: value.detach().cpu() for key, value in model.state_dict().items()}


def _plain(value: Any) -> Any:
    """`value` with numpy arrays as tensors and numpy scalars as Python numbers (e.g. the numpy
    RNG state), the only non-plain types training stores; `weights_only` loads the result."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value
