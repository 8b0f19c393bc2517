"""Scoring during training: the weights and their moving average on `val` every epoch, and the
checkpoint chosen on `val` once on `test` at the end. The metrics come from `evaluate`'s
`build_report`, so a number printed while training means what it means in a report.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from utkface.data.dataset import Dataset
from utkface.evaluation import fairness
from utkface.evaluation.evaluate import build_report
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess

GENDER_ERROR_YEARS = 20.0  # model selection: 1 point of gender accuracy = 0.2 years of MAE


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
        """`n`, `mae`, `cs5`, `gender_acc`, `race_acc` (for the model's tasks), `max_abs_bias`
        and `gender_gap` (`fairness.summary`), `fairness` (its table's rows) and `score`, the
        selection score: age MAE + 20 x gender error rate (lower is better)."""
        indices = self.splits[split]
        images = self.dataset.images[indices]
        predictions = predict_arrays(model, self.preprocess, images, self.batch_size)
        report = build_report(self.dataset.labels(indices), predictions)
        result: dict = {"n": int(len(indices))}
        if report["age"]:
            result.update(mae=report["age"]["mae"], cs5=report["age"]["cs"]["5"])
        if report["gender"]:
            result["gender_acc"] = report["gender"]["accuracy"]
        if report["race"]:
            result["race_acc"] = report["race"]["accuracy"]
        result.update(fairness.summary(report), fairness=fairness.rows(report))
        gender_error = 1 - result["gender_acc"] if result.get("gender_acc") is not None else 0.0
        result["score"] = (result.get("mae") or 0.0) + GENDER_ERROR_YEARS * gender_error
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
