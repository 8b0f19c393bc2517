"""Age scored against interval labels: age bins such as FairFace's 0-2, 3-9, ..., 60-69, 70+.

An interval label says only that the age lies in `age_min..age_max` (whole years, both ends
inclusive), so a predicted age (a real number, the expectation of the model's distribution over
whole years) is scored by whether it lands in the bin. A prediction belongs to the whole year
it rounds to, the model's nearest age class: bin 20-29 holds the predictions in [19.5, 29.5).
The bins are the distinct intervals among the labels (they must not overlap, as FairFace's do
not); a prediction below the first or above the last belongs to that first or last bin.

- `accuracy`: share of faces whose predicted age falls in the labelled bin;
- `within_one`: share whose predicted bin is the labelled one or a neighbour;
- `interval_error`: mean years between the predicted age and the labelled bin (0 inside), the
  interval's counterpart of MAE (for an exact age it is the absolute error), which training
  uses to select checkpoints on interval sources;
- per bin and per group x bin (group: FairFace's 7 `race7` groups when the labels carry them,
  else the 5 races): n, mean predicted age, the share inside the bin and the shares below and
  above it.

Every function takes numpy arrays and returns JSON-ready values (None where undefined).
"""

from __future__ import annotations

import numpy as np

from utkface.evaluation.tables import num, pct, text_table
from utkface.runtime.names import RACES, UNKNOWN_RACE

HALF_YEAR = 0.5  # a prediction belongs to the year it rounds to


def is_interval(labels: dict) -> np.ndarray:
    """(N,) bool: the label is an age bin (age -1, see `names.UNKNOWN_AGE`)."""
    return np.asarray(labels["age"]) < 0


def bounds(age_min, age_max) -> tuple[np.ndarray, np.ndarray]:
    """The predicted ages that fall in each label's interval, as [low, high) on the real line
    (an exact age a: the point a itself)."""
    low, high = np.asarray(age_min, np.float64), np.asarray(age_max, np.float64)
    interval = high > low
    return (
        np.where(interval, low - HALF_YEAR, low),
        np.where(interval, high + HALF_YEAR, high),
    )


def age_error(pred, age_min, age_max) -> np.ndarray:
    """(N,) years between each predicted age and its label: 0 inside an interval, else the
    distance to its nearer edge; |pred - age| for an exact age."""
    low, high = bounds(age_min, age_max)
    pred = np.asarray(pred, np.float64)
    return np.maximum(np.maximum(low - pred, pred - high), 0.0)


def bin_edges(age_min, age_max) -> list[tuple[int, int]]:
    """The distinct (age_min, age_max) intervals of the labels, in order of age."""
    pairs = {(int(a), int(b)) for a, b in zip(age_min, age_max) if b > a}
    return sorted(pairs)


def bin_index(ages, bins: list[tuple[int, int]]) -> np.ndarray:
    """Each (real) age's position in `bins`, the first and last bins open-ended."""
    lows = np.array([low for low, _ in bins], dtype=np.float64) - HALF_YEAR
    index = np.searchsorted(lows, np.asarray(ages, np.float64), side="right") - 1
    return np.clip(index, 0, len(bins) - 1)


def bin_name(low: int, high: int, last: bool = False) -> str:
    return f"{low}+" if last else f"{low}-{high}"


def bin_metrics(labels: dict, predictions: dict, group: str | None = None) -> dict | None:
    """Bin accuracy, within-one-bin accuracy, interval error and the per bin and group x bin
    tables of the interval-labelled faces in `labels` (None when there are none). `group` is the
    labels column of the group x bin table (default `race7` when present, else `race`)."""
    chosen = is_interval(labels)
    if not chosen.any():
        return None
    pred = np.asarray(predictions["age"], np.float64)[chosen]
    low, high = (np.asarray(labels[key])[chosen] for key in ("age_min", "age_max"))
    bins = bin_edges(low, high)
    names = [bin_name(a, b, i == len(bins) - 1) for i, (a, b) in enumerate(bins)]
    true_bin = bin_index(low, bins)
    pred_bin = bin_index(pred, bins)
    group = group or ("race7" if "race7" in labels else "race")
    groups = _group_names(np.asarray(labels[group])[chosen], group)
    lower, upper = bounds(low, high)
    rows = []
    for name in dict.fromkeys([*_order(groups, group)]):
        for b, bin_label in enumerate(names):
            inside = (groups == name) & (true_bin == b)
            if inside.any():
                rows.append(_cell(name, bin_label, inside, pred, lower, upper))
    return {
        "n": int(chosen.sum()),
        "bins": names,
        "accuracy": float(np.mean((pred >= lower) & (pred < upper))),
        "within_one": float(np.mean(np.abs(true_bin - pred_bin) <= 1)),
        "interval_error": float(np.mean(age_error(pred, low, high))),
        "per_bin": [
            _cell("all", bin_label, true_bin == b, pred, lower, upper)
            for b, bin_label in enumerate(names)
            if (true_bin == b).any()
        ],
        "group": group,
        "group_bin": rows,
    }


def bin_lines(block: dict, breakdowns: dict, markdown: bool = True) -> list[str]:
    """The bins as text: the headline, per bin, per group x bin (mean predicted age and the
    share inside the bin) and, for the group column, gender accuracy per group and its gap."""
    bullet = "- " if markdown else ""
    lines = [
        f"{bullet}age bins  n={block['n']}  bin acc {pct(block['accuracy'])}  within one bin "
        f"{pct(block['within_one'])}  years outside the bin {num(block['interval_error'])}",
        "",
    ]
    header = ["bin", "n", "mean predicted age", "in bin", "below", "above"]
    rows = [
        [row["bin"], row["n"], num(row["mean_pred"], 1), *(pct(row[k]) for k in SHARES)]
        for row in block["per_bin"]
    ]
    lines += text_table(header, rows, markdown) + [""]
    cells = {(row["group"], row["bin"]): row for row in block["group_bin"]}
    groups = list(dict.fromkeys(row["group"] for row in block["group_bin"]))
    rows = [
        [group]
        + [_mean_cell(cells[group, b]) if (group, b) in cells else "-" for b in block["bins"]]
        for group in groups
    ]
    header = [f"{block['group']}: mean predicted age (in bin, n)", *block["bins"]]
    lines += text_table(header, rows, markdown)
    table = breakdowns.get(block["group"])
    if table:
        rows = [
            [row["group"], row["n"], pct(row["gender_accuracy"])]
            for row in table["rows"]
            if row["n"]
        ]
        lines += [""] + text_table([block["group"], "n", "gender acc"], rows, markdown)
        gap = table["gap"]["gender_accuracy"]
        if gap:
            lines += [""] if markdown else []
            lines.append(
                f"{bullet}gender accuracy gap between {block['group']} groups: {pct(gap['gap'])} "
                f"({gap['best']} {pct(gap['best_value'])}, {gap['worst']} "
                f"{pct(gap['worst_value'])}; groups with n >= {gap['min_n']})"
            )
    return lines


SHARES = ("in_bin", "below", "above")


def _mean_cell(row: dict) -> str:
    return f"{num(row['mean_pred'], 1)} ({pct(row['in_bin'], 0)}, {row['n']})"


def _cell(group: str, bin_label: str, inside, pred, lower, upper) -> dict:
    p = pred[inside]
    return {
        "group": group,
        "bin": bin_label,
        "n": int(inside.sum()),
        "mean_pred": float(p.mean()),
        "in_bin": float(np.mean((p >= lower[inside]) & (p < upper[inside]))),
        "below": float(np.mean(p < lower[inside])),
        "above": float(np.mean(p >= upper[inside])),
    }


def _group_names(values: np.ndarray, group: str) -> np.ndarray:
    if group == "race":
        names = np.array([*RACES, "unknown"], dtype=object)
        return names[np.where(values == UNKNOWN_RACE, len(RACES), values).astype(np.int64)]
    return np.where(values == "", "unknown", values).astype(object)


def _order(groups: np.ndarray, group: str) -> list[str]:
    if group == "race":
        return [*RACES, "unknown"]
    return sorted(set(groups.tolist()))
