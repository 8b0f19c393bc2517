"""ONNX export: checker, metadata, dynamic batch, parity with PyTorch on real UTKFace crops,
the runtime's ONNX Runtime backend on the export, and the missing-extra error."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the train extra is not installed")

from tiny_checkpoints import tiny_checkpoint  # noqa: E402

from utkface.apps.cli import main  # noqa: E402
from utkface.models import export  # noqa: E402
from utkface.models.checkpoint import load_checkpoint  # noqa: E402
from utkface.models.inference import predict_arrays  # noqa: E402
from utkface.runtime.errors import MissingExtra  # noqa: E402
from utkface.runtime.onnx_backend import OnnxBackend  # noqa: E402
from utkface.runtime.sources import iter_members  # noqa: E402


@pytest.fixture(scope="module")
def crops64(real_data):
    return export.parity_images(real_data, 64, count=32)


@pytest.fixture(scope="module")
def exported64(tmp_path_factory, crops64, real_data):
    """(checkpoint, onnx path) for a 64 px age+gender model, exported with the parity check."""
    folder = tmp_path_factory.mktemp("export64")
    checkpoint = tiny_checkpoint(folder / "tiny.pt", crops64, size=64)
    return checkpoint, export.export_onnx(checkpoint, images=real_data)


def test_export_writes_checked_model_with_metadata(exported64):
    checkpoint, path = exported64
    assert path == checkpoint.with_suffix(".onnx") and path.is_file()
    assert not list(path.parent.glob(".*"))  # no temp file left behind
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (image_input,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in image_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 64, 64, 3]
    assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    names = ["age", "age_low", "age_high", "gender_prob", "age_probs"]
    assert [o.name for o in proto.graph.output] == names
    assert proto.opset_import[0].version == export.DEFAULT_OPSET
    meta = export.read_metadata(path)
    assert meta["preprocess"]["size"] == 64 and meta["preprocess"]["inside_graph"] is True
    assert meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["labels"]["gender"] == {"0": "male", "1": "female"}
    assert meta["model"]["tasks"] == ["age", "gender"]
    keys = {entry.key for entry in proto.metadata_props}
    assert {
        "utkface.preprocess",
        "utkface.labels",
        "utkface.model",
        "utkface.outputs",
    } <= keys
    assert json.loads(dict((e.key, e.value) for e in proto.metadata_props)["utkface.model"])
    assert "uint8" in meta["input"]


def test_onnx_backend_matches_torch_on_real_crops(exported64, crops64, capsys):
    checkpoint, path = exported64
    model, meta = load_checkpoint(checkpoint)
    want = predict_arrays(model, meta["preprocess"], crops64)
    assert np.ptp(want["age"]) > 5 and np.ptp(want["gender_prob"]) > 0.3  # not a constant model
    backend = OnnxBackend(path, threads=1)
    assert backend.preprocess.to_dict() == meta["preprocess"].to_dict()
    assert backend.meta["model"] == meta["model"] and backend.meta["format"] == "onnx"
    for batch in (crops64, crops64[:1], crops64[5:8]):  # dynamic batch axis
        got = backend(batch)
        assert set(got) == set(want)
        start = 5 if len(batch) == 3 else 0
        for name, value in got.items():
            assert value.dtype == np.float32 and len(value) == len(batch)
            np.testing.assert_allclose(
                value, want[name][start : start + len(batch)], atol=export.TOLERANCE[name]
            )
    empty = backend(crops64[:0])
    assert {name: value.shape for name, value in empty.items()}["age"] == (0,)
    with pytest.raises(ValueError, match="uint8"):
        backend(crops64.astype(np.float32))


def test_parity_failure_raises_and_writes_nothing(exported64, monkeypatch, tmp_path, crops64):
    checkpoint, _ = exported64

    def drifted(*args, **kwargs):
        out = predict_arrays(*args, **kwargs)
        out["gender_prob"] = out["gender_prob"] * 0.9
        return out

    monkeypatch.setattr(export, "predict_arrays", drifted)
    target = tmp_path / "never.onnx"
    with pytest.raises(export.ParityError, match="gender_prob"):
        export.export_onnx(checkpoint, target, images=crops64, verbose=False)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_cli_export_default_size_128_with_race(tmp_path, real_data, capsys):
    crops = export.parity_images(real_data, 128, count=16)
    checkpoint = tiny_checkpoint(
        tmp_path / "tiny128.pt", crops, size=128, tasks=("age", "gender", "race")
    )
    out = tmp_path / "model" / "tiny128.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]
    assert main([*argv, "--images", str(real_data)]) == 0
    printed = capsys.readouterr().out
    print(printed)  # the parity numbers, visible with -s
    assert "parity ONNX Runtime vs PyTorch on 32 images" in printed
    for name in export.OUTPUT_NAMES:
        assert f"  {name}" in printed
    backend = OnnxBackend(out)
    assert backend(crops[:2])["race_prob"].shape == (2, 5)
    assert export.read_metadata(out)["preprocess"]["size"] == 128


def test_cli_export_reports_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(bad)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch, exported64):
    checkpoint, _ = exported64
    monkeypatch.setitem(sys.modules, "onnx", None)  # import now raises ImportError
    with pytest.raises(MissingExtra, match=r"utkface\[train\]' \(missing module 'onnx'\)"):
        export.export_model(*load_checkpoint(checkpoint))


def test_predictor_onnx_backend_matches_torch_backend(exported64, real_data):
    from utkface.runtime.predict import Predictor

    checkpoint, path = exported64
    crops = [m.data for m in itertools.islice(iter_members(real_data), 1, 400, 40)]
    want = Predictor.from_checkpoint(checkpoint, faces="aligned").predict(crops)
    # a .pt checkpoint is exported in memory; an .onnx file is loaded as it is
    for source in (checkpoint, path):
        predictor = Predictor.from_checkpoint(source, backend="onnx", faces="aligned")
        assert predictor.backend_name == "onnx"
        got = predictor.predict(crops)
        for a, b in zip(got, want):
            (fa,), (fb,) = a.faces, b.faces
            assert fa.age == pytest.approx(fb.age, abs=export.TOLERANCE["age"])
            assert fa.gender_prob == pytest.approx(fb.gender_prob, abs=1e-3)
            assert abs(fa.age_low - fb.age_low) <= 1 and abs(fa.age_high - fb.age_high) <= 1
