"""UTKFace-C: age MAE and gender accuracy of a checkpoint under photo conditions, as a table.

    python -m benchmarks.robustness runs/x/best.pt [--split val] [--limit N] [--tta] [--json F]

The conditions and why they look as they do are in `utkface/corruptions.py`. Scores the **val**
split by default (the split to choose training settings on; `--split test` only for a final
report). The split is the checkpoint's (its training seed), exactly as `utkface evaluate` uses.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from utkface.data import corruptions
from utkface.data.dataset import default_source
from utkface.evaluation.report import corruption_table
from utkface.models.checkpoint import load_checkpoint
from utkface.models.inference import predict_arrays
from utkface.runtime.atomic import atomic_write


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=None, help="UTKFace download (default: $UTKFACE_DATA)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="at most this many faces")
    parser.add_argument("--conditions", nargs="+", default=list(corruptions.CORRUPTIONS))
    parser.add_argument("--tta", action="store_true", help="average with the mirrored image")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, meta = load_checkpoint(args.checkpoint, device=device)
    preprocess = meta["preprocess"]
    seed = int((meta.get("config") or {}).get("seed", 0))
    crops = corruptions.load_full_crops(args.data or default_source(), args.split, seed, args.limit)

    def predict(images):
        return predict_arrays(model, preprocess, images, batch_size=256, tta=args.tta)

    result = corruptions.robustness(predict, crops, preprocess.size, args.conditions, progress=True)
    result.update(
        checkpoint=str(args.checkpoint),
        split=args.split,
        tta=args.tta,
        device=device,
        seconds=time.perf_counter() - started,
    )
    print(
        f"UTKFace-C on {result['n']} faces of the {args.split} split, {args.checkpoint} "
        f"({preprocess.size} px{', flip TTA' if args.tta else ''}), {result['seconds']:.0f} s:"
    )
    print("\n".join(corruption_table(result)))
    if args.json:
        atomic_write(args.json, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
