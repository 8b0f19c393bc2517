"""Where `utkface predict` writes: part files that are each whole, resumable after any crash.

`--out DIR` (no suffix) gets `part-00000.jsonl`, `part-00001.jsonl`, ... (or `.csv`, or
`.parquet` with pyarrow, extra `utkface[parquet]`). Results are kept in memory for `part_size`
inputs or `part_seconds`, whichever comes first, then written through `atomic.atomic_open`: a
part file either exists whole or not at all, whatever kills the run.

An input is *done* when a part file holds its result or its error. `resume=True` reads the
`source` column of every part and skips those inputs; the inputs in flight when the run died
are simply predicted again, so nothing is lost or written twice. Without `resume`, a folder that
already holds parts is refused rather than mixed with a new run.

`--out F.jsonl` or `F.csv` writes its parts into `F.jsonl.parts/` and, when the run ends,
joins them into `F` (atomically, in input order) and removes the folder; after a crash the
folder stays and `--resume` continues it.

Columns (CSV and Parquet, one row per face, or one row for an input without faces):
`CSV_COLUMNS`. JSONL: one object per input, `Prediction.to_dict()`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from utkface.runtime.atomic import atomic_open, remove_stale
from utkface.runtime.errors import OptionError, require
from utkface.runtime.predict_inputs import PARQUET_HINT
from utkface.runtime.results import Prediction

FORMATS = ("jsonl", "csv", "parquet")
FILE_SUFFIXES = (".jsonl", ".csv")  # single-file --out
CSV_COLUMNS = (
    "source",
    "error",
    "mode",
    "width",
    "height",
    "face",
    "left",
    "top",
    "right",
    "bottom",
    "score",
    "age",
    "age_low",
    "age_high",
    "gender",
    "gender_prob",
    "race",
    "race_prob",
)
_PART = re.compile(r"part-(\d{5,})\.(jsonl|csv|parquet)")


def csv_rows(prediction: Prediction) -> list[dict]:
    """One dict of `CSV_COLUMNS` per face, or one without face fields when there is none."""
    row = {key: getattr(prediction, key) for key in ("source", "error", "mode", "width", "height")}
    rows = []
    for index, face in enumerate(prediction.faces):
        values = asdict(face)
        left, top, right, bottom = values.pop("box")
        box = {"left": left, "top": top, "right": right, "bottom": bottom}
        rows.append({**row, **values, **box, "face": index})
    return rows or [row]


def parquet_schema():
    """The Arrow schema of `CSV_COLUMNS` (also what the Ray path writes)."""
    pa = _pyarrow()
    types = {"source": pa.string(), "error": pa.string(), "mode": pa.string()}
    types.update({key: pa.int64() for key in ("width", "height", "face")})
    types.update({"gender": pa.string(), "race": pa.string()})
    return pa.schema([(key, types.get(key, pa.float64())) for key in CSV_COLUMNS])


class PartWriter:
    """Results into numbered part files of `folder` (see the module docstring)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        fmt: str = "jsonl",
        resume: bool = False,
        part_size: int = 1000,
        part_seconds: float = 60.0,
    ):
        if fmt not in FORMATS:
            raise OptionError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if fmt == "parquet":
            _pyarrow()  # before any work
        self.folder, self.fmt = Path(folder), fmt
        self.part_size, self.part_seconds = max(1, part_size), part_seconds
        parts = list_parts(self.folder)
        if parts and not resume:
            raise OptionError(
                f"{self.folder} already holds {len(parts)} part files of an earlier run: "
                "add --resume to continue it, or choose another --out"
            )
        remove_stale(self.folder)  # the unfinished parts of a run that was killed
        self.done = done_sources(parts)
        self.number = max((int(_PART.fullmatch(p.name)[1]) + 1 for p in parts), default=0)
        self.buffer: list[Prediction] = []
        self.started = time.monotonic()

    def write(self, prediction: Prediction) -> None:
        self.buffer.append(prediction)
        full = len(self.buffer) >= self.part_size
        if full or time.monotonic() - self.started >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered results as the next part file (nothing when there are none)."""
        self.started = time.monotonic()
        if not self.buffer:
            return
        path = self.folder / f"part-{self.number:05d}.{self.fmt}"
        with atomic_open(path, "wb") as file:
            file.write(encode(self.buffer, self.fmt))
        self.number += 1
        self.buffer = []


def encode(predictions: list[Prediction], fmt: str) -> bytes:
    """The bytes of one part file."""
    if fmt == "jsonl":
        return "".join(json.dumps(p.to_dict()) + "\n" for p in predictions).encode()
    rows = [row for prediction in predictions for row in csv_rows(prediction)]
    if fmt == "csv":
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        return text.getvalue().encode()
    pa, pq = _pyarrow(), _pyarrow("parquet")
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), buffer)
    return buffer.getvalue().to_pybytes()


def list_parts(folder: Path) -> list[Path]:
    """The complete part files of `folder`, in number order."""
    if not folder.is_dir():
        return []
    parts = [p for p in folder.iterdir() if _PART.fullmatch(p.name)]
    return sorted(parts, key=lambda p: int(_PART.fullmatch(p.name)[1]))


def done_sources(parts: list[Path]) -> set[str]:
    """The `source` of every input the part files hold."""
    done: set[str] = set()
    for part in parts:
        if part.suffix == ".jsonl":
            with part.open(encoding="utf-8") as lines:
                done.update(json.loads(line)["source"] for line in lines if line.strip())
        elif part.suffix == ".csv":
            with part.open(newline="", encoding="utf-8") as file:
                done.update(row["source"] for row in csv.DictReader(file))
        else:
            table = _pyarrow("parquet").read_table(part, columns=["source"])
            done.update(table.column("source").to_pylist())
    return done


def join_parts(folder: Path, out: Path) -> None:
    """Concatenate `folder`'s parts into `out` (one CSV header) atomically, then remove
    `folder`."""
    parts = list_parts(folder)
    remove_stale(out.parent, out.name)  # a join that was killed
    with atomic_open(out, "wb") as target:
        if not parts and out.suffix.lower() == ".csv":
            target.write(encode([], "csv"))  # the header alone
        for index, part in enumerate(parts):
            with part.open("rb") as source:
                if part.suffix == ".csv" and index:
                    source.readline()  # the header, written once
                shutil.copyfileobj(source, target)
    shutil.rmtree(folder)


def _pyarrow(module: str = ""):
    """pyarrow, or its `parquet` module."""
    return require("pyarrow.parquet" if module == "parquet" else "pyarrow", PARQUET_HINT)
