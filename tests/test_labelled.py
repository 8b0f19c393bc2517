"""Any labelled collection (`labelled`, `prepare --labels`) and several sources at once
(`multisource`, `train --data A --data B`, `evaluate` per source), on collections generated
here: face-like JPEGs with a labels CSV, some rows bad, some files missing or broken."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import encode_jpeg, face_pixels
from PIL import Image

from utkface.apps.cli import main
from utkface.data import dataset as data
from utkface.data.caches import list_caches
from utkface.data.labelled import LabelsError, read_labels, scan_labelled
from utkface.data.multisource import Combined, parse_sources, prepare_sources
from utkface.evaluation.evaluate import evaluate
from utkface.runtime import faces, images
from utkface.runtime.names import Label
from utkface.runtime.sources import iter_members
from utkface.training.train import load_run_config

CSV = """file,age,gender,race
a.jpg,25,male,White
sub/b.jpg,3.6,F,black
c.jpg,70,1,3
d.jpg,41,m,
e.jpg,abc,0,0
f.jpg,130,0,0
g.jpg,30,x,0
h.jpg,30,0,purple
a.jpg,26,0,0
,20,0,0
missing.jpg,20,0,0
i.jpg,inf,0,0
"""


def test_read_labels_by_hand(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(CSV.replace("file,age,gender,race", " File , AGE,Gender,race"))
    table, skipped = read_labels(path)
    assert table == {
        "a.jpg": Label(25, 0, 0),
        "sub/b.jpg": Label(4, 1, 1),  # 3.6 years rounds to 4; "black" is race 1
        "c.jpg": Label(70, 1, 3),
        "d.jpg": Label(41, 0, -1),  # empty race: unknown
        "missing.jpg": Label(20, 0, 0),  # listed; whether the file exists is the scan's matter
    }
    reasons = {item.file: item.reason for item in skipped}
    assert reasons["e.jpg"] == "bad label in labels.csv line 6: age 'abc' is not a number"
    assert reasons["f.jpg"].endswith("age 130 outside 0..116")
    assert "gender 'x' is not 0/1, male/female or m/f" in reasons["g.jpg"]
    assert "race 'purple' is not 0..4, White, Black" in reasons["h.jpg"]
    assert reasons["labels.csv line 11"] == "no file name"
    assert reasons["i.jpg"].endswith("age 'inf' is not a number")
    assert len(skipped) == 7 and "listed again in labels.csv line 10 (first on line 2)" in [
        item.reason for item in skipped
    ]
    (tmp_path / "bad.csv").write_text("path,age\nx.jpg,3\n")
    with pytest.raises(LabelsError, match="missing column.*file, gender"):
        read_labels(tmp_path / "bad.csv")
    with pytest.raises(LabelsError, match="no such labels file"):
        read_labels(tmp_path / "none.csv")


def _collection(folder, count=12, seed=0, extra_rows=""):
    """`count` generated crops p000.jpg... (some in every split), labels.csv beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,age,gender,race"]
    for i in range(count):
        (folder / f"p{i:03d}.jpg").write_bytes(encode_jpeg(face_pixels(seed * 100 + i, 48)))
        rows.append(f"p{i:03d}.jpg,{5 + 7 * i % 100},{'female' if i % 2 else 'male'},{i % 5}")
    labels = folder.parent / f"{folder.name}-labels.csv"
    labels.write_text("\n".join(rows) + "\n" + extra_rows)
    return labels


def _prepare(photos, labels, cache):
    """The photos labelled by `labels`, prepared alone at 32 px, taken as crops."""
    return prepare_sources(parse_sources([str(photos)], labels, faces="aligned"), 32, out=cache)


def test_prepare_a_collection_of_crops_with_bad_rows(tmp_path, capsys):
    photos = tmp_path / "photos"
    labels = _collection(photos, extra_rows="gone.jpg,30,0,0\np001.jpg,31,0,0\nx.jpg,1,2,0\n")
    (photos / "p003.jpg").write_bytes(b"not a jpeg")  # listed but undecodable
    (photos / "extra.jpg").write_bytes(encode_jpeg(face_pixels(99, 48)))  # not listed
    dataset = _prepare(photos, labels, tmp_path / "cache")
    files = [record.file for record in dataset.records]
    assert files == [f"p{i:03d}.jpg" for i in range(12) if i != 3]
    record = dataset.records[files.index("p005.jpg")]
    assert (record.age, record.gender, record.race) == (40, 1, 0)
    assert all(r.split == data.split_of(r.file, 0) for r in dataset.records)
    expected = images.load_rgb(photos / "p005.jpg", 32)  # aligned: decoded like UTKFace files
    assert np.array_equal(dataset.images[files.index("p005.jpg")], expected)
    reasons = {item.file: item.reason for item in dataset.skipped}
    assert reasons["gone.jpg"] == "missing: listed in photos-labels.csv but not in photos"
    assert reasons["extra.jpg"] == "not listed in photos-labels.csv"
    assert reasons["p003.jpg"].startswith("not an image")
    assert "listed again" in reasons["p001.jpg"] and "gender '2'" in reasons["x.jpg"]
    assert dataset.seen == 11 + 5 and "skipped     1: missing" in dataset.summary()
    # the cache is reused as long as the labels are the same, and rebuilt when they change
    again = _prepare(photos, labels, tmp_path / "cache")
    assert again.cache_dir == dataset.cache_dir
    labels.write_text(labels.read_text().replace("p005.jpg,40", "p005.jpg,41"))
    changed = _prepare(photos, labels, tmp_path / "cache")
    assert changed.cache_dir != dataset.cache_dir
    assert changed.records[files.index("p005.jpg")].age == 41
    argv = ["prepare", "--data", str(photos), "--labels", str(labels), "--faces", "aligned"]
    assert main(argv + ["--size", "32", "--out", str(tmp_path / "cache")]) == 0
    assert f"cache: {changed.cache_dir}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def real_crops(real_data):
    """Eight real UTKFace crops as (name, bytes)."""
    chosen = []
    for member in iter_members(real_data):
        if member.data and member.name.endswith(".jpg"):
            chosen.append((member.name, member.data))
        if len(chosen) == 8:
            return chosen


def _paste(crops, size=(420, 300), seed=0):
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(rng.integers(90, 160, (size[1], size[0], 3), dtype=np.uint8))
    for index, crop in enumerate(crops):
        canvas.paste(Image.open(io.BytesIO(crop)).resize((120, 120)), (20 + 150 * index, 90))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_photos_are_cut_to_face_crops_and_faceless_or_crowded_ones_skipped(real_crops, tmp_path):
    pytest.importorskip("dlib", reason="face detection needs the detect extra")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "one.jpg").write_bytes(_paste([real_crops[0][1]]))
    (photos / "two.jpg").write_bytes(_paste([real_crops[1][1], real_crops[2][1]]))
    (photos / "none.jpg").write_bytes(_paste([]))  # not square: auto looks for a face
    (photos / "crop.jpg").write_bytes(real_crops[3][1])  # already a UTKFace crop
    labels = tmp_path / "labels.csv"
    labels.write_text("file,age,gender\none.jpg,30,f\ntwo.jpg,30,m\nnone.jpg,9,m\ncrop.jpg,50,m\n")
    scanned = scan_labelled(photos, labels, size=64, faces="auto")
    reasons = {item.file: item.reason for item in scanned.skipped}
    assert reasons == {
        "two.jpg": "2 faces found (a labelled photo needs one)",
        "none.jpg": "no face found",
    }
    assert [r.file for r in scanned.records] == ["crop.jpg", "one.jpg"]
    # auto took the crop as it is; the pasted face was found and cut back out of the photo
    assert np.array_equal(scanned.images[0], images.load_rgb(real_crops[3][1], 64))
    photo = images.open_rgb(photos / "one.jpg")
    (face,) = faces.detect_faces(photo)
    assert faces.box_iou(face.crop, (20, 90, 140, 210)) > 0.6  # where the crop was pasted
    assert np.array_equal(scanned.images[1], faces.crop_face(np.asarray(photo), face.chip, 64))
    # detect also finds a face in the crop itself, and cuts it with UTKFace's recipe
    detected = scan_labelled(photos, labels, size=64, faces="detect")
    assert [r.file for r in detected.records] == ["crop.jpg", "one.jpg"]
    crop = images.open_rgb(real_crops[3][1])
    (face,) = faces.detect_faces(crop)
    assert np.array_equal(detected.images[0], faces.crop_face(np.asarray(crop), face.chip, 64))


def test_several_sources_train_and_evaluate_per_source(tmp_path, make_faces, face_names, capsys):
    utk = tmp_path / "utk"
    make_faces(utk, face_names(30), size=48)
    photos = tmp_path / "photos"
    labels = _collection(photos, count=30, seed=1)
    cache = tmp_path / "cache"
    sources = [str(utk), f"{photos}::{labels}"]
    combined = prepare_sources(parse_sources(sources, faces="aligned"), size=32, out=cache)
    assert isinstance(combined, Combined) and len(combined.records) == 60
    by_source = {}
    for record in combined.records:
        by_source.setdefault(record.source, []).append(record)
    assert {name: len(rows) for name, rows in by_source.items()} == {"utk": 30, "photos": 30}
    alone = _prepare(photos, labels, cache)
    # each source keeps its own split and pixels: the labelled one is its own prepare, appended
    assert [r.split for r in by_source["photos"]] == [r.split for r in alone.records]
    assert np.array_equal(combined.images[30:], alone.images)
    assert np.array_equal(combined.images[:30], data.prepare(utk, size=32, out=cache).images)
    # stacked once into a memory-mapped cache of their own, not copied into this process
    assert isinstance(combined.images, np.memmap)
    assert combined.cache_dir.name in {cache.path.name for cache in list_caches(cache)}
    again = prepare_sources(parse_sources(sources, faces="aligned"), size=32, out=cache)
    assert again.cache_dir == combined.cache_dir
    with pytest.raises(ValueError, match="--labels labels a single --data"):
        parse_sources(sources, labels=labels)

    out = tmp_path / "run"
    argv = ["train", "--data", str(utk), "--data", str(photos), "--labels", str(labels)]
    assert main(argv + ["--out", str(out)]) == 2  # --labels with two sources
    assert "PHOTOS::LABELS.csv" in capsys.readouterr().err
    argv = ["train", "--data", sources[0], "--data", sources[1], "--faces", "aligned"]
    argv += ["--size", "32", "--epochs", "1", "--batch-size", "16", "--no-pretrained"]
    argv += ["--threads", "1", "--device", "cpu", "--cache", str(cache), "--out", str(out)]
    assert main(argv) == 0
    final = json.loads((out / "final_metrics.json").read_text())
    val_n = sum(record.split == "val" for record in combined.records)
    assert final["val"]["epoch"] == 1 and final["test"]["n"] == sum(
        record.split == "test" for record in combined.records
    )
    assert load_run_config(out).size == 32

    specs = parse_sources(sources, faces="aligned")  # the generated crops hold no real face
    report = evaluate(out / "best.pt", data=specs, split="val", cache=cache, make_plots=False)
    rows = {row["group"]: row for row in report["breakdowns"]["source"]["rows"]}
    assert {name: row["n"] for name, row in rows.items()} == {
        name: sum(r.split == "val" for r in records) for name, records in by_source.items()
    }
    assert report["n"] == val_n
    # the per-source MAEs weight up to the overall one
    total = sum(row["n"] * row["mae"] for row in rows.values() if row["n"]) / val_n
    assert total == pytest.approx(report["age"]["mae"])
    whole = evaluate(out / "best.pt", data=specs, split="all", make_plots=False)
    assert [(row["group"], row["n"]) for row in whole["breakdowns"]["source"]["rows"]] == [
        ("utk", 30),
        ("photos", 30),
    ]
