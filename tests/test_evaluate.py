"""`evaluate` end to end on tiny randomly initialised checkpoints: a generated folder of
UTKFace-named JPEGs scored whole and as a prepared split, one-task checkpoints, the report's
JSON keys, the plots, the CLI, and a slice of the real data when it is on this machine."""

import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from utkface.apps.cli import main
from utkface.data import corruptions
from utkface.data import dataset as data
from utkface.evaluation import plots
from utkface.evaluation.evaluate import EvaluationError, evaluate
from utkface.evaluation.report import summary
from utkface.models.checkpoint import load_checkpoint, model_spec, save_checkpoint
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess
from utkface.models.registry import build_model

SIZE = 32
TOP_KEYS = {
    "report_version",
    "n",
    "tasks",
    "age",
    "age_bins",  # None: every age is exact
    "gender",
    "race",
    "breakdowns",
    "fairness",
    "plots",
    "files",
    "checkpoint",
    "data",
    "settings",
    "timing",
}
AGE_KEYS = {"n", "mae", "rmse", "median_ae", "bias", "cs", "interval"}
GENDER_KEYS = {
    "n",
    "accuracy",
    "balanced_accuracy",
    "per_class",
    "roc_auc",
    "log_loss",
    "ece",
    "threshold",
    "confusion",
    "reliability",
    "notes",
}
RACE_KEYS = {"n", "n_unknown", "accuracy", "per_class", "confusion"}
DATA_KEYS = {"source", "mode", "split", "split_seed", "n_images", "seen", "skipped"}


def _face_names(count: int) -> list[str]:
    """UTKFace names over all races and genders, chosen so that some land in the test split."""
    names, rng = [], np.random.default_rng(0)
    stamp = 20170116174525125
    while len(names) < count or sum(data.split_of(n) == "test" for n in names) < 3:
        age, gender, race = int(rng.integers(0, 90)), len(names) % 2, len(names) % 5
        names.append(f"{age}_{gender}_{race}_{stamp + len(names)}.jpg.chip.jpg")
    names.append(f"39_1_{stamp}.jpg.chip.jpg")  # no race field: race unknown, still scored
    return names


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(1)
    for name in _face_names(16):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
    (folder / "not_a_label.jpg").write_bytes((folder / name).read_bytes())  # bad name
    (folder / "30_0_1_20170116174525000.jpg.chip.jpg").write_bytes(b"")  # zero bytes
    return folder


def _checkpoint(path, name="mobilenet_v2", tasks=("age", "gender", "race"), size=SIZE, config=None):
    torch.manual_seed(0)
    model = build_model(name, tasks, pretrained=False)
    save_checkpoint(path, model, model_spec(name, tasks), Preprocess(size=size), config=config)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt")


def test_scores_a_plain_folder_whole_and_writes_the_report(checkpoint, faces, tmp_path):
    out = tmp_path / "report"
    report = evaluate(checkpoint, data=faces, out=out, device="cpu")
    count = len(list(faces.glob("*.chip.jpg"))) - 1  # the zero-byte file is skipped
    assert report["data"]["mode"] == "scanned" and report["data"]["split"] == "all"
    assert report["n"] == report["data"]["n_images"] == count
    assert report["data"]["seen"] == count + 2
    skipped = report["data"]["skipped"]
    assert skipped["count"] == 2 and len(skipped["files"]) == 2
    assert any("empty file" in reason for reason in skipped["by_reason"])
    assert any(reason.startswith("bad name") for reason in skipped["by_reason"])
    assert report["tasks"] == ["age", "gender", "race"]
    assert report["race"]["n_unknown"] == 1

    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk) == TOP_KEYS
    assert set(on_disk["age"]) == AGE_KEYS and set(on_disk["gender"]) == GENDER_KEYS
    assert set(on_disk["race"]) == RACE_KEYS and set(on_disk["data"]) == DATA_KEYS
    assert set(on_disk["age"]["interval"]) == {"n", "coverage", "mean_width", "nominal"}
    assert set(on_disk["breakdowns"]) == {"age_band", "gender", "race", "race_gender", "race_age"}
    for table in on_disk["breakdowns"].values():
        assert set(table) == {"rows", "gap"} and set(table["gap"]) == {"mae", "gender_accuracy"}
        for row in table["rows"]:
            assert set(row) == {"group", "n", "age_n", "mae", "bias", "gender_accuracy"}
    assert on_disk["age"]["mae"] == pytest.approx(report["age"]["mae"])

    expected_plots = {
        "age_scatter",
        "age_bands",
        "cs_curve",
        "fairness_bias",
        "worst_age",
        "gender_confusion",
        "reliability",
    }
    assert expected_plots <= set(on_disk["plots"])
    markdown = (out / "report.md").read_text()
    for file in on_disk["plots"].values():
        png = (out / file).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
        assert f"({file})" in markdown
    assert "## Breakdowns" in markdown and "By race x gender" in markdown
    # the fairness table: a row per race with images, bias / MAE (n) per band, gender accuracy
    fairness = markdown[markdown.index("## Fairness") :].split("\n\n")[2].splitlines()
    cells = {row["group"]: row for row in on_disk["breakdowns"]["race_age"]["rows"]}
    white = next(line for line in fairness if line.startswith("| White |"))
    assert white.count("|") == 7 and f"({cells['White/0-19']['n']})" in white
    ranked = [
        abs(row["bias"])
        for name, row in cells.items()
        if row["n"] >= on_disk["fairness"]["min_n"] and not name.startswith("unknown")
    ]
    assert on_disk["fairness"]["max_abs_bias"] == max(ranked, default=None)
    assert not list(out.glob(".*"))  # no temp files left behind
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("file,age,gender,race,pred_age,pred_age_low,pred_age_high")
    assert len(lines) == count + 1
    printed = summary(report)
    assert "MAE" in printed and "age band" in printed and "acc" in printed


def test_prepared_split_uses_the_manifest(checkpoint, faces, tmp_path):
    report = evaluate(checkpoint, data=faces, split="test", cache=tmp_path / "cache", device="cpu")
    usable = [path for path in faces.glob("*.chip.jpg") if path.stat().st_size]
    expected = sorted(path.name for path in usable if data.split_of(path.name) == "test")
    assert report["data"]["mode"] == "prepared" and report["data"]["split_seed"] == 0
    assert report["n"] == len(expected) >= 3
    assert report["plots"] == {} and report["files"] == {}  # nothing written without `out`
    dataset = data.prepare(faces, size=SIZE, out=tmp_path / "cache")  # the same cache, reused
    again = evaluate(checkpoint, data=dataset, device="cpu")  # a Dataset defaults to "test"
    assert again["data"]["split"] == "test" and again["gender"] == report["gender"]
    trained_with_seed_3 = _checkpoint(tmp_path / "seed3.pt", config={"seed": 3})
    other = evaluate(trained_with_seed_3, data=faces, split="train", cache=tmp_path / "cache")
    assert other["data"]["split_seed"] == 3  # the split the checkpoint was trained on


def test_one_task_checkpoint_scores_only_that_task(faces, tmp_path):
    checkpoint = _checkpoint(tmp_path / "gender.pt", tasks=("gender",))
    report = evaluate(checkpoint, data=faces, out=tmp_path / "out", tta=True, device="cpu")
    assert report["tasks"] == ["gender"] and report["settings"]["tta"] is True
    assert report["age"] is None and report["race"] is None
    assert report["gender"]["n"] == report["n"]
    assert all(row["mae"] is None for row in report["breakdowns"]["age_band"]["rows"])
    assert not {"age_scatter", "age_bands", "cs_curve", "worst_age"} & set(report["plots"])
    assert "## Age" not in (tmp_path / "out" / "report.md").read_text()


def test_seed_age_regressor_has_no_interval(faces, tmp_path):
    checkpoint = _checkpoint(tmp_path / "age.pt", name="seed_age", tasks=("age",), size=200)
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(faces.glob("*.chip.jpg"))[:3]:  # a 200 px seed CNN is slow on CPU
        shutil.copy(path, few / path.name)
    report = evaluate(checkpoint, data=few, device="cpu")
    assert report["tasks"] == ["age"] and report["age"]["interval"] is None
    assert report["gender"] is None


def test_errors_are_clear(checkpoint, tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(EvaluationError, match="no usable images"):
        evaluate(checkpoint, data=tmp_path, device="cpu")
    with pytest.raises(EvaluationError, match="choose one of train, val, test, all"):
        evaluate(checkpoint, data=tmp_path, split="everything", device="cpu")


def test_cli_writes_the_report_and_prints_a_summary(checkpoint, faces, tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(faces),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-plots",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "MAE" in printed and "CS@5" in printed and "written to" in printed
    assert json.loads((out / "report.json").read_text())["plots"] == {}
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(faces)]) == 2
    )
    assert "no such checkpoint" in capsys.readouterr().err


def test_plots_are_written_atomically_and_non_empty(tmp_path):
    figure = plots.cs_curve({str(k): k / 10 for k in range(1, 11)}, n=10)
    path = plots.save_figure(figure, tmp_path / "sub" / "cs.png")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == ["cs.png"]


@pytest.mark.parametrize("average", [False, True])
def test_training_curves_draw_the_average_next_to_the_weights(average):
    history = [
        {"epoch": epoch, "train_loss": 5.0 - epoch, "val_mae": 6.0 - epoch, "val_gender_acc": 0.9}
        for epoch in (1, 2, 3)
    ]
    if average:
        for row in history:
            row.update(val_ema_mae=row["val_mae"] - 0.1, val_ema_gender_acc=0.91)
    figure = plots.training_curves(history)
    lines = [[line.get_label() for line in axes.get_lines()] for axes in figure.axes]
    pair = ["weights", "average"] if average else ["weights"]
    assert lines == [["_child0"], pair, pair]
    assert list(figure.axes[1].get_lines()[-1].get_ydata()) == [
        row.get("val_ema_mae", row["val_mae"]) for row in history
    ]


@pytest.mark.slow
def test_real_data_slice(checkpoint, tmp_path):
    source = data.default_source()
    if not source.exists():
        pytest.skip(f"no UTKFace data at {source}")
    folder = tmp_path / "slice"
    folder.mkdir()
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file())[:48]:
            shutil.copy(path, folder / path.name)
    else:
        with tarfile.open(source) as archive:
            copied = 0
            for member in archive:  # stream: stop after the first 48 files
                if member.isfile():
                    name = member.name.rsplit("/", 1)[-1]
                    (folder / name).write_bytes(archive.extractfile(member).read())
                    copied += 1
                    if copied == 48:
                        break
    report = evaluate(checkpoint, data=folder, out=tmp_path / "out", device="cpu")
    assert report["n"] + report["data"]["skipped"]["count"] == 48
    assert report["age"]["n"] == report["gender"]["n"] == report["n"] > 40
    # The same number from the model's own predictions on the same files:
    scanned = data.scan(folder, SIZE)
    model, meta = load_checkpoint(checkpoint)
    female = predict_arrays(model, meta["preprocess"], scanned.images)["gender_prob"] >= 0.5
    right = female == scanned.labels()["gender"].astype(bool)
    assert report["gender"]["accuracy"] == pytest.approx(right.mean())
    assert (tmp_path / "out" / "report.json").is_file()


def test_corruptions_add_the_utkface_c_table(checkpoint, faces, tmp_path):
    out = tmp_path / "report"
    report = evaluate(
        checkpoint, data=faces, out=out, device="cpu", corruptions=True, make_plots=False
    )
    block = report["corruptions"]
    assert block["n"] == report["n"]  # the same files, decoded again at full size
    assert [row["condition"] for row in block["rows"]] == ["clean", *corruptions.CORRUPTIONS]
    assert block["rows"][0]["age_mae"] == pytest.approx(report["age"]["mae"], abs=1e-3)
    increases = [row["age_mae_increase"] for row in block["rows"][1:]]
    assert block["mean_age_mae_increase"] == pytest.approx(np.mean(increases))
    markdown = (out / "report.md").read_text()
    assert "## Photo conditions (UTKFace-C)" in markdown and "| low_res32 |" in markdown
    assert "mean of conditions" in summary(report)


def test_robustness_benchmark_prints_the_table(checkpoint, faces, capsys):
    from benchmarks import robustness

    result = robustness.main([str(checkpoint), "--data", str(faces), "--split", "test"])
    printed = capsys.readouterr().out
    assert f"UTKFace-C on {result['n']} faces of the test split" in printed
    assert "| jpeg20 |" in printed and len(result["rows"]) == 1 + len(corruptions.CORRUPTIONS)
