"""Interval (age bin) labels, as FairFace's: parsed from a labels CSV with reasons, trained on
with `interval_nll`, mixed with exact ages in one batch, scored by bin accuracy, drawn by source
shares, and reported per source. Values worked out by hand on tiny inputs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import encode_jpeg, face_pixels

from utkface.apps.cli import main
from utkface.data.labelled import read_labels
from utkface.data.multisource import column_names, parse_sources
from utkface.evaluation import age_bins
from utkface.evaluation.evaluate import build_report, evaluate
from utkface.runtime.errors import OptionError
from utkface.runtime.names import UNKNOWN_AGE, Label
from utkface.training.losses import age_loss, interval_nll, multitask_loss, seed_age_loss
from utkface.training.sampling import mix_weights
from utkface.training.validation import selection_score

INTERVAL_CSV = """file,age_min,age_max,gender,race,race7
a.webp,20,29,0,2,East Asian
b.webp,70,120,1,4,Latino_Hispanic
c.webp,30,30,1,0,White
d.webp,40,29,0,1,Black
e.webp,,,0,1,Black
f.webp,10,,0,1,Black
g.webp,x,19,0,1,Black
"""


def test_interval_labels_parsed_with_reasons(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(INTERVAL_CSV)
    table, skipped = read_labels(path)
    assert table == {
        "a.webp": Label(UNKNOWN_AGE, 0, 2, 20, 29, (("race7", "East Asian"),)),
        # FairFace's "more than 70" is cut at 116, the last age the model has
        "b.webp": Label(UNKNOWN_AGE, 1, 4, 70, 116, (("race7", "Latino_Hispanic"),)),
        "c.webp": Label(30, 1, 0, 30, 30, (("race7", "White"),)),  # one year: an exact age
    }
    assert table["c.webp"] == Label(30, 1, 0, extra=(("race7", "White"),))  # min = max = age
    reasons = {item.file: item.reason for item in skipped}
    assert reasons == {
        "d.webp": "bad label in labels.csv line 5: age_min 40 > age_max 29",
        "e.webp": "bad label in labels.csv line 6: no age: neither age nor age_min and age_max",
        "f.webp": "bad label in labels.csv line 7: an age interval needs both age_min and age_max",
        "g.webp": "bad label in labels.csv line 8: age_min 'x' is not a number",
    }
    # an exact age wins over an interval on the same row; a missing age column set fails
    path.write_text("file,age,age_min,age_max,gender\nh.webp,35,30,39,0\ni.webp,,0,2,1\n")
    table, _ = read_labels(path)
    assert table["h.webp"] == Label(35, 0, -1) and table["i.webp"] == Label(-1, 1, -1, 0, 2)
    path.write_text("file,age_min,gender\nj.webp,3,0\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) age \(or age_min and age_max\)"):
        read_labels(path)


def test_interval_nll_by_hand():
    # four ages with probabilities 0.1, 0.2, 0.3, 0.4 (logits = their logs)
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log().repeat(3, 1)
    low, high = torch.tensor([1, 0, 3]), torch.tensor([2, 3, 200])
    # masses 0.2 + 0.3, the whole distribution, and 0.4 (an upper end past the grid is its end)
    expected = (-math.log(0.5) - math.log(1.0) - math.log(0.4)) / 3
    assert interval_nll(logits, low, high).item() == pytest.approx(expected, abs=1e-6)
    # a bin the model gives almost nothing costs a finite loss, with a gradient
    sure = torch.tensor([[0.0, 0.0, 0.0, 60.0]], requires_grad=True)
    loss = interval_nll(sure, torch.tensor([0]), torch.tensor([0]))
    loss.backward()
    assert loss.item() == pytest.approx(60 + math.log(1 + 3 * math.exp(-60)), abs=1e-4)
    assert torch.isfinite(sure.grad).all() and sure.grad[0, 0] < 0


def test_age_loss_mixes_exact_and_interval_samples_per_sample():
    torch.manual_seed(0)
    logits = torch.randn(4, 117)
    ages = torch.tensor([25, -1, 60, -1])
    low, high = torch.tensor([25, 20, 60, 70]), torch.tensor([25, 29, 60, 116])
    mixed = age_loss(logits, ages, 2.0, 0.5, low, high)
    exact = age_loss(logits[[0, 2]], ages[[0, 2]], 2.0, 0.5)  # the batch's exact half
    intervals = interval_nll(logits[[1, 3]], low[[1, 3]], high[[1, 3]])
    assert mixed.item() == pytest.approx((2 * exact.item() + 2 * intervals.item()) / 4, rel=1e-5)
    # without intervals the loss is what it always was
    assert age_loss(logits[[0, 2]], ages[[0, 2]], 2.0, 0.5, low[[0, 2]], high[[0, 2]]).item() == (
        pytest.approx(exact.item())
    )
    labels = {
        "age": ages,
        "age_min": low,
        "age_max": high,
        "gender": torch.tensor([0, 1, 0, 1]),
        "race": torch.tensor([0, 1, -1, 2]),
    }
    raw = {"age": logits, "gender": torch.zeros(4), "race": torch.zeros(4, 5)}
    total, parts = multitask_loss(raw, labels, {"age": 1.0}, 2.0, 0.5)
    assert parts["age"] == pytest.approx(mixed.item(), rel=1e-6)
    assert parts["gender"] == pytest.approx(math.log(2)) and parts["race"] == pytest.approx(
        math.log(5)
    )
    # the seed's regressed age: squared distance from the interval, 0 inside it
    values = torch.tensor([23.0, 31.0, 65.0, 10.0])
    expected = ((23 - 25) ** 2 + (31 - 29) ** 2 + (65 - 60) ** 2 + (70 - 10) ** 2) / 4
    assert seed_age_loss(values, ages, low, high).item() == pytest.approx(expected)


def _bins_labels():
    """Six faces in FairFace's bins 0-2, 3-9, 10-19, 20-29, 70-116 and one exact age."""
    labels = {
        "age": np.array([-1, -1, -1, -1, -1, 33]),
        "age_min": np.array([0, 3, 10, 20, 70, 33]),
        "age_max": np.array([2, 9, 19, 29, 116, 33]),
        "gender": np.array([0, 1, 0, 1, 0, 1]),
        "race": np.array([0, 1, 2, 2, 4, 0]),
        "race7": np.array(
            ["White", "Black", "East Asian", "Southeast Asian", "Latino", ""], object
        ),
    }
    predictions = {
        # 2.4 rounds to 2 (in 0-2); 9.6 rounds to 10 (the next bin); 25 the next bin too;
        # 29.4 in; 60 falls in 20-29 (the labels have no 30-69 bins), one below 70+
        "age": np.array([2.4, 9.6, 25.0, 29.4, 60.0, 30.0]),
        "gender_prob": np.array([0.2, 0.3, 0.4, 0.9, 0.1, 0.7]),
    }
    return labels, predictions


def test_bin_accuracy_within_one_and_interval_error_by_hand():
    labels, predictions = _bins_labels()
    result = age_bins.bin_metrics(labels, predictions)
    assert result["n"] == 5 and result["bins"] == ["0-2", "3-9", "10-19", "20-29", "70+"]
    assert result["accuracy"] == pytest.approx(2 / 5)  # 2.4 and 29.4
    # predicted bins 0, 2, 3, 3, 3 against 0, 1, 2, 3, 4: all within one bin
    assert result["within_one"] == pytest.approx(5 / 5)
    # years outside [low - 0.5, high + 0.5): 0, 9.6 - 9.5, 25 - 19.5, 0, 69.5 - 60
    assert result["interval_error"] == pytest.approx((0 + 0.1 + 5.5 + 0 + 9.5) / 5)
    cells = {(row["group"], row["bin"]): row for row in result["group_bin"]}
    assert result["group"] == "race7" and len(cells) == 5
    assert cells["Black", "3-9"] == {
        "group": "Black",
        "bin": "3-9",
        "n": 1,
        "mean_pred": 9.6,
        "in_bin": 0.0,
        "below": 0.0,
        "above": 1.0,
    }
    assert cells["Latino", "70+"]["below"] == 1.0
    assert age_bins.age_error([30.0], [33], [33])[0] == pytest.approx(3.0)  # exact: |error|


def test_report_scores_exact_ages_by_mae_and_bins_by_bin_accuracy():
    labels, predictions = _bins_labels()
    report = build_report(labels, predictions)
    assert report["age"]["n"] == 1 and report["age"]["mae"] == pytest.approx(3.0)
    assert report["age_bins"]["accuracy"] == pytest.approx(2 / 5)
    bands = {row["group"]: row for row in report["breakdowns"]["age_band"]["rows"]}
    assert bands["70+"]["n"] == 1 and bands["70+"]["mae"] is None  # a bin, no age error
    assert bands["30-39"]["age_n"] == 1 and bands["30-39"]["bias"] == pytest.approx(-3.0)
    # FairFace's 7 groups (race7) get their own table; the exact face has none ("unknown")
    groups = {row["group"]: row for row in report["breakdowns"]["race7"]["rows"]}
    assert groups["Southeast Asian"]["gender_accuracy"] == 1.0 and groups["Black"][
        "gender_accuracy"
    ] == (0.0)
    assert groups["unknown"]["n"] == 1
    lines = age_bins.bin_lines(report["age_bins"], report["breakdowns"], markdown=False)
    assert lines[0] == (
        "age bins  n=5  bin acc 40.0%  within one bin 100.0%  years outside the bin 3.02"
    )
    assert any(line.split() == ["3-9", "1", "9.6", "0.0%", "0.0%", "100.0%"] for line in lines)
    # gender accuracy per race7 group; no gap is ranked among groups of fewer than 20 faces
    assert any(line.split() == ["Black", "1", "0.0%"] for line in lines)
    assert not any(line.startswith("gender accuracy gap") for line in lines)
    # selection score: mean age error in years + 20 x gender error rate (1 of 6 wrong)
    error = (0 + 0.1 + 5.5 + 0 + 9.5 + 3.0) / 6
    assert selection_score(labels, predictions) == pytest.approx(error + 20 * 1 / 6)


def test_mixing_shares_by_hand():
    sources = np.array(["UTKFace"] * 6 + ["fairface-train-40k"] * 2 + ["extra"] * 2, object)
    keys = column_names(["UTKFace", "fairface-train-40k", "extra"])
    assert keys == {"UTKFace": "utkface", "fairface-train-40k": "fairface", "extra": "extra"}
    assert mix_weights(sources, {}, keys, None) is None  # proportional: a plain shuffle
    weights = mix_weights(sources, {"utkface": 0.5}, keys, None)
    share = {name: weights[sources == name].sum() / weights.sum() for name in keys}
    # utkface 0.5; the other two share the other half by size (2 and 2 images)
    assert share == pytest.approx({"UTKFace": 0.5, "fairface-train-40k": 0.25, "extra": 0.25})
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(10 * 0.5 / 6) and weights[6] == pytest.approx(10 * 0.25 / 2)
    # within a source the balance weights keep their proportions
    base = np.array([1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    weights = mix_weights(sources, {"utkface": 0.5, "fairface": 0.3, "extra": 0.2}, keys, base)
    assert weights[1] / weights[0] == pytest.approx(3.0)
    assert weights[8:].sum() / weights.sum() == pytest.approx(0.2)
    with pytest.raises(OptionError, match="source_mix names nope; the sources are utkface"):
        mix_weights(sources, {"nope": 0.5}, keys, None)
    with pytest.raises(OptionError, match="sum to 0.9; they must sum to 1"):
        mix_weights(sources, {"utkface": 0.5, "fairface": 0.2, "extra": 0.2}, keys, None)
    with pytest.raises(OptionError, match="several --data sources"):
        mix_weights(np.array([""] * 3, object), {"utkface": 1.0}, {"": "source"}, None)
    assert column_names(["fair-a", "fair-b"]) == {"fair-a": "fair_a", "fair-b": "fair_b"}


FAIRFACE_BINS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (70, 120))


def test_two_sources_train_with_per_source_columns_and_evaluate_bins(
    tmp_path, make_faces, face_names
):
    """UTKFace-named crops beside a collection labelled with age bins: one epoch of training
    has per-source validation columns in metrics.csv, and `evaluate` reports the bins."""
    utk = tmp_path / "utk"
    make_faces(utk, face_names(30), size=48)
    bins = tmp_path / "bins"
    bins.mkdir()
    rows = ["file,age_min,age_max,gender,race,race7"]
    for i in range(40):
        (bins / f"{i}.jpg").write_bytes(encode_jpeg(face_pixels(500 + i, 48)))
        low, high = FAIRFACE_BINS[i % len(FAIRFACE_BINS)]
        rows.append(f"{i}.jpg,{low},{high},{i % 2},{i % 5},{('Black', 'Latino')[i % 2]}")
    labels = tmp_path / "bins.csv"
    labels.write_text("\n".join(rows) + "\n")
    sources = [str(utk), f"{bins}::{labels}"]
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "--data", sources[0], "--data", sources[1], "--faces", "aligned"]
    argv += ["--size", "32", "--epochs", "1", "--batch-size", "16", "--no-pretrained"]
    argv += ["--threads", "1", "--device", "cpu", "--cache", str(cache), "--out", str(out)]
    assert main(argv + ["--mix", "utk=0.5"]) == 0
    with open(out / "metrics.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    for key in ("mae", "gender_acc", "race_acc", "score"):
        assert row[f"val_utk_{key}"] and row[f"val_ema_utk_{key}"]
    for key in ("bin_acc", "bin_within_one", "gender_acc", "score"):
        assert row[f"val_bins_{key}"]
    assert "val_bins_mae" not in row  # a source of bins has no exact ages
    # the selection score is the mean of the sources' scores
    score = (float(row["val_utk_score"]) + float(row["val_bins_score"])) / 2
    assert float(row["val_score"]) == pytest.approx(score)
    assert json.loads((out / "config.json").read_text())["source_mix"] == {"utk": 0.5}

    report = evaluate(
        out / "best.pt",
        data=parse_sources(sources[1], faces="aligned"),
        split="all",
        make_plots=False,
    )
    assert report["age"] is None and report["age_bins"]["n"] == 40
    assert report["age_bins"]["bins"] == ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49"] + [
        "50-59",
        "70+",
    ]
    groups = {row["group"] for row in report["breakdowns"]["race7"]["rows"]}
    assert groups == {"Black", "Latino"}
