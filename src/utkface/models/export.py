"""ONNX export with a parity check (ONNX Runtime against PyTorch), and safetensors export.

    utkface export --checkpoint runs/x/best.pt --format onnx [--out best.onnx]
    utkface export --checkpoint runs/x/best.pt --format safetensors [--half]  # pickle-free

The exported graph is the whole prediction after decoding, so a consumer needs no Python:

- input `images`: uint8 `(batch, S, S, 3)` RGB, NHWC, the same pixels `images.load_rgb` makes
  (EXIF-rotated, centre-cropped to a square, bilinear-resized to S). Normalization by the
  checkpoint's mean/std runs inside the graph (it is the checkpoint's own `Preprocess`, traced),
  so a consumer cannot get it wrong and it cannot drift from training.
- outputs (float32, first axis `batch`): `age` (expected age in years), `age_low`/`age_high`
  (10th/90th percentile), `gender_prob` (P(female)), `race_prob` `(batch, 5)`, `age_probs`
  `(batch, 117)` (the age distribution; video tracking averages it); only those the
  model has, exactly as `models.decode_outputs` names them.
- `metadata_props`: `utkface.preprocess` (size, mean, std), `utkface.labels`, `utkface.model`
  (the checkpoint's model spec), `utkface.checkpoint` (epoch, metrics, training config, number
  of weight values), `utkface.input`, `utkface.outputs`, `utkface.version`, ...

The file is written only after `onnx.checker` and the parity check pass, and atomically. The
runtime runs it (`runtime.onnx_backend.OnnxBackend`, ONNX Runtime: a dependency of every
install); exporting needs PyTorch, onnx and onnxscript, the extra `utkface[train]`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utkface import __version__
from utkface.models.checkpoint import load_checkpoint, safetensors_bytes
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess
from utkface.models.registry import decode_outputs
from utkface.runtime.atomic import atomic_write, remove_stale
from utkface.runtime.backends import predict_batches
from utkface.runtime.errors import TRAIN_HINT, OptionError, UtkfaceError, require
from utkface.runtime.images import ImageError, load_rgb
from utkface.runtime.model_io import OUTPUT_NAMES
from utkface.runtime.names import IMAGE_SUFFIXES
from utkface.runtime.onnx_backend import INPUT_NAME, META_PREFIX, OnnxBackend, decode_metadata
from utkface.runtime.released import output_path

# Opset 18 is the torch.export-based exporter's native opset (no version conversion) and runs on
# every ONNX Runtime since 1.14, well below the `onnxruntime>=1.18` the extra asks for.
DEFAULT_OPSET = 18
# Max abs difference ONNX Runtime vs PyTorch allowed per output. Ages are in years; the interval
# ends are whole-year percentiles, which may move by one year when a cumulative probability lies
# within float rounding of 0.1 or 0.9, so they get one year.
TOLERANCE = {
    "age": 0.05,
    "age_low": 1.0,
    "age_high": 1.0,
    "gender_prob": 1e-3,
    "race_prob": 1e-3,
    "age_probs": 1e-3,
}
# float16 weights vs the float32 checkpoint (safetensors --half): about twice the largest
# differences over the 2,137 val faces of the baseline (0.12 years, P(female) 0.012; see
# BENCHMARKS.md, "Checkpoint formats"), small against an age MAE of ~5 years.
HALF_TOLERANCE = {
    "age": 0.25,
    "age_low": 1.0,
    "age_high": 1.0,
    "gender_prob": 0.02,
    "race_prob": 0.02,
    "age_probs": 0.02,
}
PARITY_IMAGES = 32  # real crops the parity check runs by default


class ParityError(UtkfaceError, AssertionError):
    """ONNX Runtime and PyTorch disagree beyond tolerance; the message gives the numbers."""


class _Exportable(nn.Module):
    """uint8 NHWC images -> tuple of decoded predictions: what the ONNX graph computes."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, outputs: Sequence[str]):
        super().__init__()
        self.model, self.preprocess, self.outputs = model, preprocess, tuple(outputs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoded = decode_outputs(self.model(self.preprocess(images)))
        return tuple(decoded[name] for name in self.outputs)


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    images: str | os.PathLike | Sequence | np.ndarray | None = None,
    verbose: bool = True,
) -> Path:
    """Export `checkpoint` to ONNX at `out` (default: the checkpoint path with `.onnx`; the
    current folder for the released model).

    `check` runs the parity check on `images` (a folder / archive of image files, a list of
    image sources, or a uint8 `(N, S, S, 3)` array; default: real crops from the shared UTKFace
    archive) and raises `ParityError` above `TOLERANCE`, in which case nothing is written.
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else output_path(checkpoint, f"{checkpoint.stem}.onnx")
    model, meta = load_checkpoint(checkpoint)
    proto = export_model(model, meta, opset)
    if check:
        batch = parity_images(images, meta["preprocess"].size)
        differences = check_parity(proto.SerializeToString(), model, meta["preprocess"], batch)
        if verbose:
            print(format_parity(differences, len(batch)))
    _write(out, proto.SerializeToString())
    if verbose:
        print(f"wrote {out} (opset {opset}, {out.stat().st_size / 1e6:.1f} MB)")
    return out


def export_model(model: nn.Module, meta: dict, opset: int = DEFAULT_OPSET):
    """Trace `model` with its preprocessing and decoding into a checked `onnx.ModelProto`."""
    onnx = require("onnx", TRAIN_HINT)
    require("onnxscript", TRAIN_HINT)
    preprocess: Preprocess = meta["preprocess"]
    model = model.float().to("cpu", memory_format=torch.channels_last).eval()
    example = torch.zeros(2, preprocess.size, preprocess.size, 3, dtype=torch.uint8)
    with torch.no_grad():
        outputs = [
            name for name in OUTPUT_NAMES if name in decode_outputs(model(preprocess(example)))
        ]
    wrapper = _Exportable(model, preprocess, outputs).eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    proto = program.model_proto
    proto.producer_name, proto.producer_version = "utkface", __version__
    proto.doc_string = (
        "Age and gender from a face crop. Input: uint8 (batch, S, S, 3) RGB, normalization "
        "inside. Outputs: decoded predictions; see metadata_props utkface.*."
    )
    values = sum(tensor.numel() for tensor in model.state_dict().values())
    for key, value in _metadata(meta, outputs, values).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _metadata(meta: dict, outputs: Sequence[str], values: int) -> dict[str, str]:
    size = meta["preprocess"].size
    descriptions = {
        "age": "expected age in years, (batch,)",
        "age_low": "10th percentile of the age distribution, years, (batch,)",
        "age_high": "90th percentile of the age distribution, years, (batch,)",
        "gender_prob": "probability of female (gender 1), (batch,)",
        "race_prob": "probabilities of White, Black, Asian, Indian, Others, (batch, 5)",
        "age_probs": "probability of each age 0..116 in years, (batch, 117)",
    }
    return {
        "format_version": "1",
        "version": __version__,
        "input": (
            f"{INPUT_NAME}: uint8 (batch, {size}, {size}, 3) RGB NHWC; decode with EXIF "
            f"orientation, centre-crop to a square and resize to {size}x{size} (bilinear), as "
            "utkface.runtime.images.load_rgb does; normalization by mean/std happens inside the "
            "graph"
        ),
        "preprocess": json.dumps({**meta["preprocess"].to_dict(), "inside_graph": True}),
        "outputs": json.dumps({name: descriptions[name] for name in outputs}),
        "labels": json.dumps(meta.get("labels", {})),
        "model": json.dumps(meta.get("model", {})),
        "checkpoint": json.dumps(
            {
                "epoch": meta.get("epoch"),
                "metrics": meta.get("metrics", {}),
                "config": meta.get("config", {}),
                "values": values,
            },
            default=str,
        ),
    }


def read_metadata(model: str | os.PathLike | bytes) -> dict:
    """The `utkface.*` metadata of an exported model, JSON values decoded."""
    onnx = require("onnx", TRAIN_HINT)
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return decode_metadata({entry.key: entry.value for entry in proto.metadata_props})


def parity_images(
    images: str | os.PathLike | Sequence | np.ndarray | None, size: int, count: int = PARITY_IMAGES
) -> np.ndarray:
    """A uint8 `(N, size, size, 3)` batch for the parity check, from `images` (see export_onnx)."""
    if isinstance(images, np.ndarray):
        return images
    if images is None or isinstance(images, (str, os.PathLike)):
        from utkface.data.dataset import default_source
        from utkface.runtime.sources import iter_members

        source = Path(images) if images is not None else default_source()
        members = (m for m in iter_members(source) if m.data and _is_image_name(m.name))
        # UTKFace archives are sorted by age: take every 8th file for some variety.
        payloads = [m.data for m in itertools.islice(members, 0, count * 8, 8)]
        if not payloads:
            raise OptionError(f"{source}: no images found for the parity check")
        return np.stack([load_rgb(data, size) for data in payloads])
    decoded = []
    for item in images:
        try:
            decoded.append(load_rgb(item, size))
        except ImageError as error:
            raise OptionError(f"parity image {item!r}: {error}") from error
    return np.stack(decoded)


def check_parity(
    onnx_model: str | os.PathLike | bytes,
    model: nn.Module,
    preprocess: Preprocess,
    images: np.ndarray,
    tolerance: dict[str, float] | None = None,
) -> dict[str, float]:
    """Max abs difference per output, ONNX Runtime vs `inference.predict_arrays`, on the batch
    and on its first image alone (which also exercises the dynamic batch axis). Raises
    `ParityError` when any difference exceeds its tolerance (default `TOLERANCE`)."""
    backend = OnnxBackend(onnx_model)
    expected = predict_arrays(model, preprocess, images)
    got_batch, got_single = predict_batches(backend, images), backend(images[:1])
    return compare_outputs(
        expected, got_batch, {**TOLERANCE, **(tolerance or {})}, "ONNX Runtime", got_single
    )


def compare_outputs(
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    tolerance: dict[str, float],
    what: str,
    got_first: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Max abs difference per output of `got` (and `got_first`, the first image alone) from
    `expected` (PyTorch); `ParityError` naming `what` when one exceeds its tolerance."""
    if set(got) != set(expected):
        raise ParityError(f"outputs differ: {what} {sorted(got)}, PyTorch {sorted(expected)}")
    differences = {}
    for name, want in expected.items():
        difference = np.abs(got[name] - want).max(initial=0.0)
        if got_first is not None:
            difference = max(difference, np.abs(got_first[name] - want[:1]).max(initial=0.0))
        differences[name] = float(difference)
    failed = {name: d for name, d in differences.items() if not d <= tolerance[name]}
    if failed:
        raise ParityError(
            f"{what} differs from PyTorch beyond tolerance: "
            + ", ".join(f"{name} {d:.3g} > {tolerance[name]:g}" for name, d in failed.items())
        )
    return differences


def format_parity(
    differences: dict[str, float], count: int, what: str = "ONNX Runtime", tolerance=None
) -> str:
    tolerance = tolerance or TOLERANCE
    rows = [f"parity {what} vs PyTorch on {count} images, max abs difference:"]
    rows += [
        f"  {name:12s} {d:.3g} (tolerance {tolerance[name]:g})" for name, d in differences.items()
    ]
    return "\n".join(rows)


def export_safetensors(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    half: bool = False,
    check: bool = True,
    images: str | os.PathLike | Sequence | np.ndarray | None = None,
    verbose: bool = True,
    tolerance: dict[str, float] | None = None,
) -> Path:
    """Write `checkpoint` as one pickle-free `.safetensors` file (weights + JSON metadata, see
    `checkpoint.py`) at `out` (default: beside it, or in the current folder for the released model,
    `.safetensors` or `.fp16.safetensors`);
    `half` stores float16 weights. `check` reloads the bytes and compares predictions with the
    checkpoint's on `images` (as in `export_onnx`): identical for float32, within
    `tolerance` (default `HALF_TOLERANCE`) for float16; otherwise `ParityError` and nothing is
    written."""
    checkpoint = Path(checkpoint)
    name = f"{checkpoint.stem}{'.fp16' * half}.safetensors"
    out = Path(out) if out else output_path(checkpoint, name)
    model, meta = load_checkpoint(checkpoint)
    blob = safetensors_bytes(model, meta, torch.float16 if half else torch.float32)
    if check:
        tolerance = {**HALF_TOLERANCE, **(tolerance or {})} if half else dict.fromkeys(TOLERANCE, 0)
        batch = parity_images(images, meta["preprocess"].size)
        expected = predict_arrays(model, meta["preprocess"], batch)
        got = predict_arrays(load_checkpoint(blob)[0], meta["preprocess"], batch)
        what = f"safetensors {'float16' if half else 'float32'}"
        differences = compare_outputs(expected, got, tolerance, what)
        if verbose:
            print(format_parity(differences, len(batch), what, tolerance))
    _write(out, blob)
    if verbose:
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def _write(out: Path, data: bytes) -> None:
    """`data` into `out` atomically, after deleting what an export killed midway left beside it."""
    remove_stale(out.parent, out.name)
    atomic_write(out, data)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)
