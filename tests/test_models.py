"""Models: output shapes, no NaNs, a gradient for every parameter; `decode_outputs` on
hand-made age distributions, and the runtime's numpy decoding against it; ImageNet weights
offline, and the error when they are missing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from utkface.data.dataset import default_source
from utkface.models.registry import (
    INTERVAL,
    PretrainedWeightsError,
    age_quantile,
    build_model,
    decode_outputs,
)
from utkface.runtime import model_io
from utkface.runtime.names import NUM_AGES, RACES
from utkface.training.losses import multitask_loss

BATCH = 2


def _labels(batch: int) -> dict[str, torch.Tensor]:
    return {
        "age": torch.tensor([3, 70])[:batch],
        "gender": torch.tensor([0, 1])[:batch],
        "race": torch.tensor([2, -1])[:batch],  # one unknown race, as in the real data
    }


def _check_forward_backward(model: torch.nn.Module, size: int, expected: dict[str, tuple]):
    torch.manual_seed(0)
    model.train()
    x = torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    raw = model(x)
    assert {key: tuple(value.shape) for key, value in raw.items()} == expected
    for key, value in raw.items():
        assert torch.isfinite(value).all(), key
    loss, parts = multitask_loss(raw, _labels(BATCH), {"age": 1.0, "gender": 1.0, "race": 1.0})
    assert math.isfinite(loss.item()) and set(parts) == {k.split("_")[0] for k in raw}
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    # Every tensor of weights takes part: its gradient is not identically zero.
    dead = [n for n, p in model.named_parameters() if p.ndim > 1 and not p.grad.any()]
    assert not dead, f"weights with an all-zero gradient: {dead}"


@pytest.mark.parametrize(
    "tasks",
    [("age", "gender", "race"), ("age", "gender"), ("race",)],
)
def test_multitask_mobilenet_shapes_and_gradients(tasks):
    model = build_model("mobilenet_v2", tasks, pretrained=False)
    expected = {"age": (BATCH, NUM_AGES), "gender": (BATCH,), "race": (BATCH, len(RACES))}
    _check_forward_backward(model, 32, {task: expected[task] for task in tasks})
    assert set(model.heads) == set(tasks)


@pytest.mark.parametrize(
    "name, expected",
    [("seed_gender", {"gender": (BATCH,)}), ("seed_age", {"age_value": (BATCH,)})],
)
def test_seed_cnns_shapes_and_gradients(name, expected):
    model = build_model(name, pretrained=False)
    _check_forward_backward(model, 200, expected)


def test_seed_cnns_match_the_keras_layers():
    """Conv widths and the flattened width the seed's Keras models had at 200 px."""
    widths = {"seed_gender": [36, 64, 128, 256, 512], "seed_age": [128, 128, 256, 512]}
    flat = {"seed_gender": 512 * 3 * 3, "seed_age": 512 * 9 * 9}
    for name in widths:
        model = build_model(name)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [c.out_channels for c in convs] == widths[name]
        assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert [(lin.in_features, lin.out_features) for lin in linears] == [
            (flat[name], 512),
            (512, 1),
        ]


def test_unknown_model_and_tasks_name_the_choices():
    with pytest.raises(ValueError, match="mobilenet_v2.*seed_age"):
        build_model("vgg99")
    with pytest.raises(ValueError, match="age, gender, race"):
        build_model("mobilenet_v2", ("age", "height"))
    with pytest.raises(ValueError, match="age, gender, race"):
        build_model("mobilenet_v2", ())


# ---------------------------------------------------------------------------------------------
# decode_outputs


def _logits_of(distribution: dict[int, float]) -> torch.Tensor:
    """(1, 117) logits whose softmax puts `distribution[age]` on each age, 0 elsewhere."""
    logits = torch.full((1, NUM_AGES), -math.inf)
    for age, p in distribution.items():
        logits[0, age] = math.log(p)
    return logits


@pytest.mark.parametrize(
    "distribution, mean, low, high",
    [
        ({30: 1.0}, 30.0, 30, 30),  # one-hot: the interval collapses onto the age
        ({20: 0.5, 40: 0.5}, 30.0, 20, 40),
        ({10: 0.05, 50: 0.9, 90: 0.05}, 50.0, 50, 50),  # 5% tails lie outside 10..90%
        ({10: 0.1, 60: 0.8, 80: 0.1}, 10 * 0.1 + 60 * 0.8 + 80 * 0.1, 10, 60),  # cdf hits q exactly
        ({0: 0.15, 116: 0.85}, 116 * 0.85, 0, 116),  # both ends of the age range
    ],
)
def test_decode_expectation_and_interval(distribution, mean, low, high):
    decoded = decode_outputs({"age": _logits_of(distribution)})
    assert decoded["age"].item() == pytest.approx(mean, abs=1e-4)
    assert decoded["age_low"].item() == low
    assert decoded["age_high"].item() == high
    assert set(decoded) == {"age", "age_low", "age_high", "age_probs"}
    for age, p in distribution.items():  # the distribution itself, for averaging over frames
        assert decoded["age_probs"][0, age].item() == pytest.approx(p, abs=1e-5)


def test_decode_uniform_distribution():
    decoded = decode_outputs({"age": torch.zeros(3, NUM_AGES)})
    assert torch.allclose(decoded["age"], torch.full((3,), 58.0))
    # Smallest k with (k + 1) / 117 >= q: k = ceil(117 q) - 1.
    assert decoded["age_low"].tolist() == [math.ceil(NUM_AGES * INTERVAL[0]) - 1] * 3
    assert decoded["age_high"].tolist() == [math.ceil(NUM_AGES * INTERVAL[1]) - 1] * 3


def test_the_runtime_decodes_a_distribution_as_the_graph_does():
    """`model_io.decode_age` (numpy: the tracker's averaged distributions, flip TTA) gives what
    `decode_outputs` (torch, traced into ONNX exports) gives."""
    logits = torch.randn(64, NUM_AGES, generator=torch.Generator().manual_seed(0)) * 3
    logits[:16] *= 10  # peaked distributions: percentiles on single ages
    decoded = decode_outputs({"age": logits})
    age, low, high = model_io.decode_age(decoded["age_probs"].numpy())
    np.testing.assert_allclose(age, decoded["age"].numpy(), atol=1e-4)
    np.testing.assert_array_equal(low, decoded["age_low"].numpy())
    np.testing.assert_array_equal(high, decoded["age_high"].numpy())
    assert np.ptp(age) > 30 and (high - low).min() == 0  # spread and peaked rows both present


def test_views_combine_as_their_averaged_raw_outputs_would():
    """Flip TTA after the model (`model_io.average_views`, any backend) equals averaging the
    model's raw outputs before decoding, as a forward pass of both views would (gender logits
    within the +-16.6 that float32 P(female) can tell apart)."""
    generator = torch.Generator().manual_seed(1)
    views = [
        {
            "age": torch.randn(32, NUM_AGES, generator=generator) * 4,
            "gender": (torch.randn(32, generator=generator) * 5).clamp(-15, 15),
            "race": torch.randn(32, len(RACES), generator=generator) * 3,
        }
        for _ in range(2)
    ]
    want = decode_outputs({key: (views[0][key] + views[1][key]) / 2 for key in views[0]})
    decoded = [{k: v.numpy() for k, v in decode_outputs(view).items()} for view in views]
    got = model_io.average_views(decoded)
    assert set(got) == set(want)
    # P(female) near 1 is rounded to float32's 6e-8 steps: logits near 15 come back a little off
    for key, atol in (("age", 1e-3), ("gender_prob", 2e-4), ("race_prob", 1e-5)):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=atol)
    np.testing.assert_allclose(got["age_probs"], want["age_probs"].numpy(), atol=1e-6)
    for key in ("age_low", "age_high"):
        np.testing.assert_array_equal(got[key], want[key].numpy())
    regressed = model_io.average_views([{"age": np.array([30.0])}, {"age": np.array([34.0])}])
    assert regressed == {"age": pytest.approx(np.array([32.0]))}
    # A view saturated at P(female) = 1 counts as logit 16.6, not infinitely sure.
    saturated = [{"gender_prob": np.float32([1.0])}, {"gender_prob": np.float32([1 / (1 + 2e7)])}]
    assert model_io.average_views(saturated)["gender_prob"][0] == pytest.approx(0.5, abs=0.02)


def test_age_quantile_rows_are_independent():
    probs = torch.zeros(2, 5)
    probs[0, 1], probs[0, 3] = 0.5, 0.5
    probs[1, 4] = 1.0
    assert age_quantile(probs, 0.5).tolist() == [1.0, 4.0]
    assert age_quantile(probs, 0.51).tolist() == [3.0, 4.0]


def test_decode_gender_race_and_regressed_age():
    raw = {
        "gender": torch.tensor([0.0, math.log(3.0)]),  # P(female) = 0.5, 0.75
        "race": torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2], [1, 1, 1, 1, 1.0]])),
        "age_value": torch.tensor([33.5, -2.0]),
    }
    decoded = decode_outputs(raw)
    assert set(decoded) == {"age", "gender_prob", "race_prob"}  # no interval for a regressed age
    assert torch.allclose(decoded["gender_prob"], torch.tensor([0.5, 0.75]))
    assert torch.allclose(decoded["race_prob"][0], torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]))
    assert torch.allclose(decoded["race_prob"][1], torch.full((5,), 0.2))
    assert decoded["age"].tolist() == [33.5, -2.0]


# ---------------------------------------------------------------------------------------------
# ImageNet weights


def _shared_torch_home() -> Path:
    """CI sets TORCH_HOME; otherwise the shared folder beside the data download."""
    import os

    return Path(os.environ.get("TORCH_HOME") or default_source().parent / "torch")


def test_missing_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    attempts = []

    def no_download(url, *args, **kwargs):
        attempts.append(url)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(PretrainedWeightsError) as caught:
        build_model("mobilenet_v2", pretrained=True)
    message = str(caught.value)
    assert "mobilenet_v2" in message and "network disabled in tests" in message
    assert "TORCH_HOME" in message and "hub/checkpoints/mobilenet_v2-" in message
    assert "--no-pretrained" in message
    assert len(attempts) == 1  # it tried the download (real users get the weights) once


def test_pretrained_weights_load_offline(monkeypatch):
    home = _shared_torch_home()
    files = sorted((home / "hub" / "checkpoints").glob("mobilenet_v2-*.pth"))
    if not files:
        pytest.skip(f"no MobileNetV2 ImageNet weights under {home}/hub/checkpoints")
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    model = build_model("mobilenet_v2", ("age", "gender"), pretrained=True)
    saved = torch.load(files[0], map_location="cpu", weights_only=True)
    backbone = model.backbone.state_dict()
    shared = [key for key in saved if key in backbone]
    assert len(shared) > 100  # the whole feature extractor, not the ImageNet classifier
    assert all(torch.equal(backbone[key], saved[key]) for key in shared)
    assert not any(key.startswith("classifier") for key in backbone)
