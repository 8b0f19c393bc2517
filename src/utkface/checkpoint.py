"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint file alone rebuilds the network, its preprocessing and its label conventions, so
`predict`, `evaluate` and `export` need no config or training code. Files are written to a
temporary name and renamed, so a crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utkface.atomic import atomic_open
from utkface.models import build_model, model_tasks
from utkface.names import GENDERS, MAX_AGE, RACES
from utkface.preprocess import Preprocess

FORMAT_VERSION = 1
LABELS = {
    "gender": {str(index): name for index, name in enumerate(GENDERS)},
    "gender_prob": "probability of female (gender 1)",
    "age_range": [0, MAX_AGE],
    "race": {str(index): name for index, name in enumerate(RACES)},
}


class CheckpointError(ValueError):
    """A file that is not a usable utkface checkpoint; the message names it."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temp file in the same folder, then rename over `path`."""
    with atomic_open(path) as file:
        torch.save(obj, file)


def model_spec(name: str, tasks, **kwargs) -> dict:
    return {"name": name, "tasks": list(model_tasks(name, tasks)), "kwargs": dict(kwargs)}


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
    """Write weights and metadata. `extra` holds resume state (optimizer, scheduler, RNG)."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {
        "format_version": FORMAT_VERSION,
        "model": spec,
        "preprocess": preprocess.to_dict(),
        "labels": LABELS,
        "config": config or {},
        "metrics": metrics or {},
        "epoch": epoch,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    if extra:
        state.update(extra)
    atomic_torch_save(state, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load the raw checkpoint dict, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a utkface checkpoint (no format_version)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {state['format_version']} is newer than this utkface "
            f"understands ({FORMAT_VERSION}); upgrade utkface"
        )
    return state


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild the model from the file alone. Returns `(model in eval mode, metadata)`;
    `metadata["preprocess"]` is a `Preprocess`."""
    state = read_checkpoint(path)
    spec = state["model"]
    model = build_model(spec["name"], spec["tasks"], pretrained=False, **spec.get("kwargs", {}))
    model.load_state_dict(state.pop("state_dict"))
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    meta = {key: value for key, value in state.items() if key in _META_KEYS}
    meta["preprocess"] = Preprocess.from_dict(state["preprocess"])
    meta["path"] = str(path)
    return model, meta


_META_KEYS = ("format_version", "model", "labels", "config", "metrics", "epoch")
