"""ONNX Runtime vs PyTorch on CPU: single-image latency and batch throughput.

    python -m benchmarks.onnx_vs_torch [--checkpoint CKPT] [--threads N] [--batch 64]

Both sides take the same uint8 (B, S, S, 3) crops and return decoded predictions: PyTorch
through `inference.predict_arrays` (the torch backend's forward pass), ONNX Runtime through
`runtime.onnx_backend.OnnxBackend` on the model exported in memory. Without `--checkpoint` the
default model (random-init mobilenet_v2, age + gender, 128 px) is used; speed does not depend
on the weights.
Each side gets the same thread count. Runs are bounded by `--seconds` per measurement.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import random_checkpoint
from utkface.models.checkpoint import load_checkpoint
from utkface.models.export import export_model
from utkface.models.inference import predict_arrays
from utkface.models.preprocess import Preprocess
from utkface.runtime.onnx_backend import OnnxBackend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint (default: random-init default model)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=64, help="batch size for throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or random_checkpoint(Path(folder) / "default.pt")
        model, meta = load_checkpoint(checkpoint)
        preprocess: Preprocess = meta["preprocess"]
        onnx = OnnxBackend(export_model(model, meta).SerializeToString(), threads=args.threads)

    rng = np.random.default_rng(0)
    size = preprocess.size
    images = rng.integers(0, 256, (args.batch, size, size, 3), dtype=np.uint8)
    backends = {
        "pytorch": lambda batch: predict_arrays(model, preprocess, batch),
        "onnxruntime": onnx,
    }
    print(
        f"model {meta['model']['name']} {'+'.join(meta['model']['tasks'])}, {size} px, "
        f"{args.threads} threads, torch {torch.__version__}, {_ort_version()}"
    )
    print(f"{'backend':12s} {'1 image: median ms':>19s} {'p90 ms':>7s} {'batch img/s':>12s}")
    for name, backend in backends.items():
        single = _timings(backend, images[:1], args.seconds)
        batch = _timings(backend, images, args.seconds)
        print(
            f"{name:12s} {statistics.median(single) * 1e3:19.2f} "
            f"{np.percentile(single, 90) * 1e3:7.2f} "
            f"{args.batch / statistics.median(batch):12.1f}"
        )


def _timings(backend, batch: np.ndarray, seconds: float, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        backend(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        backend(batch)
        times.append(time.perf_counter() - start)
    return times


def _ort_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


if __name__ == "__main__":
    main()
