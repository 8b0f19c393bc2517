"""The benchmark's own arithmetic (FLOP counting, the report) and the side scripts running end
to end. No timing is checked here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import run, steps


def _count(conv: torch.nn.Conv2d, x: torch.Tensor) -> int:
    mapping = {torch.ops.aten.convolution_backward: steps._conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        conv(x).sum().backward()
    return counter.get_total_flops()


def test_depthwise_backward_counts_two_forward_convolutions():
    # 32 channels, groups 32, 3x3, 8x8 output, batch 2: 2 * 2*32*8*8*9 = 73,728 FLOPs forward.
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    forward = 2 * 2 * 32 * 8 * 8 * 9
    assert _count(conv, x) == 3 * forward  # forward + input gradient + weight gradient


def test_dense_backward_matches_torch_formula():
    conv = torch.nn.Conv2d(8, 16, 3, bias=False)
    x = torch.randn(2, 8, 10, 10)  # no input gradient: forward + weight gradient
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    assert _count(conv, x) == counter.get_total_flops() == 2 * (2 * 2 * 16 * 8 * 8 * 8 * 9)


def test_plan_and_markdown(tmp_path):
    planned = run.plan("quick", tmp_path, tmp_path / "cache", run.SECTIONS)
    names = [step.name for step in planned]
    assert names[:3] == ["ingest-cold", "ingest-warm", "peak-conv"]
    assert "accuracy-seed_gender" in names and "inference-seed_age-onnx" in names
    measured = {
        "step": "peak-conv",
        "others_cores": 0.5,
        "load_start": [1.0, 1.0, 1.0],
        "load_end": [2.0, 1.0, 1.0],
        "peak_rss_mb": 300.0,
        "wall_s": 3.0,
    }
    rows = [
        {"section": "peak", "system": "conv", "value": 100.0, "text": "100", "notes": ""},
        {"section": "training throughput", "system": "a|b", "gflops": 25.0, "text": "x"},
    ]
    rows = [{"notes": "", **line, **measured} for line in rows]
    derived = run.derive(rows)
    assert rows[1]["share_of_peak"] == 0.25 and rows[1]["text"].endswith("25% of peak")
    machine = {
        "cpu": "cpu",
        "cores": 2,
        "usable_cores": 2,
        "torch": "t",
        "torch_threads": 2,
        "onnxruntime": "o",
        "python": "p",
    }
    info = {"date": "d", "command": "c", "mode": "quick", "minutes": 1.0}
    report = {"run": {**info, "sizes": run.MODES["quick"]}, "machine": machine}
    text = run.markdown({**report, "derived": derived, "rows": rows})
    assert "a\\|b" in text and "0.50 ⚠" in text and "Disturbed steps: peak-conv." in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, arguments, expected",
    [
        ("onnx_vs_torch", ["--seconds", "0.05", "--batch", "4"], r"onnxruntime +\d+\.\d+"),
        (
            "predict_stream",
            ["--images", "40", "--part-size", "10", "--photos", "0", "--no-ray"],
            r"killed \+ resumed: 40 results for 40 inputs, each exactly once: True",
        ),
        (
            "predict_latency",
            ["--images", "4", "--batch-size", "2", "--repeats", "2"],
            r"4 crop files, batch 2, --faces auto +\d+\.\d+ images/s",
        ),
        (  # the released model over 6 real crops: each stage, in-process and the whole command
            "predict_speed",
            ["--images", "6", "--repeats", "1", "--stages"],
            r"model alone, batch  16, threads 2.*\n(.*\n)*in-process.*: 6 crops, best \d+ faces/s"
            r"(.*\n)*whole command.*: 6 results in [\d.]+ s",
        ),
        (
            "augment_speed",
            ["--batch", "4", "--size", "32", "--repeat", "1", "--photo", "0", "1"],
            r"photo=1 +\d+\.\d+ ms",
        ),
        (  # one server with room for one request: 1 client is always served, 3 may get 503s
            "serve_load",
            [
                "--backends",
                "onnx",
                "--clients",
                "1",
                "--requests",
                "6",
                "--queue",
                "0",
                "--overload-queue",
                "0",
                "--overload-clients",
                "3",
                "--seconds",
                "60",
            ],  # fmt: skip
            r"\| onnx \| 1 \| 1 \| 6 \| 6 \| 0 \| 0 \| 1\.00 \| [\d.]+ \| \d+ \| \d+ \|\n"
            r"\| onnx \| 3 \| 1 \| 6 \| \d \| \d \| 0 \| .*\n\nload average .* errors 0 ",
        ),
    ],
)
def test_scripts_time_a_default_model_end_to_end(script, arguments, expected):
    """Each script, without a checkpoint, builds the seeded random model and prints its rows."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *arguments],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(expected, result.stdout), result.stdout


def test_checkpoint_formats_compares_the_three_formats(face_folder, tmp_path, capsys):
    from conftest import face_pixels
    from tiny_checkpoints import tiny_checkpoint

    from benchmarks import checkpoint_formats

    faces = np.stack([face_pixels(seed, 16) for seed in range(8)])
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", faces, size=16)
    arguments = ["--data", str(face_folder), "--split", "train", "--loads", "1"]
    checkpoint_formats.main([str(checkpoint), *arguments])
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"train split, n = (\d+), 16 px, CPU", lines[0])
    n = int(lines[0].split()[4].rstrip(","))
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in lines[3:]}
    assert list(rows) == ["pt (train's best.pt)", "safetensors float32", "safetensors float16"]
    for name in ("pt (train's best.pt)", "safetensors float32"):  # the same weights: identical
        assert [cell.strip() for cell in rows[name][2:]] == [
            "0",
            "0",
            "0",
            f"0 of {n}",
            f"0 of {2 * n}",
        ]
    assert float(rows["safetensors float16"][2]) > 0  # rounded weights move the ages a little
    assert float(rows["safetensors float16"][0]) < 0.55 * float(rows["safetensors float32"][0])


def test_pasted_compares_a_detector_with_the_true_place(real_data, capsys):
    from benchmarks import pasted

    arguments = ["--data", str(real_data), "--split", "val", "--count", "6"]
    results = pasted.main([*arguments, "--detectors", "yunet", "true"])
    out = capsys.readouterr().out
    assert re.search(r"^yunet +\d+\.\d% ", out, re.M) and re.search(r"^true +100\.0% ", out, re.M)
    true, found = results["true"], results["yunet"]
    assert true["found"] == 6 and true["crop_iou"] == pytest.approx(1.0)
    assert true["crop_diff"] < 8  # pasting and cutting again blur the crop a little
    assert found["found"] >= 5 and 0.6 < found["crop_iou"] < 1.0
    assert 0 <= found["gender_agree"] <= 1 and found["age_diff"] >= 0
