"""Cost of training augmentation per batch, on uint8 images before normalisation.

    python -m benchmarks.augment_speed [--batch 64] [--size 112] [--repeat 20]

Times `Augment` (flip, zoom/shift/rotation, colour jitter) alone and with each photo-condition
probability of `--photo`, plus `Preprocess` for scale, on random images of the training size,
on this process's device (CPU unless CUDA is present). Prints milliseconds per batch (median of
`--repeat` calls after one warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from utkface.models.preprocess import Preprocess
from utkface.training.augment import PHOTO_CONDITIONS, Augment


def time_ms(function, repeat: int) -> float:
    function()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--photo", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8)
    images = images.to(device)
    result = {"preprocess": time_ms(lambda: Preprocess(args.size)(images), args.repeat)}
    for photo in args.photo:
        augment = Augment(photo=photo)
        result[f"photo={photo:g}"] = time_ms(lambda a=augment: a(images, generator), args.repeat)
    for name in PHOTO_CONDITIONS:  # every image under one condition: its cost per batch
        augment = Augment(photo=1.0, conditions=(name,))
        result[f"all {name}"] = time_ms(lambda a=augment: a(images, generator), args.repeat)
    print(
        f"batch {args.batch} x {args.size} px on {device}, {torch.get_num_threads()} threads, "
        f"median of {args.repeat}:"
    )
    for name, ms in result.items():
        print(f"  {name:<16} {ms:7.1f} ms")
    return result


if __name__ == "__main__":
    main()
