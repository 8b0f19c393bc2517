"""The fairness table of a training run: `fairness.csv` in the run folder.

Every epoch's validation adds, for the trained weights and for their moving average, one row per
race x age band cell (age MAE and bias) and one per race (gender accuracy), with counts. The
numbers are those of `evaluate.build_report` (`metrics.group_table`); this module only flattens
them into rows, keeps the file, and prints the table of the selected epoch at the end of a run.
The two headline numbers (largest |age bias| over cells with n >= 20, gender accuracy gap
between races) go into `metrics.csv` as `val_max_abs_bias` and `val_gender_gap`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from utkface.evaluation.report import fairness_table
from utkface.runtime.atomic import atomic_write

FILE = "fairness.csv"
COLUMNS = ("epoch", "weights", "table", "group", "n", "age_n", "mae", "bias", "gender_accuracy")
TABLES = ("race_age", "race")  # breakdowns kept: race x age band cells, and races


def summary(report: dict) -> dict:
    """`{"max_abs_bias", "gender_gap"}` of an `evaluate.build_report` report (None if unranked)."""
    return {key: report["fairness"][key] for key in ("max_abs_bias", "gender_gap")}


def rows(report: dict) -> list[dict]:
    """The race x age band and race rows of a report, flat: table, group, n, mae, bias,
    gender_accuracy (None where undefined)."""
    return [
        {"table": table, **row} for table in TABLES for row in report["breakdowns"][table]["rows"]
    ]


def record(run_dir: str | Path, epoch: int, tables: dict[str, list[dict]]) -> Path:
    """Add epoch `epoch`'s `{weights name: rows}` to `run_dir/fairness.csv`, replacing rows of
    that epoch already there (a resumed run redoes an epoch whose checkpoint was not saved)."""
    path = Path(run_dir) / FILE
    kept = [row for row in read(path) if int(row["epoch"]) != epoch]
    new = [
        {"epoch": epoch, "weights": weights, **row}
        for weights, table in tables.items()
        for row in table
    ]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept + [{key: _cell(row[key]) for key in COLUMNS} for row in new])
    atomic_write(path, text.getvalue())
    return path


def read(path: str | Path) -> list[dict]:
    """The rows of a fairness.csv as strings (empty list when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def table_text(run_dir: str | Path, epoch: int, weights: str) -> str:
    """The console table of one epoch's validation (as `report.fairness_table` draws it)."""
    chosen = [
        row
        for row in read(Path(run_dir) / FILE)
        if (int(row["epoch"]), row["weights"]) == (epoch, weights)
    ]
    tables = {table: [_parse(row) for row in chosen if row["table"] == table] for table in TABLES}
    title = f"val fairness, epoch {epoch} ({weights}): age bias / MAE (n), gender accuracy (n)"
    return "\n".join([title, *fairness_table(tables["race_age"], tables["race"], markdown=False)])


def _parse(row: dict) -> dict:
    """A CSV row back into a `metrics.group_table` row."""
    number = {key: None if row[key] == "" else float(row[key]) for key in COLUMNS[-3:]}
    n = int(row["n"])  # age_n: exact ages among them (files from before age bins: all)
    return {"group": row["group"], "n": n, "age_n": int(row.get("age_n") or n), **number}


def _cell(value):
    return "" if value is None else value
