"""`utkface info`: what a model file is, in a few lines, for either format.

    print(describe_onnx("model.onnx"))     # an ONNX export (here); checkpoints:
                                           # models.checkpoint.describe_checkpoint

The file (size, SHA-256, whether it is the released model), the model and its input, the
training recipe and the validation scores that selected it, the weights it started from (if
face-pretrained) and their terms, and the released model's terms.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from utkface.runtime import released
from utkface.runtime.errors import CheckpointError
from utkface.runtime.model_io import InputSpec
from utkface.runtime.onnx_backend import OnnxBackend

RECIPE = ("epochs", "time_budget", "batch_size", "lr", "photo_augment", "balance_alpha", "seed")


def describe_onnx(source: str | os.PathLike) -> str:
    """`describe_model` of an ONNX export, its digest checked when it is the released file."""
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    data = path.read_bytes()
    meta = OnnxBackend(data, sha256=released.expected_sha256(path)).meta
    return describe_model(source, data, meta, meta.get("values"), ["float32"], "ONNX export")


def describe_model(
    source: str | os.PathLike,
    data: bytes,
    meta: dict,
    values: int | None,
    dtypes: list[str],
    kind: str = "checkpoint",
) -> str:
    """The lines of `utkface info` for the file `source` (its bytes `data`) holding a model
    described by `meta` (a checkpoint's metadata: `model`, `preprocess`, `config`, `metrics`,
    `epoch`) with `values` weight values of `dtypes`."""
    is_released = released.expected_sha256(source) is not None
    name = f"released model {released.NAME}" if is_released else kind
    spec, config, metrics = meta["model"], meta.get("config") or {}, meta.get("metrics") or {}
    preprocess = meta["preprocess"]
    if isinstance(preprocess, dict):
        preprocess = InputSpec.from_dict(preprocess)
    size = f"{preprocess.size} px"
    if preprocess.crop != 1.0:
        size += f" (the network sees its central {preprocess.window[1]} px)"
    count = f"{values / 1e6:.2f} M values ({', '.join(dtypes)}), " if values else ""
    lines = [
        f"{name}: {source} ({len(data) / 1e6:.1f} MB, sha256 {hashlib.sha256(data).hexdigest()})",
        f"model: {spec['name']}, tasks {', '.join(spec['tasks'])}, {count}input {size}",
    ]
    recipe = RECIPE
    if config.get("time_budget"):  # the schedule was fitted to the minutes, not to `epochs`
        recipe = tuple(key for key in recipe if key != "epochs")
    if config:
        lines.append("trained: " + ", ".join(f"{k} {config[k]}" for k in recipe if k in config))
    ema = metrics.get("selected") == "ema"
    prefix, weights_kind = ("val_ema_", "EMA") if ema else ("val_", "raw")
    if f"{prefix}mae" in metrics:
        lines.append(
            f"selected on val at epoch {meta.get('epoch')} ({weights_kind} weights): "
            f"age MAE {metrics[f'{prefix}mae']:.2f}, gender accuracy "
            f"{100 * metrics[f'{prefix}gender_acc']:.1f}% (scores: MODEL_CARD.md)"
        )
    start = spec.get("start")
    if start:  # fine-tuned from face-pretrained weights, whose terms the weights carry
        lines.append(
            f"started from: {start['file']} (sha256 {start['sha256'][:12]}; {start['source']}; "
            f"licence {start['licence']}); terms: {start['terms']}"
        )
    if is_released:
        lines.append(f"terms: {released.TERMS}")
    return "\n".join(lines)
