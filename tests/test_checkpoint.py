"""Checkpoint loading is safe: a pickle payload is refused before it runs; the pickle-free
safetensors format round-trips (float32 exactly, float16 within tolerance); a SHA-256 that does
not match is refused; resume state (numpy RNG included) loads under `weights_only`."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from conftest import face_pixels
from safetensors import safe_open
from tiny_checkpoints import tiny_checkpoint

from utkface.apps.cli import main
from utkface.models import export
from utkface.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    save_safetensors,
)
from utkface.models.inference import predict_arrays
from utkface.runtime.errors import OptionError


class Payload:
    """Unpickling this opens (creates) `marker`: the smallest stand-in for running code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def faces64() -> np.ndarray:
    return np.stack([face_pixels(seed, 64) for seed in range(24)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, faces64):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", faces64, size=64)


def test_pickle_payload_is_refused_and_never_runs(checkpoint, tmp_path, capsys):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    state = read_checkpoint(checkpoint)
    state["metrics"] = {"mae": Payload(marker)}
    torch.save(state, evil)

    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*open"):
        load_checkpoint(evil)
    assert not marker.exists()
    # Every command loads through the same function: one line, exit status 2, no traceback.
    assert main(["export", "--checkpoint", str(evil), "--format", "safetensors"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("utkface export: error: ") and str(evil) in error
    assert "Traceback" not in error and not marker.exists()

    # The payload is real: the unsafe loader this replaced runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_resume_state_with_numpy_rng_loads_weights_only(checkpoint, tmp_path):
    model, meta = load_checkpoint(checkpoint)
    np.random.seed(7)
    extra = {
        "train_state": {
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "best_score": np.float64(4.5),
        }
    }
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, meta["model"], meta["preprocess"], extra=extra)
    state = torch.load(path, weights_only=True)["train_state"]  # no error: plain types only
    assert state["best_score"] == 4.5 and type(state["best_score"]) is float
    expected = np.random.rand(3)
    np.random.seed(0)
    np.random.set_state(state["numpy_rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_safetensors_float32_round_trip_is_exact(checkpoint, faces64, tmp_path):
    model, meta = load_checkpoint(checkpoint)
    want = predict_arrays(model, meta["preprocess"], faces64)
    assert np.ptp(want["age"]) > 3 and np.ptp(want["gender_prob"]) > 0.2  # not a constant model

    path = tmp_path / "model.safetensors"
    save_safetensors(path, model, meta)
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, no pickle anywhere
    again, again_meta = load_checkpoint(path)
    got = predict_arrays(again, again_meta["preprocess"], faces64)
    for key, value in want.items():
        assert np.array_equal(value, got[key]), key
    for key in ("model", "labels", "epoch", "metrics", "preprocess"):
        assert again_meta[key] == meta[key], key


def test_safetensors_float16_holds_rounded_weights_and_is_checked(checkpoint, faces64, tmp_path):
    loose = dict.fromkeys(export.HALF_TOLERANCE, 100.0)
    half = export.export_safetensors(
        checkpoint,
        tmp_path / "half.safetensors",
        half=True,
        images=faces64,
        verbose=False,
        tolerance=loose,
    )
    full = export.export_safetensors(checkpoint, images=faces64, verbose=False)
    assert full == checkpoint.with_suffix(".safetensors")
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55
    with safe_open(half, "pt") as file:
        dtypes = {file.get_tensor(key).dtype for key in file.keys()}
        info = json.loads(file.metadata()["utkface"])
    assert dtypes == {torch.float16, torch.int64}  # batch-norm step counters stay integers
    assert info["dtype"] == "float16" and info["model"]["name"] == "mobilenet_v2"

    # Loading casts back to float32: the model is the original with its weights fp16-rounded.
    model, meta = load_checkpoint(checkpoint)
    loaded, _ = load_checkpoint(half)
    for key, value in model.state_dict().items():
        want = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], want), key
    want = predict_arrays(model, meta["preprocess"], faces64)
    got = predict_arrays(loaded, meta["preprocess"], faces64)
    assert 0 < np.abs(got["age"] - want["age"]).max() < 100  # rounded, so not identical

    # This random-init net amplifies rounding (no training to make it smooth); the default
    # tolerance catches that, and nothing is written.
    refused = tmp_path / "refused.safetensors"
    with pytest.raises(export.ParityError, match="safetensors float16 differs"):
        export.export_safetensors(checkpoint, refused, half=True, images=faces64, verbose=False)
    assert not refused.exists()


def test_sha256_is_checked_before_loading(checkpoint, tmp_path):
    safetensors = tmp_path / "model.safetensors"
    save_safetensors(safetensors, *load_checkpoint(checkpoint))
    for path in (checkpoint, safetensors):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert load_checkpoint(path, sha256=digest.upper())[1]["path"] == str(path)
        wrong = digest[:-1] + ("0" if digest[-1] != "0" else "1")
        with pytest.raises(CheckpointError, match=f"{path.name}: SHA-256 {digest} does not"):
            load_checkpoint(path, sha256=wrong)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"", "not a readable checkpoint"),
        (b"\x00" * 64, "not a readable checkpoint"),
        (b"<html>not found</html>", "not a readable checkpoint"),
        # a valid safetensors file without utkface metadata
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "not a utkface safetensors file"),
    ],
)
def test_foreign_files_are_clear_errors(tmp_path, content, problem):
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"model.bin: {problem}"):
        load_checkpoint(path)


def test_an_unusable_device_is_a_user_error(checkpoint):
    with pytest.raises(OptionError, match="device 'tpu9' cannot be used"):
        load_checkpoint(checkpoint, device="tpu9")


def test_export_cli_writes_safetensors_and_rejects_mixed_options(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    args = ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--no-check"]
    assert main(args + ["--out", str(out)]) == 0
    assert load_checkpoint(out)[1]["model"]["tasks"] == ["age", "gender"]
    assert main(["export", "--checkpoint", str(checkpoint), "--half"]) == 2
    assert "--half applies to --format safetensors only" in capsys.readouterr().err


def test_init_weights_copies_the_network_and_keeps_new_heads(checkpoint):
    """A fine-tune's start: the checkpoint's backbone and heads are copied; a head the
    checkpoint lacks (race) keeps its fresh initialisation; another network is refused."""
    from utkface.models.checkpoint import init_weights
    from utkface.models.registry import build_model

    source, _ = load_checkpoint(checkpoint)
    torch.manual_seed(1)
    model = build_model("mobilenet_v2", ("age", "gender", "race"), pretrained=False)
    fresh_race = model.heads["race"].weight.detach().clone()
    copied, start = init_weights(model, "mobilenet_v2", ("age", "gender", "race"), checkpoint)
    assert copied == len(source.state_dict())
    assert start is None  # an ImageNet network: no face-pretrained start to carry
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(model.heads["race"].weight, fresh_race)
    with pytest.raises(CheckpointError, match="holds a 'mobilenet_v2' network"):
        init_weights(build_model("seed_age", ("age",)), "seed_age", ("age",), checkpoint)


def test_init_released_starts_from_the_shipped_weights():
    from utkface.models.checkpoint import init_weights
    from utkface.models.registry import build_model
    from utkface.runtime import released

    model = build_model("mobilenet_v2", ("age", "gender", "race"), pretrained=False)
    init_weights(model, "mobilenet_v2", ("age", "gender", "race"), "released")
    shipped = read_checkpoint(released.path("torch"))["state_dict"]
    key = "heads.age.weight"
    assert torch.equal(model.state_dict()[key], shipped[key].float())
