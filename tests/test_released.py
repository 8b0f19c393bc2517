"""The released model shipped in the package: it is the model MODEL_CARD.md describes (accuracy
on fixed test-split faces against a floor), its ONNX export gives the PyTorch weights'
predictions, each file's SHA-256 is checked on every load, the export is what every command and
`Predictor.from_pretrained()` use when no checkpoint is given, and both files are in the wheel
that `pip install .` installs."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utkface.apps.cli import main
from utkface.data.dataset import split_of
from utkface.models.backends import TorchBackend
from utkface.models.checkpoint import CheckpointError, load_checkpoint
from utkface.models.export import TOLERANCE, compare_outputs, format_parity
from utkface.runtime import released, yunet
from utkface.runtime.images import load_rgb
from utkface.runtime.names import parse_name
from utkface.runtime.onnx_backend import OnnxBackend
from utkface.runtime.predict import Predictor
from utkface.runtime.sources import iter_members

REPO = Path(__file__).resolve().parents[1]
FACES, STRIDE = 400, 5  # of the download's 2,112 test-split crops
PARITY_FACES = 48  # of those, for the ONNX export against the PyTorch weights
# Floors for those faces, from the shipped model's own scores on them (release 2026.12.1,
# 2026-12-03, no TTA: MAE 4.390 years, gender 94.00%) with room for float differences between
# machines only (0.02 years, two faces' gender). Release 2026.12 scores 4.521 / 94.00% here
# and the first release (2026.11) 4.716 / 94.00%: both fail the age ceiling.
MAE_CEILING = 4.41
GENDER_FLOOR = 0.935


@pytest.fixture(scope="module")
def test_faces(real_data) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """`FACES` test-split crops (RGB arrays), every `STRIDE`th in name order so all ages are
    in, with their true ages and genders."""
    members = sorted(
        (m for m in iter_members(real_data) if m.data and m.name.endswith(".jpg")),
        key=lambda m: m.name,
    )
    picked = [m for m in members if split_of(m.name) == "test"][::STRIDE][:FACES]
    labels = [parse_name(m.name.rsplit("/", 1)[-1]) for m in picked]
    crops = [np.asarray(Image.open(io.BytesIO(m.data)).convert("RGB")) for m in picked]
    return crops, np.array([x.age for x in labels]), np.array([x.gender for x in labels])


@pytest.fixture(scope="module")
def pretrained() -> Predictor:
    return Predictor.from_pretrained(faces="aligned", workers=1)


def test_shipped_model_scores_above_its_floor_on_fixed_test_faces(pretrained, test_faces):
    crops, ages, genders = test_faces
    results = pretrained.predict(crops)
    predicted_age = np.array([result.faces[0].age for result in results])
    predicted_female = np.array([result.faces[0].gender == "female" for result in results])
    mae = float(np.abs(predicted_age - ages).mean())
    accuracy = float((predicted_female == (genders == 1)).mean())
    print(f"released model on {FACES} test faces: MAE {mae:.3f}, gender {accuracy:.4f}")
    assert len(crops) == FACES
    assert mae <= MAE_CEILING, f"age MAE {mae:.2f} on {FACES} test faces"
    assert accuracy >= GENDER_FLOOR, f"gender accuracy {accuracy:.3f} on {FACES} test faces"


def test_shipped_files_match_their_digests_and_a_wrong_digest_is_refused(monkeypatch):
    for backend in released.FILES:
        path = released.path(backend)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == released.SHA256[backend]
    model, meta = load_checkpoint(released.path("torch"))
    assert meta["preprocess"].size == 112 and not model.training
    assert OnnxBackend(released.path()).preprocess.size == 112
    # The digest is checked whenever a released file is loaded, by whatever name.
    for backend in released.FILES:
        monkeypatch.setitem(released.SHA256, backend, "0" * 64)
    onnx, weights = released.path("onnx"), released.path("torch")
    with pytest.raises(CheckpointError, match="SHA-256 .* does not match"):
        load_checkpoint(str(weights.parent / ".." / "weights" / weights.name))
    with pytest.raises(CheckpointError, match=f"{onnx.name}: SHA-256 .* does not match"):
        OnnxBackend(str(onnx.parent / ".." / "weights" / onnx.name))
    for backend in released.FILES:
        with pytest.raises(CheckpointError, match="SHA-256"):
            Predictor.from_pretrained(backend=backend)


def test_from_pretrained_is_the_shipped_onnx_file(pretrained, test_faces):
    crops = test_faces[0][:8]
    own = Predictor.from_checkpoint(released.path(), faces="aligned", workers=1)
    assert pretrained.backend_name == own.backend_name == "onnx"
    assert [r.faces[0].age for r in pretrained.predict(crops)] == [
        r.faces[0].age for r in own.predict(crops)
    ]


def test_shipped_onnx_export_gives_the_pytorch_weights_predictions(test_faces):
    """Parity, not accuracy: the ONNX file against the PyTorch weights it was exported from,
    on test-split crops decoded as every command decodes them (MODEL_CARD.md has the numbers
    over the whole test split)."""
    crops = np.stack([load_rgb(crop, 112) for crop in test_faces[0][:PARITY_FACES]])
    want = TorchBackend.from_checkpoint(released.path("torch"))(crops)
    got = OnnxBackend(released.path("onnx"))(crops)
    assert np.ptp(want["age"]) > 20 and np.ptp(want["gender_prob"]) > 0.9  # real predictions
    differences = compare_outputs(want, got, TOLERANCE, "shipped ONNX export")
    print(format_parity(differences, len(crops), "shipped ONNX export"))
    assert differences["age"] <= 0.05 and differences["gender_prob"] <= 0.005


def test_commands_use_the_released_model_without_a_checkpoint(
    test_faces, tmp_path, monkeypatch, capsys
):
    crop = tmp_path / "face.png"
    Image.fromarray(test_faces[0][0]).save(crop)
    assert main(["predict", str(crop)]) == 0
    line = capsys.readouterr().out
    assert f"{crop}: 1 face: " in line and ("male" in line or "female" in line)

    assert main(["info"]) == 0
    info = capsys.readouterr().out
    assert f"released model {released.NAME}" in info and released.SHA256["onnx"] in info
    assert f"{released.NAME}.onnx" in info and "input 112 px" in info
    with pytest.raises(SystemExit):
        main(["--version"])
    assert released.NAME in capsys.readouterr().out

    # `export` starts from the PyTorch weights; default outputs go to the current folder, never
    # into the installed package.
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--format", "safetensors", "--no-check"]) == 0
    copy = tmp_path / f"{released.NAME}.safetensors"
    assert copy.is_file() and load_checkpoint(copy)[1]["preprocess"].size == 112
    shipped = sorted(p.name for p in released.path().parent.iterdir())
    assert shipped == sorted([*released.FILES.values(), yunet.FILE, yunet.LICENSE_FILE])


def test_the_wheel_carries_the_weights(tmp_path):
    """What `pip install .` installs: the wheel holds the released file, byte for byte. Built
    from a copy of the sources, so no build folder is left in (or reused from) the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("utkface-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for backend, name in released.FILES.items():
            data = archive.read(f"utkface/runtime/weights/{name}")
            assert hashlib.sha256(data).hexdigest() == released.SHA256[backend]
        # the built-in face detector, and its licence beside it
        data = archive.read(f"utkface/runtime/weights/{yunet.FILE}")
        assert hashlib.sha256(data).hexdigest() == yunet.SHA256
        assert (
            "MIT License" in archive.read(f"utkface/runtime/weights/{yunet.LICENSE_FILE}").decode()
        )
