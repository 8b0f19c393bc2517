"""Age and gender for millions of photos on a Ray cluster, with Ray Data (extra `utkface[ray]`).

    utkface predict s3://bucket/photos/ --engine ray --address auto \\
        --checkpoint best.pt --faces detect --out s3://bucket/faces/ --workers 8 --device cuda

    from utkface.apps.ray_predict import predict_ray
    predict_ray(["photos/"], "best.pt", "faces/", faces="detect", actors=4)

The pipeline is Ray Data's, nothing home-made:
`read_binary_files` (local folders and files - expanded by `predict_inputs`, so globs, manifests
and `--shard` work as in a local run - or any URI pyarrow reads: `s3://`, `gs://`, `hdfs://`)
-> `flat_map` tasks that decode, detect and crop each photo with `predict.prepare_input` (one
row per face, the very crops of the single-machine path) -> `map_batches` with `_Model` actors
that load the checkpoint once and run its backend (torch or ONNX Runtime, CPU or GPU: one GPU
per actor with `device="cuda"`) -> `write_parquet` into `out`, with the columns and types of
`predict_output.CSV_COLUMNS`. The checkpoint file is read here and shipped to the actors, so
the nodes need not share a filesystem for it.

Ray retries failed tasks; a run that dies as a whole is run again (there is no `--resume`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utkface.runtime.backends import check_backend, default_backend, load_backend
from utkface.runtime.errors import OptionError, require
from utkface.runtime.faces import DEFAULT_DETECTOR, check_detector
from utkface.runtime.predict import prepare_input
from utkface.runtime.predict_files import RunSummary
from utkface.runtime.predict_inputs import FOLDER_SUFFIXES, in_shard, iter_inputs
from utkface.runtime.predict_output import CSV_COLUMNS, csv_rows, parquet_schema
from utkface.runtime.results import FaceResult, Prediction, fill_face

INSTALL_HINT = "the Ray engine is an optional extra: pip install 'utkface[ray]'"


def require_ray():
    require("ray.data", INSTALL_HINT)
    return require("ray", INSTALL_HINT)


def predict_ray(
    inputs: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    faces: str = "auto",
    detector: str = DEFAULT_DETECTOR,
    shard: tuple[int, int] = (0, 1),
    backend: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    actors: int = 1,
    address: str | None = None,
) -> RunSummary:
    """Predict on every image of `inputs` with Ray Data and write Parquet files into `out`
    (see the module docstring). Uses the running Ray (e.g. `ray.init` by the caller), else
    connects to `address`, else starts a local one. Returns the counts of what was written."""
    ray = require_ray()
    backend = check_backend(backend or default_backend(checkpoint))  # before Ray starts
    check_detector(detector)
    local_out = "://" not in str(out)
    if local_out and Path(out).is_dir() and any(Path(out).glob("*.parquet")):
        raise OptionError(f"{out} already holds Parquet files; choose another --out")
    model_bytes = Path(checkpoint).read_bytes()  # before starting anything
    size = _model_size(checkpoint, backend)
    if not ray.is_initialized():
        ray.init(address=address)
    uris = [str(entry) for entry in inputs if "://" in str(entry)]
    items = list(iter_inputs([entry for entry in inputs if "://" not in str(entry)], shard))
    missing = [Prediction(item.source, error=item.error) for item in items if item.error]
    paths = [str(item.path) for item in items if not item.error] + uris
    datasets = []
    if paths:
        extensions = [suffix.lstrip(".") for suffix in FOLDER_SUFFIXES]
        read = ray.data.read_binary_files(paths, include_paths=True, file_extensions=extensions)
        if uris and shard != (0, 1):
            read = read.filter(lambda row: in_shard(row["path"], shard))
        datasets.append(read.flat_map(_crop_rows, fn_args=(faces, size, detector)))
    if missing:
        rows = [{**row, "crop": np.zeros((size, size, 3), np.uint8)} for p in missing
                for row in csv_rows(p)]  # fmt: skip
        datasets.append(ray.data.from_items(rows))
    if not datasets:
        raise OptionError("no inputs")
    dataset = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    results = dataset.map_batches(
        _Model,
        fn_constructor_args=(model_bytes, Path(checkpoint).suffix, backend, device),
        batch_size=batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if device.startswith("cuda") else 0,
    )
    results.write_parquet(str(out))
    return _summary(out) if local_out else RunSummary()


def _model_size(checkpoint: str | os.PathLike, backend: str) -> int:
    """The crop side the model wants, from the checkpoint alone."""
    return load_backend(checkpoint, backend, device="cpu").preprocess.size


def _crop_rows(row: dict, faces: str, size: int, detector: str) -> list[dict]:
    """One photo (`bytes`, `path`) -> a row per face with its `crop` (a Ray Data task)."""
    prepared = prepare_input(row["bytes"], faces, size, row["path"], detector)
    rows = csv_rows(prepared.prediction)
    crops = list(prepared.crops) or [np.zeros((size, size, 3), np.uint8)]
    return [{**values, "crop": crop} for values, crop in zip(rows, crops)]


class _Model:
    """A Ray actor holding one loaded backend: face rows with crops in, the same rows with the
    model's numbers filled in out (as a pyarrow table of `CSV_COLUMNS`)."""

    def __init__(self, model_bytes: bytes, suffix: str, backend: str, device: str):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"model{suffix}"
            path.write_bytes(model_bytes)
            self.backend = load_backend(path, backend, device=device)

    def __call__(self, batch):  # a pandas DataFrame of rows from `_crop_rows`
        import pyarrow as pa

        frame = batch.drop(columns=["crop"])
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        with_face = [row for row, record in enumerate(records) if record["face"] is not None]
        if with_face:
            crops = np.stack([batch["crop"].iloc[row] for row in with_face])  # (F, S, S, 3)
            outputs = self.backend(crops)
            for index, row in enumerate(with_face):
                face = FaceResult(box=(0, 0, 0, 0))
                fill_face(face, {key: value[index] for key, value in outputs.items()})
                records[row].update({key: getattr(face, key) for key in _MODEL_COLUMNS})
        for record in records:
            for key in ("width", "height", "face"):
                record[key] = None if record.get(key) is None else int(record[key])
        rows = [{key: record.get(key) for key in CSV_COLUMNS} for record in records]
        return pa.Table.from_pylist(rows, schema=parquet_schema())


_MODEL_COLUMNS = ("age", "age_low", "age_high", "gender", "gender_prob", "race", "race_prob")


def _summary(out: str | os.PathLike) -> RunSummary:
    import pyarrow.parquet as pq

    table = pq.read_table(out, columns=["source", "error", "face"]).to_pydict()
    summary = RunSummary()
    errors = {}
    for source, error, face in zip(table["source"], table["error"], table["face"]):
        errors.setdefault(source, error)
        summary.faces += face is not None
    summary.inputs = len(errors)
    summary.failed = sum(error is not None for error in errors.values())
    return summary
