"""Cost of the face-pretrained backbones against the default model, in ONNX Runtime on CPU.

    python -m benchmarks.face_backbones [--models mobilenet_v2@112 mobilefacenet@112 ...]
                                        [--threads 2] [--batch 64] [--seconds 3]

Each model (random init, age + gender + race: speed does not depend on the weights) is exported
in memory with its own preprocessing preset and run by `runtime.onnx_backend.OnnxBackend`, the
way `utkface predict` runs an export. Printed per model: weight values, forward multiply-adds per
face (torch's FLOP counter / 2), ms per face at batch 1 (median of single calls) and at batch
`--batch` (median batch time / batch), each measured for about `--seconds` after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from utkface.models.checkpoint import model_spec
from utkface.models.export import export_model
from utkface.models.registry import build_model, model_entry
from utkface.runtime.onnx_backend import OnnxBackend

DEFAULT_MODELS = ("mobilenet_v2@112", "mobilefacenet@112", "hse_mobilenet_v1@112")
TASKS = ("age", "gender", "race")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="NAME@SIZE ...")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batch", type=int, default=64, help="the larger batch")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args(argv)

    print(f"ONNX Runtime, {args.threads} threads; ms per face, medians")
    big = f"batch {args.batch}"
    print(f"{'model':>18} {'px':>4} {'M values':>9} {'GMAC':>6} {'batch 1':>8} {big:>9}")
    for item in args.models:
        name, size = item.split("@")
        row = measure(name, int(size), args.threads, args.batch, args.seconds)
        print(
            f"{name:>18} {size:>4} {row['values'] / 1e6:>9.2f} {row['gmac']:>6.3f} "
            f"{row['batch1_ms']:>8.2f} {row['batch_ms']:>9.2f}",
            flush=True,
        )


def measure(name: str, size: int, threads: int, batch: int, seconds: float) -> dict:
    """Weight values, GMAC per face and ms per face at batch 1 and `batch` for `name`."""
    torch.manual_seed(0)
    model = build_model(name, TASKS, pretrained=False).eval()
    preprocess = model_entry(name).preprocess(size)
    meta = {"model": model_spec(name, TASKS), "preprocess": preprocess}
    backend = OnnxBackend(export_model(model, meta).SerializeToString(), threads=threads)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(preprocess(np.zeros((1, size, size, 3), np.uint8)))
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return {
        "values": sum(t.numel() for t in model.state_dict().values()),
        "gmac": counter.get_total_flops() / 2e9,
        "batch1_ms": _median_ms(lambda: backend(images[:1]), seconds),
        "batch_ms": _median_ms(lambda: backend(images), seconds) / batch,
    }


def _median_ms(call, seconds: float) -> float:
    call()  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


if __name__ == "__main__":
    main()
