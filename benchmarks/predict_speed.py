"""Issue 21's prediction target: faces/s of the released model (ONNX Runtime, no torch) over
2,000 UTKFace crops, `--faces aligned`, and where that time goes.

    python -m benchmarks.predict_speed [--images 2000] [--checkpoint MODEL.onnx]
        [--batch-size N] [--workers N] [--repeats 3] [--stages] [--no-command]

The first `--images` crops of the shared archive (`$UTKFACE_DATA`) are written to a temporary
folder (removed at the end), then timed two ways:

- command: `python -m utkface predict FOLDER --faces aligned --out F.jsonl`, from the process's
  start to its exit (Python start, imports, loading the model, the decode pool, the JSONL file);
- in-process: `Predictor.from_pretrained(processes=True)`, built as the command builds it, then
  `predict_iter` over the files, model already loaded; best of `--repeats`.

`--stages` first times the pieces one at a time, each on one process: reading the files,
decoding (`images.open_rgb`), decoding + resizing (`images.load_rgb`), and the model alone on
those crops at several batch sizes and ONNX Runtime session settings (intra-op threads,
idle threads spinning or sleeping, graph optimisation level). Rates are faces per second of
wall time. Run it under `flock /tmp/cpu.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.inputs import write_crops
from utkface.runtime import released
from utkface.runtime.images import load_rgb, open_rgb
from utkface.runtime.predict import Predictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="UTKFace crops to predict on")
    parser.add_argument("--checkpoint", help="an .onnx export (default: the released model)")
    parser.add_argument("--batch-size", type=int, help="crops per forward pass (default: CLI's)")
    parser.add_argument("--workers", type=int, help="decode processes (default: CLI's)")
    parser.add_argument("--repeats", type=int, default=3, help="in-process runs (best is shown)")
    parser.add_argument("--stages", action="store_true", help="time each stage on its own first")
    parser.add_argument("--no-command", action="store_true", help="skip the whole-command run")
    args = parser.parse_args(argv)
    model = Path(args.checkpoint or released.path("onnx"))
    options = {"batch_size": args.batch_size, "workers": args.workers}
    options = {name: value for name, value in options.items() if value is not None}

    print(f"{model.name}, {os.cpu_count()} CPUs, load average {_load()} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="utkface-speed-") as temp:
        files = write_crops(Path(temp) / "crops", args.images)
        if args.stages:
            time_stages(files, model)
        predictor = Predictor.from_checkpoint(model, processes=True, faces="aligned", **options)
        rates = [in_process(predictor, files) for _ in range(args.repeats)]
        print(f"in-process, Predictor.predict_iter (batch {predictor.batch_size}, "
              f"{predictor.workers} decode processes): {len(files)} crops, best "
              f"{max(rates):.0f} faces/s (runs: {', '.join(f'{r:.0f}' for r in rates)})",
              flush=True)  # fmt: skip
        if not args.no_command:
            out = Path(temp) / "out.jsonl"
            flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
            command = [sys.executable, "-m", "utkface", "predict", str(files[0].parent),
                       "--faces", "aligned", "--checkpoint", str(model), "--out", str(out),
                       *flags]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            rows = len(out.read_text().splitlines())
            print(f"whole command, `utkface predict --faces aligned --out F.jsonl`: {rows} "
                  f"results in {seconds:.2f} s = {rows / seconds:.0f} faces/s")  # fmt: skip
    print(f"load average {_load()} at end")


def in_process(predictor: Predictor, files: list[Path]) -> float:
    """Faces per second of one `predict_iter` run over `files` (pool start included)."""
    start = time.perf_counter()
    faces = sum(len(prediction.faces) for prediction in predictor.predict_iter(files))
    return faces / (time.perf_counter() - start)


def time_stages(files: list[Path], model: Path) -> None:
    """Each stage alone, one process: files read, decoded, resized; then the model."""
    size = Predictor.from_checkpoint(model, faces="aligned").size
    crops: list[np.ndarray] = []
    stages: list[tuple[str, Callable[[], object]]] = [
        ("read the files", lambda: [path.read_bytes() for path in files]),
        ("decode (open_rgb)", lambda: [open_rgb(path) for path in files]),
        (
            f"decode + resize to {size} (load_rgb)",
            lambda: crops.extend(load_rgb(path, size) for path in files),
        ),
    ]
    for name, stage in stages:
        print(f"stage: {name:40s} {len(files) / _seconds(stage):8.0f} faces/s", flush=True)
    batch = np.stack(crops)
    for settings in SESSION_SETTINGS:
        session = _session(model, **settings)
        for batch_size in (1, 8, 16, 32, 64):
            count = min(len(batch), 256 if batch_size == 1 else 1024)
            pieces = [batch[i : i + batch_size] for i in range(0, count, batch_size)]
            session(pieces[0])  # warm-up: first-call allocations
            rate = count / _seconds(lambda: [session(piece) for piece in pieces])  # noqa: B023
            described = ", ".join(f"{key} {value}" for key, value in settings.items())
            print(
                f"model alone, batch {batch_size:3d}, {described:45s} {rate:8.0f} faces/s",
                flush=True,
            )


# (threads: intra-op threads, 0 = ONNX Runtime's choice; spinning: idle threads busy-wait)
SESSION_SETTINGS = [
    {"threads": 0, "spinning": 0, "optimization": "all"},
    {"threads": 1, "spinning": 0, "optimization": "all"},
    {"threads": 2, "spinning": 0, "optimization": "all"},
    {"threads": 2, "spinning": 1, "optimization": "all"},
    {"threads": 2, "spinning": 0, "optimization": "basic"},
]


def _session(model: Path, threads: int, spinning: int, optimization: str):
    """A bare ONNX Runtime session with these settings: `images -> outputs`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}  # fmt: skip
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", str(spinning))
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda images: session.run(names, {"images": images})


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
