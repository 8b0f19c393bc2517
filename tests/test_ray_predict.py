"""The Ray Data engine on a local Ray cluster started here: the same faces, ages and genders as
the single-process path on the same images, in Parquet with the CSV's columns."""

from __future__ import annotations

import csv

import pytest
from PIL import Image
from test_predict import smooth_images
from tiny_checkpoints import tiny_checkpoint

from utkface.apps.cli import main
from utkface.runtime.predict import Predictor
from utkface.runtime.predict_files import predict_files
from utkface.runtime.predict_output import CSV_COLUMNS

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install utkface[ray]")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_engine_matches_the_single_process_path(local_ray, tmp_path):
    folder = tmp_path / "photos"
    for index, pixels in enumerate(smooth_images(40, seed=3)):
        path = folder / f"s{index % 2}" / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((90, 70)).save(path)  # not square: centre-cropped
    (folder / "s0" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", smooth_images(16))

    local = tmp_path / "local.csv"
    predictor = Predictor.from_checkpoint(checkpoint, faces="aligned", batch_size=7)
    predict_files([str(folder), str(tmp_path / "none.png")], predictor, out=local)
    want = {row["source"]: row for row in csv.DictReader(local.open())}

    out = tmp_path / "ray-out"
    args = ["predict", str(folder), str(tmp_path / "none.png"), "--engine", "ray",
            "--checkpoint", str(checkpoint), "--faces", "aligned", "--out", str(out),
            "--batch-size", "5", "--workers", "1"]  # fmt: skip
    assert main(args) == 1  # two inputs failed, as locally
    table = pq.read_table(out)
    assert table.column_names == list(CSV_COLUMNS)
    assert table.schema.field("age").type == "double" and table.schema.field("face").type == "int64"
    rows = table.to_pylist()
    assert sorted(row["source"] for row in rows) == sorted(want) and len(want) == 42
    for row in rows:
        expected = want[row["source"]]
        assert (row["error"] or "") == expected["error"]
        if expected["error"]:
            assert row["age"] is None and row["face"] is None
            continue
        assert (row["mode"], row["width"], row["height"]) == ("aligned", 90, 70)
        assert (row["left"], row["top"], row["right"], row["bottom"]) == (10, 0, 80, 70)
        assert row["gender"] == expected["gender"]
        for key in ("age", "age_low", "age_high", "gender_prob"):
            assert row[key] == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-5), key
    ages = {row["age"] for row in rows if row["age"] is not None}
    assert len(ages) > 20  # the model's numbers differ from photo to photo

    assert main(args) == 2  # a folder that holds results is never mixed with a new run
