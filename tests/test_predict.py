"""`Predictor` and `utkface predict`: every kind of input, every image format and mode, batching
that matches the evaluation forward pass, detection on a composite of real crops, every bad
input (the run goes on, the exit code says so), atomic output, annotation, and backends."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoints import tiny_checkpoint

from utkface.apps.cli import main
from utkface.models.backends import TorchBackend
from utkface.models.checkpoint import load_checkpoint
from utkface.models.inference import predict_arrays
from utkface.runtime import faces as face_finder
from utkface.runtime.images import load_rgb
from utkface.runtime.names import RACES
from utkface.runtime.predict import Prediction, Predictor
from utkface.runtime.predict_files import describe, predict_files
from utkface.runtime.sources import iter_members

SIZE = 64
needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None,
    reason="the detect extra (dlib) is not installed: pip install 'utkface[detect]'",
)


def smooth_images(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8 smooth random pictures, different per index."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small]
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("predict") / "tiny.pt", smooth_images(16))


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, batch_size=4)


@pytest.fixture(scope="module")
def real_folder(real_data, tmp_path_factory) -> Path:
    """12 real UTKFace crops (every 1800th file) under `crops/a` and `crops/b`."""
    folder = tmp_path_factory.mktemp("real") / "crops"
    members = [m for i, m in enumerate(iter_members(real_data)) if m.data and i % 1800 == 1]
    for index, member in enumerate(members):
        path = folder / "ab"[index % 2] / Path(member.name).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(member.data)
    return folder


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds none: a decompression bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def model_says(predictor: Predictor, pixels: np.ndarray) -> list[dict]:
    """What the checkpoint's model itself predicts for uint8 `(N, SIZE, SIZE, 3)` crops."""
    model, meta = load_checkpoint(predictor.meta["path"])
    rows = predict_arrays(model, meta["preprocess"], pixels)
    return [{key: value[i] for key, value in rows.items()} for i in range(len(pixels))]


def check_face(face, want: dict, box=None) -> None:
    """`face` carries the model's numbers `want` (a row of `model_says`), decoded and named."""
    assert face.age == pytest.approx(want["age"], abs=2e-3)
    # whole-year percentiles: may move by one when a cumulative probability is within rounding
    assert abs(face.age_low - want["age_low"]) <= 1 and abs(face.age_high - want["age_high"]) <= 1
    assert face.gender_prob == pytest.approx(want["gender_prob"], abs=1e-4)
    assert face.gender == ("female" if face.gender_prob >= 0.5 else "male")
    assert face.race is None and face.race_prob is None
    if box is not None:
        assert face.box == box


def test_one_input_gives_one_prediction_many_give_a_list(predictor, tmp_path):
    pixels = smooth_images(3, size=48)
    path = tmp_path / "face.png"
    Image.fromarray(pixels[0]).save(path)
    singles = [str(path), path, path.read_bytes(), Image.fromarray(pixels[0]), pixels[0],
               pixels[0][..., 0], pixels[0].astype(np.float32) / 255]  # fmt: skip
    for single in singles:
        result = predictor.predict(single, faces="aligned")
        assert isinstance(result, Prediction) and result.error is None, result
        assert (result.mode, result.width, result.height) == ("aligned", 48, 48)
        (face,) = result.faces
        check_face(
            face, model_says(predictor, np.stack([load_rgb(single, SIZE)]))[0], (0, 0, 48, 48)
        )
    assert predictor.predict(singles[0], faces="aligned").source == str(path)
    assert predictor.predict(pixels[0], faces="aligned").source == "<input 0>"
    batch = predictor.predict(pixels, faces="aligned")  # (N, H, W, 3) is many
    assert [r.source for r in batch] == ["<input 0>", "<input 1>", "<input 2>"]
    listed = predictor.predict(list(pixels) + [str(path)], faces="aligned")
    assert len(listed) == 4 and [len(r.faces) for r in listed] == [1, 1, 1, 1]
    assert predictor.predict([], faces="aligned") == []


def test_aligned_equals_the_evaluation_forward_pass_at_any_batch_size(checkpoint, real_folder):
    files = sorted(real_folder.rglob("*.jpg"))
    model, meta = load_checkpoint(checkpoint)
    want = predict_arrays(model, meta["preprocess"], np.stack([load_rgb(f, SIZE) for f in files]))
    assert want["age"].std() > 0.5  # predictions differ per image, so order is tested too
    backend = TorchBackend(model, meta)
    for batch_size, workers in ((1, 1), (5, 3), (64, 4)):
        results = Predictor(backend, batch_size=batch_size, workers=workers).predict(
            files, faces="aligned"
        )
        assert [r.source for r in results] == [str(f) for f in files]
        # float sums differ by batch size; interval ends are whole-year percentiles
        for key, atol in (("age", 2e-3), ("age_low", 1), ("age_high", 1), ("gender_prob", 1e-4)):
            got = [getattr(r.faces[0], key) for r in results]
            np.testing.assert_allclose(got, want[key], atol=atol, err_msg=key)


def test_streamed_batches_equal_one_by_one_on_the_released_model(make_faces, tmp_path):
    """As `utkface predict` runs it (ONNX Runtime, decode processes): more inputs than are in
    flight at once, batches of any size, each result that of its own input predicted alone."""
    files = make_faces(tmp_path / "faces", count=40, size=72)
    predictor = Predictor.from_pretrained(faces="aligned", processes=True, workers=2)
    alone = [predictor.backend(load_rgb(path, predictor.size)[None]) for path in files]
    assert np.std([outputs["age"][0] for outputs in alone]) > 0.1  # a mix-up would show
    for batch_size in (1, 7, 16):
        predictor.batch_size = batch_size  # window 4 x batch: 4, 28, 64 inputs in flight
        results = list(predictor.predict_iter(files))
        assert [result.source for result in results] == [str(path) for path in files]
        for result, outputs in zip(results, alone):
            (face,) = result.faces
            assert face.age == pytest.approx(float(outputs["age"][0]), abs=1e-3)
            assert face.gender_prob == pytest.approx(float(outputs["gender_prob"][0]), abs=1e-5)


def test_every_format_mode_and_exif_orientation(predictor, tmp_path):
    rgb = Image.fromarray(smooth_images(1, size=40)[0]).resize((60, 40))
    rotated = rgb.getexif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    files = {
        "rgb.png": encode(rgb, "PNG"),
        "rgb.webp": encode(rgb, "WEBP"),
        "rgb.bmp": encode(rgb, "BMP"),
        "gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "deep.png": encode(Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257), "PNG"),
        "palette.gif": encode(rgb.convert("P"), "GIF"),
        "exif.jpg": encode(rgb, "JPEG", exif=rotated),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    results = {
        Path(r.source).name: r for r in predictor.predict(sorted(tmp_path.iterdir()), "aligned")
    }
    for name, result in results.items():
        assert result.error is None, (name, result.error)
        (face,) = result.faces
        check_face(face, model_says(predictor, np.stack([load_rgb(tmp_path / name, SIZE)]))[0])
    assert (results["exif.jpg"].width, results["exif.jpg"].height) == (40, 60)
    assert results["exif.jpg"].faces[0].box == (0, 10, 40, 50)  # centre square of 40x60
    assert (results["rgb.png"].width, results["rgb.png"].height) == (60, 40)


def test_bad_inputs_are_reported_and_the_run_goes_on(checkpoint, tmp_path, capsys):
    good = encode(Image.fromarray(smooth_images(1)[0]), "JPEG")
    files = {
        "good.jpg": good,
        "zero.jpg": b"",
        "truncated.jpg": good[: len(good) // 2],
        "corrupt.jpg": good[: good.index(b"\xff\xda")] + bytes(500),  # headers, then zeros
        "notes.png": b"this is a text file, not a picture\n",
        "bomb.png": png_header_only(30_000, 30_000),
    }
    for name, data in files.items():
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out.jsonl"
    inputs = [str(tmp_path / "in"), str(tmp_path / "missing.jpg"), str(tmp_path / "*.nothing"),
              str(tmp_path / "empty")]  # fmt: skip
    args = ["--checkpoint", str(checkpoint), "--out", str(out), "--faces", "aligned"]
    code = main(["predict", *inputs, *args])
    assert code == 1
    rows = {Path(row["source"]).name: row for row in map(json.loads, out.read_text().splitlines())}
    expected = {
        "zero.jpg": "empty file",
        "truncated.jpg": "truncated",
        "corrupt.jpg": "corrupt or truncated",
        "notes.png": "not an image",
        "bomb.png": "too large",
        "missing.jpg": "no such file",
        "*.nothing": "no files match",
        "empty": "no image files",
    }
    assert set(rows) == set(expected) | {"good.jpg"}
    for name, phrase in expected.items():
        assert phrase in rows[name]["error"] and rows[name]["faces"] == [], (name, rows[name])
    assert rows["good.jpg"]["error"] is None and len(rows["good.jpg"]["faces"]) == 1
    err = capsys.readouterr().err
    assert "zero.jpg: error: empty file (0 bytes)" in err
    assert "9 inputs, 8 failed, 1 faces" in err


@needs_dlib
def test_cli_folder_to_csv_with_annotations(checkpoint, real_folder, tmp_path):
    out, annotated = tmp_path / "faces.csv", tmp_path / "seen"
    args = ["predict", str(real_folder), "--checkpoint", str(checkpoint), "--out", str(out),
            "--annotate", str(annotated), "--batch-size", "5"]  # fmt: skip
    assert main(args) == 0
    rows = out.read_text().splitlines()
    files = sorted(real_folder.rglob("*.jpg"))
    assert len(rows) == 1 + len(files) and rows[0].startswith("source,error,mode,width,height")
    assert all(",,aligned,200,200,0,0,0,200,200," in row for row in rows[1:])  # auto: crops
    drawn = sorted(annotated.rglob("*.jpg"))
    assert [p.relative_to(annotated / "crops") for p in drawn] == [
        f.relative_to(real_folder) for f in files
    ]
    assert Image.open(drawn[0]).size == (200, 200)


def test_detect_on_a_composite_of_real_crops(predictor, real_folder, capsys):
    crops = [Image.open(f) for f in sorted(real_folder.rglob("*.jpg"))[:3]]
    canvas = Image.new("RGB", (800, 500), (70, 110, 150))
    pasted = [(40, 60, 180), (300, 200, 150), (560, 40, 210)]  # left, top, side
    for crop, (left, top, side) in zip(crops, pasted):
        canvas.paste(crop.resize((side, side)), (left, top))
    # each face's numbers are the model's on that face's UTKFace-style crop
    found = face_finder.detect_faces(canvas)
    want = model_says(
        predictor, np.stack([face_finder.crop_face(canvas, f.chip, SIZE) for f in found])
    )
    for mode in ("detect", "auto"):
        result = predictor.predict(canvas, faces=mode)
        assert result.mode == "detect" and len(result.faces) == 3, result
        for face, (left, top, side), expected in zip(result.faces, pasted, want):
            centre_x, centre_y = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
            assert left < centre_x < left + side and top < centre_y < top + side
            check_face(face, expected)
    assert describe(result).startswith("<input 0>: 3 faces: ")


def test_output_is_atomic_and_kept_when_a_run_fails(checkpoint, tmp_path):
    model, meta = load_checkpoint(checkpoint)

    class Failing(TorchBackend):
        def __call__(self, images):
            raise RuntimeError("out of memory")

    for index in range(6):
        Image.fromarray(smooth_images(1, seed=index)[0]).save(tmp_path / f"{index}.png")
    out = tmp_path / "results" / "out.csv"
    out.parent.mkdir()
    out.write_text("previous results\n")
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_files([str(tmp_path)], Predictor(Failing(model, meta)), out=out, faces="aligned")
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.csv"]  # no temp file left
    summary = predict_files([str(tmp_path / "*.png")], Predictor(TorchBackend(model, meta)),
                            out=out, faces="aligned")  # fmt: skip
    assert (summary.inputs, summary.failed, summary.faces) == (6, 0, 6)
    assert len(out.read_text().splitlines()) == 7
    with pytest.raises(ValueError, match=r"\.jsonl, \.csv"):
        predict_files([str(tmp_path)], Predictor(TorchBackend(model, meta)), out=tmp_path / "x.txt")


def test_backend_interface_options_and_race_head(checkpoint, tmp_path):
    class Constant:  # any callable with .preprocess and .meta is a backend
        preprocess, meta = load_checkpoint(checkpoint)[1]["preprocess"], {"model": "constant"}

        def __call__(self, images):
            n = len(images)
            return {"age": np.full(n, 30.0), "gender_prob": np.full(n, 0.2)}

    (result,) = Predictor(Constant()).predict([smooth_images(1)[0]], faces="aligned")
    face = result.faces[0]
    assert (face.age, face.age_low, face.gender, face.gender_prob) == (30.0, None, "male", 0.2)
    with pytest.raises(ValueError, match="onnx, torch"):
        Predictor.from_checkpoint(checkpoint, backend="tensorflow")
    with pytest.raises(ValueError, match="auto, detect, aligned"):
        Predictor(Constant(), faces="everything")
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(Constant(), batch_size=0)
    with_race = tiny_checkpoint(
        tmp_path / "race.pt", smooth_images(8), tasks=("age", "gender", "race")
    )
    face = (
        Predictor.from_checkpoint(with_race).predict(smooth_images(1)[0], faces="aligned").faces[0]
    )
    model, meta = load_checkpoint(with_race)
    race = predict_arrays(model, meta["preprocess"], smooth_images(1))["race_prob"][0]
    assert (face.race, face.race_prob) == (RACES[race.argmax()], pytest.approx(race.max()))


def test_missing_detector_is_named_before_the_run(checkpoint, monkeypatch, tmp_path, capsys):
    def missing(detector):
        raise face_finder.DetectorUnavailable(face_finder.INSTALL_HINT)

    monkeypatch.setattr(face_finder, "require_detector", missing)
    image = tmp_path / "a.png"
    Image.fromarray(smooth_images(1)[0]).save(image)
    assert main(["predict", str(image), "--checkpoint", str(checkpoint)]) == 2
    assert "pip install 'utkface[detect]'" in capsys.readouterr().err
    assert main(["predict", str(image), "--checkpoint", str(checkpoint), "--faces", "aligned"]) == 0
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
