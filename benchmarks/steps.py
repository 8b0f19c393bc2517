"""Benchmark steps, one per process: `python -m benchmarks.steps STEP [options] --result FILE`.

`python -m benchmarks.run` starts every step in a fresh process, so the peak resident memory it
reads back belongs to that step alone; the step writes its figures to `--result` as JSON:
`{"machine": {...}, "rows": [{"section", "system", "metric", "value", "text", "notes", ...}]}`.

Every step goes through the project's own code: `data.prepare` (ingest), `train.train` (the real
training step, schedule and time budget, stopped from its `on_step` hook), and the backends
`Predictor` runs (`runtime.backends.load_backend`). Nothing here re-implements them.

    python -m benchmarks.steps train_speed --model seed_gender --steps 3 --result /tmp/r.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from benchmarks.onnx_vs_torch import _timings
from benchmarks.prepare_speed import cpu_model, cpu_seconds, version
from utkface.data.dataset import Dataset, Record, default_source, prepare
from utkface.models.checkpoint import model_spec, save_checkpoint
from utkface.models.preprocess import Preprocess
from utkface.models.registry import build_model, model_tasks
from utkface.runtime.backends import load_backend
from utkface.training.config import resolve_config
from utkface.training.losses import multitask_loss
from utkface.training.sampling import subset_indices
from utkface.training.train import train

TARGET_GENDER_ACC = 0.87  # the seed project's claimed gender accuracy
INGEST_SIZE = 128
PEAK_CONV = {"channels": 256, "side": 56, "kernel": 3}  # a large, dense, well-tuned convolution
LABELS = {
    "seed_gender": "seed gender CNN",
    "seed_age": "seed age CNN",
    "mobilenet_v2": "ours: mobilenet_v2 multi-task",
}


def machine() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": version("onnxruntime"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": version("Pillow"),
    }


def row(section: str, system: str, metric: str, value, text: str, notes: str = "", **extra):
    return {
        "section": section,
        "system": system,
        "metric": metric,
        "value": value,
        "text": text,
        "notes": notes,
        **extra,
    }


# --- ingest --------------------------------------------------------------------------------
def ingest(cache: str, phase: str) -> list[dict]:
    """`prepare` of the UTKFace download at 128 px into `cache`: cold must build it from
    scratch (the folder is new), warm must find it complete."""
    source = default_source()
    existed = any(Path(cache).glob("*/meta.json"))
    if existed != (phase == "warm"):
        raise RuntimeError(f"{phase} ingest expected {'a' if existed else 'no'} cache in {cache}")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    dataset = prepare(source, size=INGEST_SIZE, out=cache)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    used = len(dataset.records)
    what = (
        "fresh temp cache: read archive, parse, decode, split, write"
        if phase == "cold"
        else "second `prepare`, new process: opens the cache"
    )
    return [
        row(
            "ingest",
            f"`prepare` {phase}, {INGEST_SIZE} px",
            "images/s",
            used / seconds,
            f"{used / seconds:,.0f} img/s ({seconds:.1f} s)",
            f"{what}; {dataset.seen} files seen, {used} used, {len(dataset.skipped)} skipped; "
            f"{cpu:.1f} s CPU incl. decode workers",
            seconds=seconds,
            cpu_seconds=cpu,
            images=used,
            source=str(source),
        )
    ]


# --- peak ----------------------------------------------------------------------------------
def peak_conv(batch: int, repeats: int) -> list[dict]:
    """GFLOP/s of one large 3x3 convolution, forward, channels-last: the practical ceiling."""
    c, side, k = PEAK_CONV["channels"], PEAK_CONV["side"], PEAK_CONV["kernel"]
    conv = torch.nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(batch, c, side, side).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            conv(x)
        flops = counter.get_total_flops()  # 2 * batch * c * c * k * k * side * side
        for _ in range(2):  # warm-up: oneDNN picks and caches its kernel
            conv(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    best, median = flops / min(times) / 1e9, flops / statistics.median(times) / 1e9
    return [
        row(
            "peak",
            f"conv2d {k}x{k} {c}->{c} ch, {side}x{side}, batch {batch}, forward",
            "GFLOP/s",
            best,
            f"{best:.1f} GFLOP/s (best of {repeats}; median {median:.1f})",
            f"{flops / 1e9:.1f} GFLOP per call, fp32, channels-last",
            gflops_median=median,
            gflop_per_call=flops / 1e9,
        )
    ]


# --- training throughput -------------------------------------------------------------------
class _Enough(Exception):
    """Raised from `on_step` to stop `train` once the timed steps are done."""


def step_marks(config, dataset, enough) -> list[float]:
    """Run `train.train` and return the `perf_counter` time at the end of each step, until
    `enough(marks)` says the steps timed so far suffice (then training is stopped)."""
    marks: list[float] = []

    def on_step(step: int) -> None:
        marks.append(time.perf_counter())
        if enough(marks):
            raise _Enough

    with tempfile.TemporaryDirectory() as out:
        try:
            train(config, dataset, out, progress=False, report_test=False, on_step=on_step)
        except _Enough:
            pass
    return marks


def train_speed(
    model: str,
    steps: int,
    warmup: int,
    threads: int,
    device: str = "cpu",
    precision: str = "fp32",
    size: int | None = None,
    batch: int = 64,
) -> list[dict]:
    """Images/s of `train.train`'s own step (preprocess, augment when the preset does, forward,
    `multitask_loss`, backward, AdamW, weight average), timed between `on_step` calls."""
    config = resolve_config(
        model=model,
        batch_size=batch,
        pretrained=False,
        device=device,
        precision=precision,
        size=size,
        threads=threads,
        epochs=1,
    )
    # One epoch longer than the timed steps, so it never reaches validation.
    dataset = synthetic_dataset(config.batch_size * (warmup + steps + 2), config.size)
    marks = step_marks(config, dataset, lambda marks: len(marks) == warmup + steps + 1)
    seconds = np.diff(marks)[warmup:]  # step k's time = mark k - mark k-1; drop the warm-up
    per_step = float(np.median(seconds))
    rate = config.batch_size / per_step
    flops = train_flops_per_image(config)
    achieved = flops * rate / 1e9
    return [
        row(
            "training throughput",
            f"{LABELS[model]}, {config.size} px, batch {config.batch_size}",
            "images/s",
            rate,
            f"{rate:.1f} img/s, {achieved:.1f} GFLOP/s",
            f"median of {steps} steps after {warmup} warm-up; "
            f"{flops / 1e9:.2f} GFLOP/img fwd+bwd; augment {'on' if config.augment else 'off'}"
            f" ({'our default' if not model.startswith('seed_') else 'seed preset'}); "
            f"{device}, precision {precision}",
            gflops=achieved,
            gflop_per_image=flops / 1e9,
            step_seconds=[float(s) for s in seconds],
            augment=config.augment,
            threads=torch.get_num_threads(),
        )
    ]


def synthetic_dataset(count: int, size: int, val: int = 8) -> Dataset:
    """`count` random training images (speed does not depend on the pixels) and a few val."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count + val, size, size, 3), dtype=np.uint8)
    records = [
        Record(
            f"{i}.jpg",
            int(rng.integers(1, 90)),
            int(rng.integers(0, 2)),
            int(rng.integers(0, 5)),
            "train" if i < count else "val",
        )
        for i in range(count + val)
    ]
    return Dataset(images=images, records=records, skipped=[], cache_dir=Path())


def _conv_backward_flop(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape=None, **kwargs,
) -> int:  # fmt: skip
    """Convolution backward = one forward-sized convolution per gradient asked for.

    torch's own formula ignores `groups` for the weight gradient, which counts a depthwise
    convolution's backward about `channels` times too high (MobileNetV2: 4.0 instead of
    0.59 GFLOP per 128 px image). The weight shape already holds in_channels / groups, so
    `conv_flop_count` of the forward is right for grouped convolutions too."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def train_flops_per_image(config, batch: int = 4) -> float:
    """Matmul and convolution FLOPs of one forward + backward, per image (counted on a small
    batch: they are exactly linear in it). Element-wise ops, pooling, augmentation and the
    optimizer are not counted, as FlopCounterMode does not count them."""
    torch.manual_seed(0)
    model = build_model(config.model, config.tasks, pretrained=False)
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, config.size, config.size).contiguous(
        memory_format=torch.channels_last
    )
    labels = {
        "age": torch.randint(1, 90, (batch,)),
        "gender": torch.randint(0, 2, (batch,)),
        "race": torch.randint(0, 5, (batch,)),
    }
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        loss, _ = multitask_loss(model(x), labels, config.loss_weights, config.age_sigma)
        loss.backward()
    return counter.get_total_flops() / batch


# --- time to accuracy ----------------------------------------------------------------------
def time_to_accuracy(model: str, budget: float, subset: float, run_dir: str, threads: int):
    """Train with `train.train` under a `time_budget` of `budget` minutes on a `subset` share
    of every split; the time to TARGET_GENDER_ACC is the `elapsed` of the first epoch whose
    validation gender accuracy reaches it (validation runs at epoch ends only)."""
    config = resolve_config(model=model, time_budget=budget, device="cpu", threads=threads)
    start = time.perf_counter()
    dataset = prepare(default_source(), size=config.size, seed=config.seed)
    prepare_seconds = time.perf_counter() - start
    # what the Trainer validates on
    val = subset_indices(dataset.indices("val"), subset, config.seed)
    n_train = len(subset_indices(dataset.indices("train"), subset, config.seed))
    val_digest = hashlib.sha256("\n".join(dataset.records[i].file for i in val).encode())
    start = time.perf_counter()
    train(config, dataset, run_dir, subset=subset, progress=False, report_test=False)
    train_seconds = time.perf_counter() - start
    with open(Path(run_dir) / "metrics.csv", newline="") as file:
        epochs = [
            {key: float(value) for key, value in line.items() if value not in ("", None)}
            for line in csv.DictReader(file)
        ]
    reached = next((e for e in epochs if e["val_gender_acc"] >= TARGET_GENDER_ACC), None)
    best = max(epochs, key=lambda e: e["val_gender_acc"])
    curve = ", ".join(f"{e['elapsed'] / 60:.1f} min {e['val_gender_acc']:.1%}" for e in epochs)
    if reached:
        before = [e for e in epochs if e["epoch"] < reached["epoch"]]
        text = f"{reached['elapsed'] / 60:.1f} min (epoch {int(reached['epoch'])})"
        if before:
            text += f"; previous check {before[-1]['elapsed'] / 60:.1f} min"
    else:
        text = (
            f"not reached in {budget:g} min (best {best['val_gender_acc']:.1%}, "
            f"epoch {int(best['epoch'])})"
        )
    return [
        row(
            "time to 87% val gender accuracy",
            f"{LABELS[model]}, {config.size} px, batch {config.batch_size}",
            "minutes",
            reached["elapsed"] / 60 if reached else None,
            text,
            f"budget {budget:g} min, subset {subset:g}: {n_train} train / {len(val)} val images;"
            f" val checks (elapsed, gender acc): {curve}; `prepare` ({prepare_seconds:.0f} s)"
            " not counted",
            budget_minutes=budget,
            subset=subset,
            n_train=n_train,
            n_val=len(val),
            val_files_sha256=val_digest.hexdigest(),
            epochs=epochs,
            train_seconds=train_seconds,
            prepare_seconds=prepare_seconds,
            run_dir=str(run_dir),
            config=config.to_dict(),
            threads=torch.get_num_threads(),
        )
    ]


# --- inference -----------------------------------------------------------------------------
def inference(model: str, backend: str, seconds: float, batch: int, threads: int) -> list[dict]:
    """Single-image latency and batch throughput of the backend `Predictor` would run:
    uint8 crops in, decoded predictions out (preprocess + forward + decode)."""
    config = resolve_config(model=model)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "random.pt"  # speed does not depend on the weights
        net = build_model(model, config.tasks, pretrained=False)
        spec = model_spec(model, model_tasks(model, config.tasks))
        save_checkpoint(checkpoint, net, spec, Preprocess(size=config.size))
        if backend == "torch":
            runner = load_backend(checkpoint, "torch", device="cpu")
        else:
            try:
                runner = load_backend(checkpoint, "onnx", threads=threads)
            except ImportError as error:
                return [
                    row(
                        "inference",
                        f"{LABELS[model]}, {backend}",
                        "skipped",
                        None,
                        "not measured",
                        f"ONNX Runtime unavailable: {error}",
                    )
                ]
    images = np.random.default_rng(0).integers(
        0, 256, (batch, config.size, config.size, 3), dtype=np.uint8
    )
    single = _timings(runner, images[:1], seconds)
    many = _timings(runner, images, seconds)
    name = "PyTorch" if backend == "torch" else "ONNX Runtime"
    latency, p90 = statistics.median(single) * 1e3, float(np.percentile(single, 90)) * 1e3
    rate = batch / statistics.median(many)
    return [
        row(
            "inference",
            f"{LABELS[model]}, {config.size} px, {name}",
            "ms / images/s",
            {"latency_ms": latency, "batch_images_per_s": rate},
            f"1 image {latency:.1f} ms (p90 {p90:.1f}); batch {batch}: {rate:.0f} img/s",
            f"{len(single)} + {len(many)} timed calls of {seconds:g} s each, after 3 warm-up;"
            f" {threads} threads",
            latency_ms=latency,
            latency_p90_ms=p90,
            batch_images_per_s=rate,
            threads=threads,
        )
    ]


STEPS = {
    "ingest": ingest,
    "peak_conv": peak_conv,
    "train_speed": train_speed,
    "time_to_accuracy": time_to_accuracy,
    "inference": inference,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--result", required=True, help="JSON file to write")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", choices=sorted(LABELS))
    parser.add_argument("--backend", choices=("torch", "onnx"))
    parser.add_argument("--cache", help="ingest: cache folder")
    parser.add_argument("--phase", choices=("cold", "warm"))
    parser.add_argument("--batch", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--budget", type=float, help="time budget in minutes")
    parser.add_argument("--subset", type=float)
    parser.add_argument("--run-dir")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--device", help="train_speed: cpu (default) or cuda")
    parser.add_argument("--precision", help="train_speed: fp32 (default) or bf16")
    parser.add_argument("--size", type=int, help="train_speed: input side (default: the model's)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    function = STEPS[args.step]
    wanted = inspect.signature(function).parameters
    kwargs = {k: v for k, v in vars(args).items() if k in wanted and v is not None}
    required = [k for k, p in wanted.items() if p.default is inspect.Parameter.empty]
    missing = [key for key in required if key not in kwargs]
    if missing:
        parser.error(f"{args.step} needs --{' --'.join(k.replace('_', '-') for k in missing)}")
    rows = function(**kwargs)
    result = {"machine": machine(), "rows": rows}
    Path(args.result).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
