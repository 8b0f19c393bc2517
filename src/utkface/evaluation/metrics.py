"""Evaluation metrics on numpy arrays: gender, age, race, calibration and per-group breakdowns.

Every function takes plain arrays and returns a JSON-ready dict of Python ints, floats, strings
and None. A metric that is undefined on its input (no samples, one class only) is None, never
NaN, and every block carries the sample count `n` it was computed on. Nothing here needs torch,
so `evaluate`, training's validation and the tests all share these exact definitions.

Conventions: gender 0 = male, 1 = female, scored from P(female) thresholded at 0.5; race 0..4
with -1 = unknown (left out of race accuracy, its own "unknown" group in breakdowns). Age -1 is
an age bin (`age_min..age_max`, scored by `age_bins`): MAE and bias leave it out (`age_n` counts
a group's exact ages, which rank MAE gaps), and its band is its interval's (`names.band_ages`).
"""

from __future__ import annotations

import numpy as np

from utkface.runtime.names import (
    AGE_BANDS,
    FAIRNESS_BANDS,
    GENDERS,
    RACES,
    UNKNOWN_RACE,
    band_ages,
    band_index,
)

CS_KS = tuple(range(1, 11))  # CS@k: share of ages predicted within k years; CS@5 is the headline
ECE_BINS = 15
LOG_LOSS_EPS = 1e-7  # probabilities come as float32: a sure mistake costs ~16 nats, not infinity
UNKNOWN = "unknown"  # group name of race -1
MIN_GROUP_N = 20  # groups smaller than this are listed but not ranked for best-worst gaps
GROUPINGS = ("age_band", "gender", "race", "race_gender", "race_age")


# ---------------------------------------------------------------------------------------------
# gender


def gender_metrics(gender, prob, threshold: float = 0.5, bins: int = ECE_BINS) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, ROC-AUC, log-loss and the
    ECE of P(female) for true labels `gender` (N,) in {0, 1} and `prob` (N,) = P(female)."""
    y, p = _labels(gender, 2), np.asarray(prob, dtype=np.float64).ravel()
    _same_length(y, p)
    n = len(y)
    confusion = confusion_matrix(y, (p >= threshold).astype(np.int64), 2)
    support = confusion.sum(axis=1)
    recalls = [confusion[c, c] / support[c] for c in range(2) if support[c]]
    notes = []
    if n and min(support) == 0:
        present = GENDERS[int(np.argmax(support))]
        notes.append(
            f"only {present} samples: ROC-AUC is undefined (null) and balanced accuracy is "
            f"the {present} recall"
        )
    reliability = reliability_bins(y, p, bins)
    return {
        "n": n,
        "accuracy": _ratio(np.trace(confusion), n),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "per_class": {GENDERS[c]: _class_scores(confusion, c) for c in range(2)},
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(reliability, n),
        "threshold": threshold,
        "confusion": confusion.tolist(),  # rows: true male, female; columns: predicted
        "reliability": reliability,
        "notes": notes,
    }


def confusion_matrix(true, pred, classes: int) -> np.ndarray:
    """(classes, classes) counts, rows = true class, columns = predicted class."""
    true, pred = _labels(true, classes), _labels(pred, classes)
    _same_length(true, pred)
    return np.bincount(true * classes + pred, minlength=classes * classes).reshape(classes, classes)


def roc_auc(true, score) -> float | None:
    """Area under the ROC curve as the Mann-Whitney statistic: the chance that a random positive
    scores above a random negative, ties counting one half. None when a class is missing."""
    y, s = np.asarray(true).ravel() == 1, np.asarray(score, dtype=np.float64).ravel()
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(true, prob, eps: float = LOG_LOSS_EPS) -> float | None:
    """Mean binary cross-entropy in nats, with `prob` clipped to [eps, 1 - eps]."""
    y = np.asarray(true, dtype=np.float64).ravel()
    if len(y) == 0:
        return None
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def reliability_bins(true, prob, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of P(female) on [0, 1] (the last one closed): per bin the sample count,
    the mean predicted probability and the observed share of females (None when empty)."""
    y = np.asarray(true, dtype=np.float64).ravel()
    p = np.asarray(prob, dtype=np.float64).ravel()
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "n": count,
                "mean_prob": float(p[inside].mean()) if count else None,
                "frac_positive": float(y[inside].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(reliability: list[dict], n: int) -> float | None:
    """ECE = sum over bins of (bin share of samples) * |mean P(female) - observed female share|."""
    if n == 0:
        return None
    return float(
        sum(
            row["n"] / n * abs(row["mean_prob"] - row["frac_positive"])
            for row in reliability
            if row["n"]
        )
    )


# ---------------------------------------------------------------------------------------------
# age


def age_metrics(age, pred, low=None, high=None, nominal: float | None = None) -> dict:
    """MAE, RMSE, median absolute error, bias (mean of predicted - true), CS@1..10 and, when the
    model gives an interval [low, high], the share of true ages inside it (bounds included)."""
    y = np.asarray(age, dtype=np.float64).ravel()
    p = np.asarray(pred, dtype=np.float64).ravel()
    _same_length(y, p)
    n, error = len(y), p - y
    absolute = np.abs(error)
    interval = None
    if low is not None and high is not None:
        low, high = (
            np.asarray(low, dtype=np.float64).ravel(),
            np.asarray(high, dtype=np.float64).ravel(),
        )
        _same_length(y, low, high)
        interval = {
            "n": n,
            "coverage": _mean((low <= y) & (y <= high)),
            "mean_width": _mean(high - low),
            "nominal": nominal,
        }
    return {
        "n": n,
        "mae": _mean(absolute),
        "rmse": float(np.sqrt(np.mean(error**2))) if n else None,
        "median_ae": float(np.median(absolute)) if n else None,
        "bias": _mean(error),
        "cs": {str(k): _mean(absolute <= k) for k in CS_KS},
        "interval": interval,
    }


# ---------------------------------------------------------------------------------------------
# race


def race_metrics(race, prob) -> dict:
    """Accuracy and confusion matrix of argmax(prob) (N, 5) over the samples of known race."""
    race = np.asarray(race, dtype=np.int64).ravel()
    prob = np.asarray(prob, dtype=np.float64).reshape(len(race), len(RACES))
    known = race != UNKNOWN_RACE
    confusion = confusion_matrix(race[known], prob[known].argmax(axis=1), len(RACES))
    n = int(known.sum())
    return {
        "n": n,
        "n_unknown": int((~known).sum()),
        "accuracy": _ratio(np.trace(confusion), n),
        "per_class": {RACES[c]: _class_scores(confusion, c) for c in range(len(RACES))},
        "confusion": confusion.tolist(),  # rows: true race, columns: predicted, order of RACES
    }


# ---------------------------------------------------------------------------------------------
# breakdowns


def group_names(labels: dict, by: str) -> tuple[np.ndarray, list[str]]:
    """Each sample's group name under grouping `by`, and all group names in report order
    (including groups with no samples)."""
    if by in ("age_band", "fairness_band"):
        bands = AGE_BANDS if by == "age_band" else FAIRNESS_BANDS
        ages = band_ages(*(labels.get(key, labels["age"]) for key in ("age_min", "age_max")))
        index = band_index(ages, bands)
        order = [name for name, _, _ in bands]
        return np.array(order, dtype=object)[index], order
    if by == "gender":
        return np.array(GENDERS, dtype=object)[np.asarray(labels["gender"])], list(GENDERS)
    if by == "race":
        order = list(RACES) + [UNKNOWN]
        return np.array(order, dtype=object)[np.asarray(labels["race"])], order  # -1 -> UNKNOWN
    if by in ("race_gender", "race_age"):  # cells "race/gender", "race/fairness band"
        races, race_order = group_names(labels, "race")
        second = "gender" if by == "race_gender" else "fairness_band"
        inner, inner_order = group_names(labels, second)
        order = [f"{race}/{name}" for race in race_order for name in inner_order]
        return np.array([f"{r}/{g}" for r, g in zip(races, inner)], dtype=object), order
    if by in _named(labels):  # source, race7, ...
        names = np.asarray(labels[by], dtype=object)  # in order of first appearance
        names = np.where(names == "", UNKNOWN, names)
        return names, list(dict.fromkeys(names.tolist()))
    raise ValueError(f"unknown grouping {by!r}; choose one of {', '.join(GROUPINGS)}")


def group_table(labels: dict, predictions: dict, by: str, min_n: int = 1) -> dict:
    """Per group: n, age MAE and bias, gender accuracy (None where the task is missing or the
    group is empty), and the best-worst gap over groups with at least `min_n` samples."""
    labels = {key: np.asarray(value) for key, value in labels.items()}
    names, order = group_names(labels, by)
    rows = [_group_row(name, names == name, labels, predictions) for name in order]
    return {
        "rows": rows,
        "gap": {
            "mae": _gap(rows, "mae", min_n, higher_is_better=False),
            "gender_accuracy": _gap(rows, "gender_accuracy", min_n, higher_is_better=True),
        },
    }


def breakdowns(labels: dict, predictions: dict, min_n: int = 1) -> dict:
    """`group_table` for every grouping in GROUPINGS, and by every column of names (object
    arrays: "source", an extra labels column such as "race7") that names more than one group."""
    groupings = GROUPINGS + tuple(k for k in _named(labels) if len(set(labels[k])) > 1)
    return {by: group_table(labels, predictions, by, min_n) for by in groupings}


def fairness(tables: dict, min_n: int = MIN_GROUP_N) -> dict:
    """The two fairness headlines from `breakdowns`' tables: the largest |age bias| over the
    race x age band cells with n >= `min_n`, and the best-worst gap of gender accuracy between
    races with n >= `min_n` (unknown race left out of both). None where nothing can be ranked."""
    cells = [
        row
        for row in tables["race_age"]["rows"]
        if row["age_n"] >= max(min_n, 1) and row["bias"] is not None
        if not row["group"].startswith(UNKNOWN + "/")
    ]
    worst = max(cells, key=lambda row: abs(row["bias"]), default=None)
    races = [row for row in tables["race"]["rows"] if row["group"] != UNKNOWN]
    gap = _gap(races, "gender_accuracy", min_n, higher_is_better=True)
    return {
        "min_n": min_n,
        "max_abs_bias": abs(worst["bias"]) if worst else None,
        "max_abs_bias_cell": {key: worst[key] for key in ("group", "n", "bias", "mae")}
        if worst
        else None,
        "gender_gap": gap["gap"] if gap else None,
        "gender_gap_races": gap,
    }


def _named(labels: dict) -> list[str]:
    """The label columns of names (strings), not numbers: source, extra CSV columns."""
    return [key for key, value in labels.items() if np.asarray(value).dtype.kind in "OUS"]


def _group_row(name: str, inside: np.ndarray, labels: dict, predictions: dict) -> dict:
    n, exact = int(inside.sum()), inside & (labels["age"] >= 0)
    row = {"group": name, "n": n, "age_n": int(exact.sum()), "mae": None, "bias": None}
    row["gender_accuracy"] = None
    if "age" in predictions:
        error = np.asarray(predictions["age"], dtype=np.float64)[exact] - labels["age"][exact]
        row["mae"], row["bias"] = _mean(np.abs(error)), _mean(error)
    if "gender_prob" in predictions:
        predicted = np.asarray(predictions["gender_prob"])[inside] >= 0.5
        row["gender_accuracy"] = _mean(predicted == (labels["gender"][inside] == 1))
    return row


def _gap(rows: list[dict], metric: str, min_n: int, higher_is_better: bool) -> dict | None:
    """Best and worst group by `metric` among groups with n >= min_n (for MAE, exact ages:
    `age_n`); None with fewer than two."""
    count = "age_n" if metric == "mae" else "n"
    ranked = sorted(
        (row for row in rows if row[count] >= max(min_n, 1) and row[metric] is not None),
        key=lambda row: row[metric],
        reverse=higher_is_better,
    )
    if len(ranked) < 2:
        return None
    best, worst = ranked[0], ranked[-1]
    return {
        "best": best["group"],
        "best_value": best[metric],
        "best_n": best[count],
        "worst": worst["group"],
        "worst_value": worst[metric],
        "worst_n": worst[count],
        "gap": abs(best[metric] - worst[metric]),
        "min_n": min_n,
    }


# ---------------------------------------------------------------------------------------------
# helpers


def _class_scores(confusion: np.ndarray, c: int) -> dict:
    """Support, precision, recall and F1 of class `c`; None where a denominator is zero."""
    tp = int(confusion[c, c])
    predicted, actual = int(confusion[:, c].sum()), int(confusion[c, :].sum())
    return {
        "n": actual,
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, actual),
        "f1": _ratio(2 * tp, predicted + actual),
    }


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def _labels(values, classes: int) -> np.ndarray:
    array = np.asarray(values).ravel().astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got {array.min()}..{array.max()}")
    return array


def _same_length(*arrays: np.ndarray) -> None:
    if len({len(array) for array in arrays}) > 1:
        raise ValueError(f"arrays differ in length: {[len(array) for array in arrays]}")


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _ratio(numerator, denominator) -> float | None:
    return float(numerator / denominator) if denominator else None
