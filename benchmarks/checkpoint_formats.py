"""Checkpoint formats side by side: `.pt`, safetensors float32 and float16. File size, load time,
and how far the float16 weights move the predictions on a split of the prepared data.

    python -m benchmarks.checkpoint_formats CKPT [--split val] [--limit N] [--data PATH]

The split is the checkpoint's own (its size and split seed, `prepare`'s cache reused). Only
prediction drift is measured, never accuracy; the released model's rule (float16 only where age
moves by under 0.05 years and P(female) by under 0.005 against float32) is stated on the test
split, so `--split test` is allowed. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from utkface.data.dataset import prepare
from utkface.models.checkpoint import load_checkpoint, save_safetensors
from utkface.models.inference import predict_arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a .pt checkpoint from `train`")
    parser.add_argument("--data", help="UTKFace download (default: $UTKFACE_DATA)")
    parser.add_argument(
        "--split", default="val", choices=("train", "val", "test"), help="faces to score"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N faces of the split")
    parser.add_argument("--loads", type=int, default=5, help="timed loads per format")
    args = parser.parse_args(argv)

    model, meta = load_checkpoint(args.checkpoint)
    seed = meta["config"].get("seed", 0)
    dataset = prepare(args.data, size=meta["preprocess"].size, seed=seed)
    indices = dataset.indices(args.split)[: args.limit]
    images = np.ascontiguousarray(dataset.images[indices])
    want = predict_arrays(model, meta["preprocess"], images)

    with tempfile.TemporaryDirectory() as folder:
        files = {"pt (train's best.pt)": Path(args.checkpoint)}
        for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
            path = Path(folder) / f"model.{name}.safetensors"
            save_safetensors(path, model, meta, dtype)
            files[f"safetensors {name}"] = path
        print(f"{args.split} split, n = {len(indices)}, {meta['preprocess'].size} px, CPU")
        print(
            "| format | file MB | load ms (median) | max abs age diff | mean abs age diff "
            "| max abs P(female) diff | gender flips | interval end changes |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, path in files.items():
            seconds = []
            for _ in range(args.loads):
                start = time.perf_counter()
                loaded, _ = load_checkpoint(path)
                seconds.append(time.perf_counter() - start)
            got = predict_arrays(loaded, meta["preprocess"], images)
            age = np.abs(got["age"] - want["age"])
            female = np.abs(got["gender_prob"] - want["gender_prob"])
            flips = int(((got["gender_prob"] >= 0.5) != (want["gender_prob"] >= 0.5)).sum())
            ends = int(
                (got["age_low"] != want["age_low"]).sum()
                + (got["age_high"] != want["age_high"]).sum()
            )
            print(
                f"| {name} | {path.stat().st_size / 1e6:.2f} | "
                f"{statistics.median(seconds) * 1e3:.0f} | {age.max():.2g} | {age.mean():.2g} | "
                f"{female.max():.2g} | {flips} of {len(indices)} | {ends} of {2 * len(indices)} |"
            )


if __name__ == "__main__":
    main()
