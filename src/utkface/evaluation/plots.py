"""Evaluation plots as PNG files, headless.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, no display needed) and written to a temporary file that is renamed into place, so a
report never references a half-written image. `write_plots` draws every plot the tasks of a
model allow and returns `{plot name: file name}` for the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from utkface.runtime.atomic import atomic_open
from utkface.runtime.names import FAIRNESS_BANDS, GENDERS, MAX_AGE, RACES, UNKNOWN_RACE

DPI = 100
WORST_COUNT = 24  # faces on a contact sheet
PLOT_FILES = {
    "age_scatter": "age_pred_vs_true.png",
    "age_bands": "age_band_mae_bias.png",
    "fairness_bias": "age_bias_race_band.png",
    "cs_curve": "age_cs_curve.png",
    "worst_age": "worst_age_errors.png",
    "gender_confusion": "gender_confusion.png",
    "reliability": "gender_reliability.png",
    "worst_gender": "worst_gender_errors.png",
}


def write_plots(
    report: dict, labels: dict, predictions: dict, images: np.ndarray, out: str | os.PathLike
) -> dict[str, str]:
    """Draw the plots that `report`'s tasks allow into folder `out`.

    `labels` and `predictions` are the arrays the report was computed from, `images` the
    (N, S, S, 3) uint8 faces in the same order (for the contact sheets).
    """
    out = Path(out)
    written: dict[str, str] = {}

    def save(name: str, figure: Figure) -> None:
        save_figure(figure, out / PLOT_FILES[name])
        written[name] = PLOT_FILES[name]

    if report.get("age") and report["age"]["n"]:
        exact = np.asarray(labels["age"]) >= 0  # interval labels (age -1) have no age error
        save("age_scatter", age_scatter(labels["age"][exact], predictions["age"][exact]))
        save("age_bands", age_bands(report["breakdowns"]["age_band"]["rows"]))
        save("cs_curve", cs_curve(report["age"]["cs"], report["age"]["n"]))
        save(
            "fairness_bias",
            bias_heatmap(report["breakdowns"]["race_age"]["rows"], report["fairness"]["min_n"]),
        )
        error = np.where(exact, np.abs(predictions["age"] - labels["age"]), -1.0)
        worst = np.argsort(-error, kind="stable")
        worst = worst[:WORST_COUNT]
        save(
            "worst_age",
            contact_sheet(
                images[worst], _captions(worst, labels, predictions), "largest age errors"
            ),
        )
    if report.get("gender") and report["gender"]["n"]:
        save("gender_confusion", gender_confusion(np.array(report["gender"]["confusion"])))
        save("reliability", reliability(report["gender"]["reliability"], report["gender"]["ece"]))
        miss = np.abs(predictions["gender_prob"] - labels["gender"])  # 1 = sure and wrong
        worst = np.argsort(-miss, kind="stable")[:WORST_COUNT]
        worst = worst[miss[worst] > 0.5]  # misclassified only
        if len(worst):
            save(
                "worst_gender",
                contact_sheet(
                    images[worst],
                    _captions(worst, labels, predictions),
                    "most confident gender errors",
                ),
            )
    return written


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Render `figure` to PNG at `path` through a temp file in the same folder and a rename."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_open(path) as file:
        figure.savefig(file, format="png", dpi=DPI)
    return path


def age_scatter(age: np.ndarray, pred: np.ndarray) -> Figure:
    """Hexbin of predicted vs true age, log-scaled counts, with the identity line."""
    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    cells = axes.hexbin(
        age,
        pred,
        gridsize=40,
        extent=(0, MAX_AGE, 0, MAX_AGE),
        mincnt=1,
        bins="log",
        cmap="viridis",
    )
    axes.plot([0, MAX_AGE], [0, MAX_AGE], color="tab:red", linewidth=1, label="predicted = true")
    axes.set(
        xlim=(0, MAX_AGE),
        ylim=(0, MAX_AGE),
        xlabel="true age",
        ylabel="predicted age",
        title=f"Predicted vs true age (n={len(age)})",
        aspect="equal",
    )
    axes.legend(loc="upper left")
    figure.colorbar(cells, ax=axes, label="images (log scale)")
    return figure


def age_bands(rows: list[dict]) -> Figure:
    """MAE (top) and mean signed error (bottom) per age band, with each band's n."""
    figure = Figure(figsize=(8, 5.5))
    top, bottom = figure.subplots(2, 1, sharex=True)
    x = np.arange(len(rows))
    mae = [row["mae"] if row["mae"] is not None else 0.0 for row in rows]
    bias = [row["bias"] if row["bias"] is not None else 0.0 for row in rows]
    top.bar(x, mae, color="tab:blue")
    for i, row in enumerate(rows):
        top.annotate(f"n={row['n']}", (i, mae[i]), ha="center", va="bottom", fontsize=8)
    top.margins(y=0.15)  # room for the n= labels
    top.set(ylabel="MAE (years)", title="Age error by true age band")
    bottom.bar(x, bias, color=["tab:red" if b > 0 else "tab:green" for b in bias])
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set(ylabel="bias: predicted - true", xlabel="true age band")
    bottom.set_xticks(x, [row["group"] for row in rows])
    return figure


def bias_heatmap(rows: list[dict], min_n: int = 20) -> Figure:
    """Age bias (predicted - true) per race x age band cell, red = over-, blue = under-estimated,
    each cell labelled with its bias and n; cells under `min_n` images are hatched."""
    bands = [name for name, _, _ in FAIRNESS_BANDS]
    cells = {row["group"]: row for row in rows}
    races = [race for race in (*RACES, "unknown") if any(cells[f"{race}/{b}"]["n"] for b in bands)]
    bias = np.array(
        [[cells[f"{race}/{band}"]["bias"] for band in bands] for race in races], dtype=np.float64
    )  # (races, bands), NaN for empty cells
    counts = np.array([[cells[f"{race}/{band}"]["n"] for band in bands] for race in races])
    ranked = np.abs(bias[counts >= min_n]) if (counts >= min_n).any() else np.abs(bias).ravel()
    limit = max(1.0, float(np.nanmax(ranked, initial=0.0)))  # thin cells do not set the scale
    figure = Figure(figsize=(6.5, 1.0 + 0.6 * len(races)))
    axes = figure.add_subplot()
    image = axes.imshow(bias, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    for i, race in enumerate(races):
        for j, band in enumerate(bands):
            row = cells[f"{race}/{band}"]
            text = "-" if row["bias"] is None else f"{row['bias']:+.1f}\nn={row['n']}"
            dark = row["bias"] is not None and abs(row["bias"]) > 0.6 * limit
            colour = "white" if dark else "black"
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
            if row["n"] < min_n:
                axes.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", alpha=0.3)
                )
    axes.set_xticks(range(len(bands)), bands)
    axes.set_yticks(range(len(races)), races)
    axes.set(xlabel="true age band", title=f"Age bias by race x age band (hatched: n < {min_n})")
    figure.colorbar(image, ax=axes, label="predicted - true (years)")
    figure.tight_layout()
    return figure


def cs_curve(cs: dict, n: int) -> Figure:
    """Cumulative score: share of predictions within k years, k = 1..10."""
    figure = Figure(figsize=(5.5, 4))
    axes = figure.add_subplot()
    ks = [int(k) for k in cs]
    shares = [100 * cs[k] for k in cs]
    axes.plot(ks, shares, marker="o")
    if "5" in cs:
        axes.annotate(
            f"CS@5 = {100 * cs['5']:.1f}%",
            (5, 100 * cs["5"]),
            textcoords="offset points",
            xytext=(8, -12),
        )
    axes.set(
        xlabel="k (years)",
        ylabel="share within k years (%)",
        ylim=(0, 100),
        xticks=ks,
        title=f"Cumulative score (n={n})",
    )
    axes.grid(alpha=0.3)
    return figure


def gender_confusion(confusion: np.ndarray) -> Figure:
    """2x2 matrix coloured by row share (recall), annotated with counts and percentages."""
    figure = Figure(figsize=(4.5, 4))
    axes = figure.add_subplot()
    totals = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(confusion):
        axes.text(
            j,
            i,
            f"{count}\n{100 * share[i, j]:.1f}%",
            ha="center",
            va="center",
            color="white" if share[i, j] > 0.5 else "black",
        )
    axes.set_xticks(range(2), GENDERS)
    axes.set_yticks(range(2), GENDERS)
    axes.set(xlabel="predicted", ylabel="true", title=f"Gender (n={int(confusion.sum())})")
    return figure


def reliability(bins: list[dict], ece: float | None) -> Figure:
    """Observed share of females against mean P(female) per bin, and the bin counts below."""
    figure = Figure(figsize=(5, 6))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    used = [row for row in bins if row["n"]]
    width = bins[0]["high"] - bins[0]["low"]
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    top.bar(
        [row["low"] for row in used],
        [row["frac_positive"] for row in used],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="observed share female",
    )
    top.plot(
        [row["mean_prob"] for row in used],
        [row["frac_positive"] for row in used],
        "o",
        color="tab:red",
        label="bin mean P(female)",
    )
    ece_text = "n/a" if ece is None else f"{ece:.3f}"
    top.set(
        ylabel="observed share female",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Gender reliability ({len(bins)} bins, ECE {ece_text})",
    )
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(
        [row["low"] for row in bins],
        [row["n"] for row in bins],
        width=width,
        align="edge",
        color="tab:gray",
    )
    bottom.set(xlabel="predicted P(female)", ylabel="images")
    return figure


def contact_sheet(faces: np.ndarray, captions: list[str], title: str, columns: int = 6) -> Figure:
    """Faces (K, S, S, 3) uint8 tiled into one image, each under its caption. One image and K
    texts draw many times faster than K axes."""
    count, side = len(faces), faces.shape[1]
    rows, columns = max(1, -(-count // columns)), max(1, min(columns, count))
    strip, pad = side // 3, max(side // 16, 1)  # caption room above each face, gap beside it
    cell_w, cell_h = side + pad, side + strip
    mosaic = np.full((rows * cell_h, columns * cell_w - pad, 3), 255, dtype=np.uint8)
    figure = Figure(figsize=(2 * columns, 2.4 * rows + 0.4))
    axes = figure.add_axes((0, 0, 1, 2.4 * rows / (2.4 * rows + 0.4)))
    for i, (face, caption) in enumerate(zip(faces, captions)):
        top, left = (i // columns) * cell_h + strip, (i % columns) * cell_w
        mosaic[top : top + side, left : left + side] = face
        axes.text(left + side / 2, top - 1, caption, ha="center", va="bottom", fontsize=8)
    axes.imshow(mosaic, interpolation="nearest")
    axes.axis("off")
    figure.suptitle(title)
    return figure


def _captions(indices: np.ndarray, labels: dict, predictions: dict) -> list[str]:
    """Two lines per face: the true labels, then the predictions the model makes."""
    captions = []
    for i in indices:
        race = int(labels["race"][i])
        age = int(labels["age"][i])
        if age < 0:  # an interval label
            age = f"{int(labels['age_min'][i])}-{int(labels['age_max'][i])}"
        truth = f"true {age} {GENDERS[int(labels['gender'][i])][0].upper()}"
        truth += f" {RACES[race] if race != UNKNOWN_RACE else '?'}"
        guess = []
        if "age" in predictions:
            guess.append(f"{predictions['age'][i]:.0f}")
            if "age_low" in predictions:
                guess.append(f"[{predictions['age_low'][i]:.0f}-{predictions['age_high'][i]:.0f}]")
        if "gender_prob" in predictions:
            guess.append(f"P(F)={predictions['gender_prob'][i]:.2f}")
        captions.append(f"{truth}\npred {' '.join(guess)}")
    return captions


def training_curves(history: list[dict]) -> Figure:
    """Per-epoch training loss, validation age MAE and validation gender accuracy (of the
    trained weights and, where the run kept one, of their moving average)."""
    figure = Figure(figsize=(12, 3.6))
    epochs = [row["epoch"] for row in history]
    panels = [
        ("training loss", {"train_loss": None}),
        ("validation age MAE (years)", {"val_mae": "weights", "val_ema_mae": "average"}),
        (
            "validation gender accuracy",
            {"val_gender_acc": "weights", "val_ema_gender_acc": "average"},
        ),
        ("validation age bin accuracy", {"val_bin_acc": "weights", "val_ema_bin_acc": "average"}),
    ]
    present = {key for row in history for key in row}
    panels = [(title, lines) for title, lines in panels if present & set(lines)]
    for index, (title, lines) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        for key, label in lines.items():
            if key in present:
                values = [row.get(key, np.nan) for row in history]
                axes.plot(epochs, values, marker="o", label=label)
        if len(present & set(lines)) > 1:
            axes.legend()
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
