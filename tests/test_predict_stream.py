"""Streaming, resumable `utkface predict`: a run killed with SIGKILL and resumed gives every input
exactly one result, equal to an uninterrupted run; Ctrl-C keeps finished work; part files in
every format; manifests, shards and lazy input listing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from test_predict import smooth_images
from tiny_checkpoints import tiny_checkpoint

from utkface.apps.cli import main
from utkface.models.backends import TorchBackend
from utkface.models.checkpoint import load_checkpoint
from utkface.runtime.predict import Predictor
from utkface.runtime.predict_files import predict_files
from utkface.runtime.predict_inputs import count_inputs, in_shard, iter_inputs, parse_shard
from utkface.runtime.predict_output import CSV_COLUMNS, list_parts

COUNT = 300


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """COUNT generated 64 px crops in three subfolders, plus one file that is not an image."""
    folder = tmp_path_factory.mktemp("stream") / "crops"
    for index, pixels in enumerate(smooth_images(COUNT, seed=7)):
        path = folder / f"d{index % 3}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    (folder / "d1" / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", smooth_images(16))


@pytest.fixture(scope="module")
def reference(crops, checkpoint) -> dict[str, dict]:
    """An uninterrupted in-process run: source -> JSON object."""
    predictor = Predictor.from_checkpoint(checkpoint, faces="aligned")
    out = crops.parent / "reference.jsonl"
    predict_files([str(crops)], predictor, out=out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == COUNT + 1
    return {row["source"]: row for row in rows}


def assert_same_results(rows: list[dict], reference: dict[str, dict]) -> None:
    sources = [row["source"] for row in rows]
    assert len(sources) == len(set(sources)) == len(reference)  # each input exactly once
    assert set(sources) == set(reference)
    for row in rows:
        want = reference[row["source"]]
        assert row["error"] == want["error"] and len(row["faces"]) == len(want["faces"])
        for face, want_face in zip(row["faces"], want["faces"]):
            assert face["gender"] == want_face["gender"] and face["box"] == want_face["box"]
            for key in ("age", "age_low", "age_high", "gender_prob"):
                # float32 sums differ in the last bits with the batch a crop lands in (the tiny test
                # model amplifies them ~10x)
                assert face[key] == pytest.approx(want_face[key], rel=1e-4, abs=1e-5), key


def test_sigkill_halfway_then_resume_equals_an_uninterrupted_run(
    crops, checkpoint, reference, tmp_path
):
    out = tmp_path / "faces.jsonl"
    parts = tmp_path / "faces.jsonl.parts"
    command = [sys.executable, "-m", "utkface", "predict", str(crops), "--checkpoint",
               str(checkpoint), "--faces", "aligned", "--out", str(out), "--part-size", "10",
               "--batch-size", "2", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own process group, so the decoding workers die with it, as under `kill -9 -PGID`
    run = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list_parts(parts)) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, run.stderr.read().decode()[-2000:]
    kept = list_parts(parts)
    assert 3 <= len(kept) < (COUNT + 1) // 10, "the run was not killed halfway"
    before = [json.loads(line) for p in kept for line in p.read_text().splitlines()]
    assert not out.exists()

    # without --resume the unfinished run is never overwritten
    args = ["predict", str(crops), "--checkpoint", str(checkpoint), "--faces", "aligned",
            "--out", str(out), "--workers", "2"]  # fmt: skip
    assert main(args) == 2
    assert list_parts(parts) == kept

    assert main([*args, "--resume"]) == 1  # broken.jpg failed, as in the reference
    assert not parts.exists()  # joined into `out` and removed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert_same_results(rows, reference)
    assert rows[: len(before)] == before  # the killed run's results, kept as they were


def test_ctrl_c_keeps_finished_results_and_formats_agree(crops, checkpoint, reference, tmp_path):
    model, meta = load_checkpoint(checkpoint)

    class Interrupted(TorchBackend):
        calls = 0

        def __call__(self, images):
            Interrupted.calls += 1
            if Interrupted.calls == 5:
                raise KeyboardInterrupt
            return super().__call__(images)

    out = tmp_path / "parts"
    predictor = Predictor(Interrupted(model, meta), faces="aligned", batch_size=8)
    with pytest.raises(KeyboardInterrupt):
        predict_files([str(crops)], predictor, out=out, out_format="csv", part_size=1000)
    (part,) = list_parts(out)  # the 4 finished batches, flushed although the part was not full
    assert len(list(csv.DictReader(part.open()))) == 32
    with pytest.raises(ValueError, match="--resume"):
        predict_files([str(crops)], predictor, out=out, out_format="csv")
    predictor = Predictor(TorchBackend(model, meta), faces="aligned", batch_size=8)
    summary = predict_files(
        [str(crops)], predictor, out=out, out_format="csv", resume=True, part_size=100
    )
    assert (summary.resumed, summary.inputs, summary.failed) == (32, COUNT + 1 - 32, 1)
    rows = [row for p in list_parts(out) for row in csv.DictReader(p.open())]
    assert [p.name for p in list_parts(out)] == [f"part-0000{i}.csv" for i in range(4)]
    by_source = {row["source"]: row for row in rows}
    assert len(rows) == len(by_source) == len(reference)
    for source, want in reference.items():
        if want["faces"]:
            assert float(by_source[source]["age"]) == pytest.approx(want["faces"][0]["age"], 1e-5)
        else:
            assert by_source[source]["error"] == want["error"]

    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "parquet"
    predict_files([str(crops / "d1")], predictor, out=folder, out_format="parquet", part_size=64)
    table = pq.read_table(folder)  # the folder reads as one table
    assert len(list_parts(folder)) == 2 and table.column_names == list(CSV_COLUMNS)
    ages = dict(zip(table.column("source").to_pylist(), table.column("age").to_pylist()))
    assert len(ages) == table.num_rows == COUNT // 3 + 1
    for source, want in reference.items():
        if "/d1/" not in source:
            continue
        want_age = want["faces"][0]["age"] if want["faces"] else None
        assert ages[source] == (want_age and pytest.approx(want_age, rel=1e-5))


def test_manifests_shards_and_lazy_listing(crops, tmp_path):
    files = sorted(crops.rglob("*.png"))[:40]
    (tmp_path / "list.txt").write_text(
        "# a comment\n\n" + "".join(f"{os.path.relpath(f, tmp_path)}\n" for f in files[:20])
    )
    with (tmp_path / "list.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "file"])
        writer.writerows([["x", str(f)] for f in files[15:40]])  # 5 repeat list.txt
    (tmp_path / "bad.csv").write_text("name\nsome.png\n")
    manifests = [str(tmp_path / "list.txt"), str(tmp_path / "list.csv")]
    items = list(iter_inputs([*manifests, str(tmp_path / "bad.csv")]))
    assert [item.path for item in items[:-1]] == files
    assert "no 'path' or 'file' column" in items[-1].error and items[-1].path is None
    assert count_inputs(manifests) == 45  # rows, repeats included
    assert count_inputs([str(crops)]) is None  # a folder is not walked to count it

    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"path": [str(f) for f in files]}), tmp_path / "list.parquet")
    assert [item.path for item in iter_inputs([str(tmp_path / "list.parquet")])] == files

    # shards: disjoint, together everything, and stable when inputs are added
    everything = [item.source for item in iter_inputs([str(crops)])]
    shares = [[i.source for i in iter_inputs([str(crops)], (k, 3))] for k in range(3)]
    assert sorted(sum(shares, [])) == sorted(everything)
    assert all(20 < len(share) < 200 for share in shares)  # a hash, not a split by position
    assert [i.source for i in iter_inputs(manifests, (1, 3))] == [
        str(f) for f in files if str(f) in shares[1]
    ]
    assert in_shard("a.jpg", (0, 1)) and parse_shard("2/8") == (2, 8)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)

    # folders are walked as the run goes: a subfolder removed after the first input is never read
    walk = iter_inputs([str(crops.parent / "crops")])
    first = next(walk)
    assert Path(first.path).parent.name == "d0"
    moved = crops.parent / "d2-away"
    (crops / "d2").rename(moved)
    try:
        assert {Path(item.path).parent.name for item in walk} == {"d0", "d1"}
    finally:
        moved.rename(crops / "d2")


def test_missing_ray_is_named_before_the_run(checkpoint, crops, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    args = ["predict", str(crops), "--checkpoint", str(checkpoint), "--engine", "ray",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    assert "pip install 'utkface[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*args, "--resume"]) == 2
    assert "--engine ray does not take --resume" in capsys.readouterr().err
