"""What a run shows of its epochs: `metrics.csv` (one row per epoch), `curves.png` (its plot)
and one summary line per epoch on the console."""

from __future__ import annotations

import csv
from pathlib import Path

from utkface.evaluation.plots import save_figure, training_curves
from utkface.runtime.atomic import atomic_open


def write_epoch_files(out: Path, history: list[dict]) -> None:
    """Rewrite `metrics.csv` and `curves.png` from every row so far (atomically each)."""
    fields = list(dict.fromkeys(key for row in history for key in row))
    with atomic_open(out / "metrics.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
    save_figure(training_curves(history), out / "curves.png")


def format_metrics(values: dict) -> str:
    names = {
        "mae": "MAE {:.2f}",
        "cs5": "CS@5 {:.1%}",
        "bin_acc": "bin acc {:.1%}",  # age bins (interval labels)
        "gender_acc": "gender acc {:.2%}",
        "race_acc": "race acc {:.2%}",
        "max_abs_bias": "max |bias| {:.2f}",  # over race x age band cells with n >= 20
        "gender_gap": "race gender gap {:.1%}",
    }
    text = ", ".join(
        fmt.format(values[key]) for key, fmt in names.items() if values.get(key) is not None
    )
    return text + (f" (n={values['n']})" if "n" in values else "")


def summary_line(row: dict) -> str:
    val = {key[4:]: value for key, value in row.items() if key.startswith("val_")}
    ema = {key[8:]: value for key, value in row.items() if key.startswith("val_ema_")}
    average = f" | average {format_metrics(ema)}" if ema else ""
    return (
        f"epoch {row['epoch']:3d} | loss {row['train_loss']:.3f} | val {format_metrics(val)}"
        f"{average} | {row['images_per_s']:.0f} img/s | {row['seconds']:.0f} s"
    )
