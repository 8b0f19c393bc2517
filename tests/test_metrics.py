"""Every metric against values worked out by hand on small arrays, with the edge cases:
one class only, empty input or group, perfect predictions."""

import math

import numpy as np
import pytest

from utkface.evaluation import metrics

# Five gender samples worked through by hand: threshold 0.5 predicts [0, 1, 0, 1, 1].
Y = np.array([0, 0, 1, 1, 1])
P = np.array([0.1, 0.6, 0.4, 0.8, 0.9])


def test_gender_metrics_by_hand():
    result = metrics.gender_metrics(Y, P)
    assert result["n"] == 5
    assert result["confusion"] == [[1, 1], [1, 2]]
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    male, female = result["per_class"]["male"], result["per_class"]["female"]
    assert (male["n"], male["precision"], male["recall"], male["f1"]) == (2, 0.5, 0.5, 0.5)
    assert female["n"] == 3
    assert female["precision"] == pytest.approx(2 / 3)
    assert female["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # positives 0.4, 0.8, 0.9 vs negatives 0.1, 0.6: 5 of 6 pairs ordered right
    assert result["roc_auc"] == pytest.approx(5 / 6)
    expected = -(2 * math.log(0.9) + 2 * math.log(0.4) + math.log(0.8)) / 5
    assert result["log_loss"] == pytest.approx(expected)
    # each sample sits alone in its bin (15 bins): ECE = mean |p - y| = 1.6 / 5
    assert result["ece"] == pytest.approx(0.32)
    assert result["notes"] == []


def test_reliability_bins_by_hand():
    bins = metrics.reliability_bins([0, 1, 1, 0], [0.05, 0.1, 0.95, 1.0], bins=2)
    assert [row["n"] for row in bins] == [2, 2]  # p = 1.0 falls in the last, closed bin
    assert bins[0]["mean_prob"] == pytest.approx(0.075)
    assert bins[0]["frac_positive"] == pytest.approx(0.5)
    assert bins[1]["mean_prob"] == pytest.approx(0.975)
    assert metrics.expected_calibration_error(bins, 4) == pytest.approx(
        0.5 * abs(0.075 - 0.5) + 0.5 * abs(0.975 - 0.5)
    )
    empty_bins = metrics.reliability_bins([1], [0.9], bins=15)
    assert sum(row["n"] for row in empty_bins) == 1
    assert empty_bins[0]["mean_prob"] is None and empty_bins[0]["frac_positive"] is None


def test_roc_auc_counts_ties_as_half():
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(3.5 / 4)
    assert metrics.roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert metrics.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None


def test_gender_one_class_only():
    result = metrics.gender_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert result["roc_auc"] is None
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["balanced_accuracy"] == pytest.approx(2 / 3)  # the female recall
    assert result["per_class"]["male"] == {"n": 0, "precision": 0.0, "recall": None, "f1": 0.0}
    assert "ROC-AUC is undefined" in result["notes"][0]


def test_gender_perfect_and_empty():
    perfect = metrics.gender_metrics([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0])
    assert perfect["accuracy"] == perfect["balanced_accuracy"] == perfect["roc_auc"] == 1.0
    assert perfect["log_loss"] == pytest.approx(-math.log(1 - metrics.LOG_LOSS_EPS))
    assert perfect["ece"] == 0.0
    empty = metrics.gender_metrics([], [])
    assert empty["n"] == 0
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "log_loss", "ece"):
        assert empty[key] is None
    assert empty["per_class"]["female"] == {"n": 0, "precision": None, "recall": None, "f1": None}


def test_log_loss_is_clipped():
    assert metrics.log_loss([1], [0.0]) == pytest.approx(-math.log(metrics.LOG_LOSS_EPS))
    assert metrics.log_loss([], []) is None


def test_age_metrics_by_hand():
    result = metrics.age_metrics(
        [10, 20, 30, 40], [12, 18, 30, 50], low=[8, 19, 31, 40], high=[11, 25, 35, 60], nominal=0.8
    )  # errors +2, -2, 0, +10
    assert result["n"] == 4
    assert result["mae"] == pytest.approx(3.5)
    assert result["rmse"] == pytest.approx(math.sqrt(27))
    assert result["median_ae"] == pytest.approx(2.0)
    assert result["bias"] == pytest.approx(2.5)
    assert list(result["cs"]) == [str(k) for k in range(1, 11)]
    assert result["cs"]["1"] == 0.25
    assert result["cs"]["2"] == result["cs"]["5"] == 0.75  # within k counts k itself
    assert result["cs"]["9"] == 0.75 and result["cs"]["10"] == 1.0
    # 30 lies below [31, 35]; 40 sits on the bound of [40, 60] and counts as covered
    assert result["interval"] == {"n": 4, "coverage": 0.75, "mean_width": 8.25, "nominal": 0.8}


def test_age_metrics_perfect_empty_and_no_interval():
    perfect = metrics.age_metrics([3, 50], [3.0, 50.0])
    assert perfect["mae"] == perfect["rmse"] == perfect["bias"] == 0.0
    assert set(perfect["cs"].values()) == {1.0}
    assert perfect["interval"] is None
    empty = metrics.age_metrics([], [], low=[], high=[])
    assert empty["n"] == 0
    assert empty["mae"] is empty["rmse"] is empty["median_ae"] is empty["bias"] is None
    assert set(empty["cs"].values()) == {None}
    assert empty["interval"]["coverage"] is None


def test_race_metrics_leave_unknown_out():
    race = [0, 1, 2, -1, 4]
    prob = np.eye(5)[[0, 1, 3, 2, 4]]  # predicts 0, 1, 3, 2, 4
    result = metrics.race_metrics(race, prob)
    assert (result["n"], result["n_unknown"]) == (4, 1)
    assert result["accuracy"] == 0.75
    assert result["confusion"][2][3] == 1 and result["confusion"][2][2] == 0
    assert result["per_class"]["Asian"] == {"n": 1, "precision": None, "recall": 0.0, "f1": 0.0}
    only_unknown = metrics.race_metrics([-1, -1], np.full((2, 5), 0.2))
    assert only_unknown["n"] == 0 and only_unknown["accuracy"] is None


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="0..1"):
        metrics.confusion_matrix([0, 2], [0, 1], 2)


# Five faces for the breakdowns: age errors +1, 0, -5, +5, +7.
LABELS = {
    "age": np.array([1, 5, 25, 25, 75]),
    "gender": np.array([0, 1, 0, 1, 1]),
    "race": np.array([0, 0, 1, -1, 4]),
}
PREDICTIONS = {
    "age": np.array([2.0, 5.0, 20.0, 30.0, 82.0]),
    "gender_prob": np.array([0.2, 0.3, 0.1, 0.9, 0.8]),  # wrong only on the second face
}


def _rows(table):
    return {row["group"]: row for row in table["rows"]}


def test_breakdown_by_age_band_by_hand():
    table = metrics.group_table(LABELS, PREDICTIONS, "age_band")
    rows = _rows(table)
    assert list(rows) == ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]
    assert rows["0-2"] == {
        "group": "0-2",
        "n": 1,
        "age_n": 1,
        "mae": 1.0,
        "bias": 1.0,
        "gender_accuracy": 1.0,
    }
    assert rows["3-9"]["gender_accuracy"] == 0.0
    assert rows["20-29"] == {
        "group": "20-29",
        "n": 2,
        "age_n": 2,
        "mae": 5.0,
        "bias": 0.0,
        "gender_accuracy": 1.0,
    }
    assert rows["10-19"] == {
        "group": "10-19",
        "n": 0,
        "age_n": 0,
        "mae": None,
        "bias": None,
        "gender_accuracy": None,
    }  # empty group: n = 0, no crash
    gap = table["gap"]["mae"]
    assert (gap["best"], gap["best_value"], gap["worst"], gap["worst_value"]) == (
        "3-9",
        0.0,
        "70+",
        7.0,
    )
    assert gap["gap"] == 7.0 and (gap["best_n"], gap["worst_n"]) == (1, 1)
    # groups below min_n are not ranked: only 20-29 has two faces, so there is no gap
    assert metrics.group_table(LABELS, PREDICTIONS, "age_band", min_n=2)["gap"]["mae"] is None


def test_breakdown_by_gender_race_and_cells():
    by_gender = _rows(metrics.group_table(LABELS, PREDICTIONS, "gender"))
    assert by_gender["male"] == {
        "group": "male",
        "n": 2,
        "age_n": 2,
        "mae": 3.0,
        "bias": -2.0,
        "gender_accuracy": 1.0,
    }
    assert by_gender["female"]["mae"] == pytest.approx(4.0)
    assert by_gender["female"]["gender_accuracy"] == pytest.approx(2 / 3)
    by_race = _rows(metrics.group_table(LABELS, PREDICTIONS, "race"))
    assert list(by_race) == ["White", "Black", "Asian", "Indian", "Others", "unknown"]
    assert [by_race[name]["n"] for name in by_race] == [2, 1, 0, 0, 1, 1]
    assert by_race["White"]["mae"] == 0.5
    cells = metrics.group_table(LABELS, PREDICTIONS, "race_gender")
    rows = _rows(cells)
    assert len(rows) == 12
    assert rows["unknown/female"]["n"] == 1 and rows["unknown/female"]["bias"] == 5.0
    assert rows["Asian/male"]["n"] == 0
    accuracy_gap = cells["gap"]["gender_accuracy"]
    assert (accuracy_gap["best_value"], accuracy_gap["worst"], accuracy_gap["gap"]) == (
        1.0,
        "White/female",
        1.0,
    )


def test_breakdowns_without_a_task_and_without_samples():
    age_only = metrics.breakdowns(LABELS, {"age": PREDICTIONS["age"]})
    assert set(age_only) == set(metrics.GROUPINGS)
    assert all(row["gender_accuracy"] is None for row in age_only["gender"]["rows"])
    assert age_only["gender"]["gap"]["gender_accuracy"] is None
    empty = {key: np.array([], dtype=np.int64) for key in LABELS}
    none = metrics.breakdowns(empty, {"age": np.array([]), "gender_prob": np.array([])})
    for table in none.values():
        assert all(row["n"] == 0 and row["mae"] is None for row in table["rows"])
        assert table["gap"] == {"mae": None, "gender_accuracy": None}
    with pytest.raises(ValueError, match="age_band"):
        metrics.group_table(LABELS, PREDICTIONS, "hair")


def test_race_by_age_band_cells_and_fairness_headlines_by_hand():
    tables = metrics.breakdowns(LABELS, PREDICTIONS)
    cells = _rows(tables["race_age"])
    assert len(cells) == 6 * 4 and list(cells)[:4] == [
        "White/0-19",
        "White/20-39",
        "White/40-59",
        "White/60+",
    ]
    assert cells["White/0-19"] == {
        "group": "White/0-19",
        "n": 2,
        "age_n": 2,
        "mae": 0.5,
        "bias": 0.5,
        "gender_accuracy": 0.5,
    }
    assert (cells["Black/20-39"]["bias"], cells["unknown/20-39"]["bias"]) == (-5.0, 5.0)
    assert cells["Others/60+"]["bias"] == 7.0 and cells["Asian/40-59"]["n"] == 0
    fair = metrics.fairness(tables, min_n=1)
    # unknown race is left out: the largest |bias| is Others/60+ (+7), not unknown/20-39 (+5)
    assert fair["max_abs_bias"] == 7.0 and fair["max_abs_bias_cell"]["group"] == "Others/60+"
    # gender accuracy: White 1/2, Black 1/1, Others 1/1 (unknown, 1/1, not ranked)
    assert fair["gender_gap"] == 0.5 and fair["gender_gap_races"]["worst"] == "White"
    # min_n = 2 leaves one cell (White/0-19, |bias| 0.5) and one race: no gap to rank
    fair = metrics.fairness(tables, min_n=2)
    assert fair["max_abs_bias"] == 0.5 and fair["gender_gap"] is None
    # negative biases count by their size
    shifted = metrics.breakdowns(LABELS, {"age": PREDICTIONS["age"] - 20.0})
    assert metrics.fairness(shifted, min_n=1)["max_abs_bias"] == 25.0  # Black/20-39: -5 - 20


def test_breakdown_by_source_only_with_several_sources():
    labels = dict(LABELS, source=np.array(["b", "a", "b", "b", "a"]))
    tables = metrics.breakdowns(labels, PREDICTIONS)
    rows = _rows(tables["source"])
    assert list(rows) == ["b", "a"]  # order of first appearance
    assert (rows["b"]["n"], rows["b"]["mae"]) == (3, pytest.approx(11 / 3))
    assert (rows["a"]["mae"], rows["a"]["gender_accuracy"]) == (3.5, 0.5)
    assert "source" not in metrics.breakdowns(dict(LABELS, source=np.array(["a"] * 5)), {})
