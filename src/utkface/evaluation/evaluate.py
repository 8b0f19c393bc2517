"""Score a checkpoint: metrics, per-group breakdowns, calibration, plots and a report.

    utkface evaluate --checkpoint runs/x/best.pt                  # test split of the default data
    utkface evaluate --checkpoint best.pt --data held_out/        # any UTKFace-named folder, whole
    utkface evaluate --checkpoint best.pt --data UTKFace.tar.gz --split val

What is scored: `split` "train", "val" or "test" is that split of `data` (default: the shared
UTKFace download) prepared by `data.prepare` at the checkpoint's input size, through the same
cache as training; `split="all"` scans every file of `data` with `data.scan`, without a
manifest, so a separately held set is scored without being prepared. `split=None` means "test"
when no `data` is given and "all" when it is. Files that cannot be used are listed, with reasons.

The model runs behind the runtime's backends (`runtime.backends`): an ONNX export (the released
model is one) on ONNX Runtime, without PyTorch; a training checkpoint on PyTorch (or exported in
memory for `backend="onnx"`), extra `utkface[train]`. Each applies the model's own input
preprocessing; `tta` combines each face with its mirror image. The numbers come from `metrics`,
and only the tasks the model has are scored. With `out`, the folder gets report.json (stable
keys), report.md, predictions.csv and the plots of `plots.py`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utkface.data import dataset as data_module
from utkface.data.multisource import parse_sources, prepare_sources, scan_sources
from utkface.evaluation import age_bins, metrics, plots
from utkface.evaluation.report import markdown
from utkface.runtime.atomic import atomic_write
from utkface.runtime.backends import load_backend, predict_batches
from utkface.runtime.errors import UtkfaceError
from utkface.runtime.model_io import INTERVAL
from utkface.runtime.names import RACES

REPORT_VERSION = 1
ALL = "all"
SPLIT_CHOICES = (*data_module.SPLITS, ALL)
AGE_RANGE = ("age_low", "age_high")
SKIPPED_LISTED = 200  # report.json lists at most this many skipped files (all are counted)


class EvaluationError(UtkfaceError, ValueError):
    """Nothing to score, or a request that cannot be met; the message says why."""


@dataclass
class EvalSet:
    """Images to score with their labels, and where they came from."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: dict[str, np.ndarray]  # age, gender, race: (N,) int64; source: (N,) names if several
    files: list[str]
    source: str
    split: str  # one of SPLIT_CHOICES
    mode: str  # "prepared" (manifest split) or "scanned" (every file of the source)
    seen: int  # files looked at in the source (used + skipped)
    skipped: list  # data.Skipped(file, reason), for the whole source
    split_seed: int | None  # the seed of the split, None when scanned


def evaluate(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike | data_module.Scan | None = None,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    tta: bool = False,
    batch_size: int = 256,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
    split_seed: int | None = None,
    workers: int | None = None,
    make_plots: bool = True,
    progress: bool = False,
    corruptions: bool = False,
    backend: str | None = None,
) -> dict:
    """Score `checkpoint` on `data` and return the report dict (written to `out` if given).

    `backend` runs the model (`runtime.backends.load_backend`: default onnx for an `.onnx`
    export, torch for a training checkpoint); `device` is torch's (default: a GPU if any).

    `data` is a folder or archive (or an already loaded `data.Dataset` / `data.Scan`); see the
    module docstring for `split`. `cache` is the prepare cache folder and `split_seed` the seed
    of the split (default: the `seed` the checkpoint was trained with, else 0);
    `workers` and `progress` go to the decoding in `data.scan` / `data.prepare`.
    `corruptions` adds UTKFace-C (`corruptions.py`): the same files under photo conditions,
    decoded again at full resolution from `data` (a folder or archive).
    """
    started = time.perf_counter()
    if split is not None and split not in SPLIT_CHOICES:
        raise EvaluationError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
    model = load_backend(checkpoint, backend, device=device)
    meta, preprocess = model.meta, model.preprocess
    if split_seed is None:
        split_seed = int((meta.get("config") or {}).get("seed", 0))  # train splits by its seed
    evalset = load_evalset(data, split, preprocess.size, cache, split_seed, workers, progress)
    loaded = time.perf_counter()
    predictions = predict_batches(model, evalset.images, batch_size=batch_size, tta=tta)
    predicted = time.perf_counter()

    report = build_report(evalset.labels, predictions)
    report["checkpoint"] = {
        "path": str(checkpoint),
        "model": meta["model"]["name"],
        "tasks": list(meta["model"]["tasks"]),
        "epoch": meta.get("epoch"),
        "preprocess": preprocess.to_dict(),
    }
    report["data"] = _data_block(evalset)
    if corruptions:
        report["corruptions"] = _corruptions(model, data, evalset, tta, batch_size)
    report["settings"] = {
        "tta": tta,
        "batch_size": batch_size,
        "backend": model.name,
        "device": model.device,
    }
    report["timing"] = {
        "load_s": loaded - started,
        "predict_s": predicted - loaded,
        "images_per_s": len(evalset.images) / max(predicted - loaded, 1e-9),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if make_plots:
            report["plots"] = plots.write_plots(
                report, evalset.labels, predictions, evalset.images, out
            )
        _write_predictions(out / "predictions.csv", evalset, predictions)
        report["files"] = {
            "json": "report.json",
            "markdown": "report.md",
            "predictions": "predictions.csv",
        }
        report["timing"]["total_s"] = time.perf_counter() - started
        atomic_write(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        atomic_write(out / "report.md", markdown(report))
    report["timing"]["total_s"] = time.perf_counter() - started
    return report


def _corruptions(model, data, evalset: EvalSet, tta: bool, batch_size: int) -> dict:
    from utkface.data import corruptions

    if isinstance(data, data_module.Scan):
        raise EvaluationError("--corruptions needs the data as a folder or archive, not a scan")
    split = None if evalset.split == ALL else evalset.split
    # The same files as `evalset` (a split is a function of the name), decoded at full size;
    # the table's clean row is scored on them, so each change compares like with like.
    crops = corruptions.load_full_crops(evalset.source, split, evalset.split_seed or 0)

    def predict(images):
        return predict_batches(model, images, batch_size=batch_size, tta=tta)

    return corruptions.robustness(predict, crops, model.preprocess.size, progress=True)


def load_evalset(
    data: str | os.PathLike | data_module.Scan | None,
    split: str | None,
    size: int,
    cache: str | os.PathLike | None = None,
    split_seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> EvalSet:
    """Resolve `data` and `split` (see the module docstring) into images and labels."""
    if split is None:  # the held-out split of a prepared dataset, else every file given
        split = "test" if data is None or isinstance(data, data_module.Dataset) else ALL
    if split not in SPLIT_CHOICES:
        raise EvaluationError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
    if isinstance(data, data_module.Scan):
        loaded, source = data, str(getattr(data, "cache_dir", "") or "<in-memory scan>")
        mode = "prepared" if isinstance(data, data_module.Dataset) else "scanned"
        if mode == "scanned" and split != ALL:
            raise EvaluationError(f"a scan has no splits; use split={ALL!r}")
    else:
        specs = parse_sources(data)  # one or several sources, UTKFace or labelled
        source = ", ".join(map(str, specs))
        mode = "scanned" if split == ALL else "prepared"
        if mode == "scanned":
            loaded = scan_sources(specs, size, workers=workers, progress=progress)
        else:
            loaded = prepare_sources(
                specs, size=size, out=cache, seed=split_seed, workers=workers, progress=progress
            )
    if loaded.images.shape[1] != size:
        raise EvaluationError(
            f"images are {loaded.images.shape[1]} px but the checkpoint expects {size} px"
        )
    indices = loaded.indices(split) if split != ALL else np.arange(len(loaded.records))
    if len(indices) == 0:
        raise EvaluationError(
            f"no usable images in {split!r} of {source} "
            f"({loaded.seen} files seen, {len(loaded.skipped)} skipped)"
        )
    labels = loaded.labels(indices)
    labels.update(loaded.extras(indices))  # extra label columns (race7): groups of the report
    if any(loaded.records[i].source for i in indices):  # several sources: metrics per source
        labels["source"] = np.array([loaded.records[i].source for i in indices], dtype=object)
    return EvalSet(
        images=np.ascontiguousarray(loaded.images[indices]),
        labels=labels,
        files=[loaded.records[i].file for i in indices],
        source=source,
        split=split,
        mode=mode,
        seen=loaded.seen,
        skipped=list(loaded.skipped),
        split_seed=split_seed if mode == "prepared" else None,
    )


def build_report(labels: dict, predictions: dict) -> dict:
    """The metric part of the report, for the tasks present in `predictions`."""
    tasks = [
        task
        for task, key in (("age", "age"), ("gender", "gender_prob"), ("race", "race_prob"))
        if key in predictions
    ]
    age = gender = race = bins = None
    exact = ~age_bins.is_interval(labels)  # age MAE on exact ages; bins score the intervals
    if "age" in tasks and exact.any():
        age = metrics.age_metrics(
            labels["age"][exact],
            predictions["age"][exact],
            *(predictions[key][exact] if key in predictions else None for key in AGE_RANGE),
            nominal=INTERVAL[1] - INTERVAL[0],
        )
    if "age" in tasks:
        bins = age_bins.bin_metrics(labels, predictions)
    if "gender" in tasks:
        gender = metrics.gender_metrics(labels["gender"], predictions["gender_prob"])
    if "race" in tasks:
        race = metrics.race_metrics(labels["race"], predictions["race_prob"])
    breakdowns = metrics.breakdowns(labels, predictions, min_n=metrics.MIN_GROUP_N)
    return {
        "report_version": REPORT_VERSION,
        "n": int(len(labels["age"])),
        "tasks": tasks,
        "age": age,
        "age_bins": bins,
        "gender": gender,
        "race": race,
        "breakdowns": breakdowns,
        "fairness": metrics.fairness(breakdowns),
        "plots": {},
        "files": {},
    }


def _data_block(evalset: EvalSet) -> dict:
    reasons = Counter(item.reason for item in evalset.skipped)
    return {
        "source": evalset.source,
        "mode": evalset.mode,
        "split": evalset.split,
        "split_seed": evalset.split_seed,
        "n_images": len(evalset.files),
        "seen": evalset.seen,
        "skipped": {
            "count": len(evalset.skipped),
            "scope": "whole source" if evalset.mode == "prepared" else "scanned files",
            "by_reason": dict(reasons.most_common()),
            "files": [
                {"file": s.file, "reason": s.reason} for s in evalset.skipped[:SKIPPED_LISTED]
            ],
        },
    }


def _write_predictions(path: Path, evalset: EvalSet, predictions: dict) -> None:
    columns = [key for key in ("age", "age_low", "age_high", "gender_prob") if key in predictions]
    known = ["age", "gender", "race"]
    if age_bins.is_interval(evalset.labels).any():  # the bins beside age -1
        known += ["age_min", "age_max"]
    header = ["file", *known] + [f"pred_{key}" for key in columns]
    header += ["pred_race"] if "race_prob" in predictions else []
    rows = []
    for i, file in enumerate(evalset.files):
        row = [file] + [int(evalset.labels[key][i]) for key in known]
        row += [f"{float(predictions[key][i]):.4f}" for key in columns]
        if "race_prob" in predictions:
            row.append(RACES[int(np.argmax(predictions["race_prob"][i]))])
        rows.append(row)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *rows])
    atomic_write(path, text.getvalue())
