"""Prediction speed on CPU: single-image latency with the model loaded, and batch throughput.

    python -m benchmarks.predict_latency [CHECKPOINT] [--images 64] [--batch-size 32]
                                         [--detector yunet|dlib]

Without CHECKPOINT a randomly initialised default model (mobilenet_v2, age + gender, 128 px) is
timed: speed does not depend on the weights. Inputs are real UTKFace crops from the shared
archive (`$UTKFACE_DATA`), or generated pictures when it is absent; the detection rows use
900x600 photos made by pasting one or four crops on a plain background, faces found by
`--detector`. Numbers are medians of
`--repeats` runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import random_checkpoint
from benchmarks.inputs import composite
from utkface.data.dataset import default_source
from utkface.runtime.predict import Predictor
from utkface.runtime.sources import iter_members


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint (default: random 128 px model)")
    parser.add_argument("--images", type=int, default=64, help="images in the batch run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20, help="runs per single-image number")
    parser.add_argument(
        "--backend", help="torch or onnx (default: onnx for an .onnx file, else torch)"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--detector", default="yunet", help="yunet (default) or dlib")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        checkpoint = args.checkpoint or random_checkpoint(folder / "random.pt")
        predictor = Predictor.from_checkpoint(
            checkpoint, backend=args.backend, batch_size=args.batch_size, detector=args.detector
        )
        files = write_crops(folder / "crops", args.images)
        photo = composite([Image.open(f) for f in files[:4]])
        one_face = composite([Image.open(files[1])])
        crop = np.stack(
            [np.asarray(Image.open(files[0]).convert("RGB").resize((predictor.size,) * 2))]
        )

        model, backend = predictor.meta.get("model"), predictor.backend_name
        print(f"model {model} at {predictor.size} px, backend {backend}")
        print(
            f"torch threads {torch.get_num_threads()}, decode workers {predictor.workers}, "
            f"detector {predictor.detector}"
        )
        rows = [
            ("model only, 1 crop", lambda: predictor.backend(crop)),
            ("1 crop file, --faces aligned", lambda: predictor.predict(files[0], "aligned")),
            ("1 crop file, --faces auto", lambda: predictor.predict(files[0], "auto")),
            ("900x600 photo, 1 face, detect", lambda: predictor.predict(one_face, "detect")),
            ("900x600 photo, 1 face, auto", lambda: predictor.predict(one_face, "auto")),
            ("900x600 photo, 4 faces, detect", lambda: predictor.predict(photo, "detect")),
        ]
        for name, run in rows:
            print(f"{name:34s} {1000 * median_seconds(run, args.repeats):8.1f} ms")
        for mode in ("aligned", "auto"):
            seconds = median_seconds(lambda m=mode: predictor.predict(files, m), 3)
            print(
                f"{len(files)} crop files, batch {args.batch_size}, --faces {mode:7s}"
                f" {len(files) / seconds:8.1f} images/s"
            )


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_crops(folder: Path, count: int) -> list[Path]:
    """`count` real UTKFace crops spread over the archive, or generated 200 px pictures."""
    folder.mkdir(parents=True)
    source = default_source()
    if source.exists():
        members = [m for i, m in enumerate(iter_members(source)) if m.data and i % 250 == 0]
        datas = [m.data for m in members[:count]]
    else:
        print(f"no UTKFace archive at {source}: timing generated pictures", file=sys.stderr)
        rng = np.random.default_rng(0)
        datas = []
        for _ in range(count):
            small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
            path = folder / "tmp.jpg"
            small.resize((200, 200), Image.BICUBIC).save(path, quality=90)
            datas.append(path.read_bytes())
    paths = []
    for index, data in enumerate(datas):
        paths.append(folder / f"{index:04d}.jpg")
        paths[-1].write_bytes(data)
    return paths


if __name__ == "__main__":
    main()
