"""Scoring during training: the weights and their moving average on `val` every epoch, and the
checkpoint chosen on `val` once on `test` at the end. The metrics come from `evaluate`'s
`build_report`, so a number printed while training means what it means in a report.

With several sources (`--data A --data B`) each is also scored on its own: its columns carry
its key (`multisource.column_names`: `val_utkface_mae`, `val_fairface_bin_acc`,
`val_fairface_gender_acc`, ...). The selection score is age error + 20 x gender error rate,
where the age error is `age_bins.age_error` (the absolute error of an exact age, the distance
from the labelled bin of an interval, so a source of age bins counts in years as well); with
several sources it is the mean of their scores, each source weighing the same whatever its size.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from utkface.data.dataset import Dataset
from utkface.data.multisource import column_names
from utkface.evaluation import age_bins, fairness
from utkface.evaluation.evaluate import build_report
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess

GENDER_ERROR_YEARS = 20.0  # model selection: 1 point of gender accuracy = 0.2 years of MAE


def headlines(report: dict) -> dict:
    """The metrics.csv headlines of a `build_report` report, for the blocks it has."""
    result = {}
    if report["age"]:
        result.update(mae=report["age"]["mae"], cs5=report["age"]["cs"]["5"])
    if report.get("age_bins"):
        bins = report["age_bins"]
        result.update(bin_acc=bins["accuracy"], bin_within_one=bins["within_one"])
    if report["gender"]:
        result["gender_acc"] = report["gender"]["accuracy"]
    if report["race"]:
        result["race_acc"] = report["race"]["accuracy"]
    return result


def selection_score(labels: dict, predictions: dict) -> float:
    """Mean age error in years (`age_bins.age_error`: MAE for exact ages) + 20 x gender error
    rate, for the tasks the model has."""
    score = 0.0
    if "age" in predictions:
        error = age_bins.age_error(predictions["age"], labels["age_min"], labels["age_max"])
        score += float(error.mean())
    if "gender_prob" in predictions:
        correct = (predictions["gender_prob"] >= 0.5) == (labels["gender"] == 1)
        score += GENDER_ERROR_YEARS * (1.0 - float(correct.mean()))
    return score


class Validator:
    def __init__(
        self,
        dataset: Dataset,
        splits: dict[str, np.ndarray],
        preprocess: Preprocess,
        batch_size: int,
    ):
        self.dataset, self.splits = dataset, splits
        self.preprocess, self.batch_size = preprocess, batch_size

    def scores(self, model: nn.Module, split: str = "val") -> dict:
        """`n`, `mae`, `cs5` (exact ages), `bin_acc`, `bin_within_one` (age bins), `gender_acc`,
        `race_acc` (for the model's tasks), `max_abs_bias` and `gender_gap`
        (`fairness.summary`), `fairness` (its table's rows), the same headlines per source
        (`<key>_mae`, ...) when there are several, and `score`, the selection score (lower is
        better, see the module docstring)."""
        indices = self.splits[split]
        images = self.dataset.images[indices]
        predictions = predict_arrays(model, self.preprocess, images, self.batch_size)
        labels = self.dataset.labels(indices)
        report = build_report(labels, predictions)
        result: dict = {"n": int(len(indices)), **headlines(report)}
        result.update(fairness.summary(report), fairness=fairness.rows(report))
        sources = np.array([self.dataset.records[i].source for i in indices], dtype=object)
        names = list(dict.fromkeys(sources.tolist()))
        if len(names) < 2:
            result["score"] = selection_score(labels, predictions)
            return result
        scores = []
        for name, key in column_names(names).items():
            inside = sources == name
            part = {column: value[inside] for column, value in labels.items()}
            predicted = {column: value[inside] for column, value in predictions.items()}
            result.update(
                {f"{key}_{k}": v for k, v in headlines(build_report(part, predicted)).items()}
            )
            result[f"{key}_score"] = selection_score(part, predicted)
            scores.append(result[f"{key}_score"])
        result["score"] = float(np.mean(scores))
        return result

    def epoch_columns(
        self, model: nn.Module, average: nn.Module | None
    ) -> tuple[dict, dict, nn.Module, float]:
        """The `val_*` (and `val_ema_*`, `selected`) columns of an epoch's metrics row, the
        fairness tables (`{"weights"|"ema": rows}`, for fairness.csv), the better of the
        weights and their average, and its score."""
        weights = self.scores(model)
        tables = {"weights": weights.pop("fairness")}
        columns = {f"val_{key}": value for key, value in weights.items() if key != "n"}
        if average is None:
            return columns, tables, model, weights["score"]
        averaged = self.scores(average)
        tables["ema"] = averaged.pop("fairness")
        columns.update({f"val_ema_{key}": value for key, value in averaged.items() if key != "n"})
        better = averaged["score"] < weights["score"]
        columns["selected"] = "ema" if better else "weights"
        best = min(averaged["score"], weights["score"])
        return columns, tables, (average if better else model), best
