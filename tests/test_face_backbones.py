"""Face-pretrained backbones (`mobilefacenet`, `hse_mobilenet_v1`): shapes and gradients, TF
"SAME" padding, strict loading of a state dict, the weights file's checks (digest, missing file),
the centre crop through checkpoints and ONNX exports, and, when the shared weights are present,
that the ported networks behave like the originals."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_checkpoints import tiny_checkpoint

from utkface.models import export, face_backbones
from utkface.models.checkpoint import load_checkpoint, model_spec
from utkface.models.face_backbones import (
    FACE_WEIGHTS,
    HseMobileNetV1,
    PretrainedWeightsError,
    load_backbone,
)
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess
from utkface.models.registry import build_model, model_entry
from utkface.runtime.images import load_rgb
from utkface.runtime.model_info import describe_model
from utkface.runtime.names import NUM_AGES, RACES, LabelError, parse_name
from utkface.runtime.onnx_backend import OnnxBackend
from utkface.runtime.sources import iter_members
from utkface.training.losses import multitask_loss

NAMES = tuple(FACE_WEIGHTS)
SHARED = face_backbones.weights_folder()
needs_weights = pytest.mark.skipif(
    not all((SHARED / w.file).is_file() for w in FACE_WEIGHTS.values()),
    reason=f"face-pretrained weights not in {SHARED}",
)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_every_parameter_learns(name):
    torch.manual_seed(0)
    model = build_model(name, ("age", "gender", "race"), pretrained=False).train()
    raw = model(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in raw.items()} == {
        "age": (2, NUM_AGES),
        "gender": (2,),
        "race": (2, len(RACES)),
    }
    labels = {
        "age": torch.tensor([3, 70]),
        "gender": torch.tensor([0, 1]),
        "race": torch.tensor([2, -1]),
    }
    loss, _ = multitask_loss(raw, labels, {"age": 1.0, "gender": 1.0, "race": 1.0})
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize(
    "side, kernel, stride, pads",
    [(112, 3, 2, (0, 1)), (7, 3, 2, (1, 1)), (56, 3, 1, (1, 1)), (8, 1, 1, (0, 0))],
)
def test_same_padding_puts_the_odd_pixel_at_the_end(side, kernel, stride, pads):
    assert face_backbones._same_padding((side, side), kernel, stride) == pads * 2
    layer = face_backbones.ConvBN(3, 4, kernel, stride)
    assert layer(torch.zeros(1, 3, side, side)).shape[-1] == -(-side // stride)


def test_hse_padding_is_same_or_symmetric():
    """Both variants take the same weights; they differ only where a stride-2 layer pads."""
    torch.manual_seed(0)
    same, symmetric = HseMobileNetV1().eval(), HseMobileNetV1(same=False).eval()
    symmetric.load_state_dict(same.state_dict())
    x = torch.randn(1, 3, 64, 64)
    first_same, first_symmetric = same.features[0](x), symmetric.features[0](x)
    assert first_same.shape == first_symmetric.shape == (1, 32, 32, 32)
    # SAME pads the bottom/right only, so its window starts one pixel later than symmetric's
    assert (first_same - first_symmetric).abs().max() > 0.1
    assert symmetric.features[0].conv.padding == (1, 1) and same.features[0].conv.padding == (0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_a_state_dict_of_the_module_loads_back(name):
    torch.manual_seed(0)
    source = face_backbones.BUILDERS[name]()
    tensors = dict(source.state_dict())
    tensors[FACE_WEIGHTS[name].unused[0] + "weight"] = torch.zeros(1)  # a layer left out
    target = face_backbones.BUILDERS[name]()
    load_backbone(target, name, tensors)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    first = next(iter(source.state_dict()))
    with pytest.raises(PretrainedWeightsError, match=f"missing {first}"):
        load_backbone(target, name, {k: v for k, v in tensors.items() if k != first})
    with pytest.raises(PretrainedWeightsError, match="unexpected head.weight"):
        load_backbone(target, name, {**tensors, "head.weight": torch.zeros(1)})


def _fake_weights(tmp_path, monkeypatch, name):
    """A weights folder holding the random-init backbone's own state dict as `name`'s file,
    with the table's digest set to that file's."""
    torch.manual_seed(1)
    backbone = face_backbones.BUILDERS[name]()
    path = tmp_path / FACE_WEIGHTS[name].file
    save_file(dict(backbone.state_dict()), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv(face_backbones.FOLDER_VARIABLE, str(tmp_path))
    monkeypatch.setitem(FACE_WEIGHTS, name, dataclasses.replace(FACE_WEIGHTS[name], sha256=digest))
    return backbone, path


def test_pretrained_loads_the_file_found_by_the_variable(tmp_path, monkeypatch):
    backbone, _ = _fake_weights(tmp_path, monkeypatch, "mobilefacenet")
    model = build_model("mobilefacenet", ("age",), pretrained=True)
    for key, value in backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_a_file_with_another_digest_is_refused(tmp_path, monkeypatch):
    _, path = _fake_weights(tmp_path, monkeypatch, "mobilefacenet")
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(PretrainedWeightsError, match=f"{path}: SHA-256 .* UTKFACE_FACE_WEIGHTS"):
        build_model("mobilefacenet", ("age",), pretrained=True)


def test_a_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(face_backbones.FOLDER_VARIABLE, str(tmp_path))
    path = tmp_path / FACE_WEIGHTS["hse_mobilenet_v1"].file
    with pytest.raises(PretrainedWeightsError, match=f"{path}: no such file.*--no-pretrained"):
        build_model("hse_mobilenet_v1", ("age",), pretrained=True)


def test_the_crop_keeps_the_centre_and_survives_a_checkpoint():
    preprocess = Preprocess(8, (0.0,) * 3, (1 / 255,) * 3, crop=0.5)
    images = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(1, 8, 8, 3)
    x = preprocess(images)  # (1, 3, 4, 4): rows and columns 2..5
    assert x.shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), images[0, 2:6, 2:6])
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess
    assert "crop" not in Preprocess(8).to_dict()  # older files and uncropped ones alike


def test_export_parity_with_a_crop(real_data, tmp_path):
    """A tiny random model exports with parity; the crop is in the graph and its metadata.
    HSE's network: its TF padding is computed from the input's side while tracing (the
    other's layers are torchvision's, which the default model exports already)."""
    name, size = "hse_mobilenet_v1", 48
    images = export.parity_images(real_data, size, count=8)
    path = tiny_checkpoint(tmp_path / f"{name}.pt", images, size=size, name=name)
    model, meta = load_checkpoint(path)
    cropped = dataclasses.replace(meta["preprocess"], crop=0.75)
    meta["preprocess"] = cropped
    proto = export.export_model(model, meta)
    backend = OnnxBackend(proto.SerializeToString(), threads=1)
    assert backend.preprocess.to_dict() == cropped.to_dict() == {**cropped.to_dict(), "crop": 0.75}
    assert backend.preprocess.window == (6, 36)
    want = predict_arrays(model, cropped, images)
    got = backend(images)
    assert np.ptp(want["age"]) > 1  # the outputs depend on the image
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key], atol=export.TOLERANCE[key])


def test_a_checkpoint_states_the_weights_it_started_from():
    spec = model_spec("hse_mobilenet_v1", ("age", "gender"), pretrained=True)
    assert spec["start"]["sha256"] == FACE_WEIGHTS["hse_mobilenet_v1"].sha256
    assert "start" not in model_spec("hse_mobilenet_v1", ("age",), pretrained=False)
    assert "start" not in model_spec("mobilenet_v2", ("age",), pretrained=True)
    meta = {"model": spec, "preprocess": {"size": 160, "mean": [0] * 3, "std": [1] * 3}}
    lines = describe_model("x.pt", b"", meta, None, [])
    assert "started from: hse_faceres_deep_mobilenetv1.safetensors" in lines
    assert "terms: VGGFace2 and IMDB-WIKI: research use only" in lines


def _labelled_crops(source, size: int, count: int):
    """About `count` crops spread over the archive (sorted by age) and their labels."""
    members = (m for m in iter_members(source) if m.data and m.name.endswith(".jpg"))
    images, labels = [], []
    for member in itertools.islice(members, 0, None, 21_000 // count):
        try:
            labels.append(parse_name(member.name))
        except LabelError:  # a few UTKFace names are malformed
            continue
        images.append(load_rgb(member.data, size))
    return np.stack(images), np.array([x.age for x in labels]), np.array([x.gender for x in labels])


@needs_weights
def test_hse_with_its_own_heads_estimates_age_and_gender(real_data):
    """Zero-shot, the port behaves like the original (about 5.5 years / 94% at 160 px on 300
    val crops, docs/ARCHITECTURE.md): on 64 crops, far better than chance."""
    images, ages, genders = _labelled_crops(real_data, 160, 64)
    model = build_model("hse_mobilenet_v1", ("age", "gender"), pretrained=True)
    out = predict_arrays(model, model_entry("hse_mobilenet_v1").preprocess(160), images)
    assert np.abs(out["age"] - ages).mean() < 9.0
    assert ((out["gender_prob"] > 0.5) == (genders == 1)).mean() >= 0.85


@needs_weights
def test_mobilefacenet_statistics_match_its_batch_norms(real_data):
    """On real faces, the map entering every batch norm has about the variance that norm
    measured in training (median over channels within 2x): a wrong layer, activation or
    normalization upstream would throw the layers after it off."""
    images, _, _ = _labelled_crops(real_data, 112, 32)
    model = build_model("mobilefacenet", ("age",), pretrained=True).eval()
    ratios = {}
    for name, norm in model.backbone.named_modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.register_forward_hook(
                lambda m, args, out, name=name: ratios.update(
                    {name: (args[0].var(dim=(0, 2, 3)) / m.running_var).median().item()}
                )
            )
    with torch.no_grad():
        model(model_entry("mobilefacenet").preprocess(112)(images))
    assert len(ratios) == 49
    off = {name: ratio for name, ratio in ratios.items() if not 0.5 < ratio < 2}
    assert not off
