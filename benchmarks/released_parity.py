"""The shipped ONNX export against the PyTorch weights it came from, on a whole split.

    python -m benchmarks.released_parity [--data UTKFace.tar.gz] [--split test]

Parity, not accuracy: every crop of the split (the project's hash split, seed 0, as the released
model was trained), decoded as every command decodes it (`images.load_rgb` at 112 px), is run
through both files of the released model, and the largest absolute difference of each output is
printed (MODEL_CARD.md records them). Nothing is scored against labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from utkface.data.dataset import default_source, split_of
from utkface.models.backends import TorchBackend
from utkface.models.export import TOLERANCE, compare_outputs, format_parity
from utkface.runtime import released
from utkface.runtime.backends import predict_batches
from utkface.runtime.images import load_rgb
from utkface.runtime.names import IMAGE_SUFFIXES
from utkface.runtime.onnx_backend import OnnxBackend
from utkface.runtime.sources import iter_members


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="UTKFace download (default: $UTKFACE_DATA)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    onnx = OnnxBackend(released.path("onnx"))
    torch_backend = TorchBackend.from_checkpoint(released.path("torch"))
    size = onnx.preprocess.size
    crops = np.stack(
        [
            load_rgb(member.data, size)
            for member in iter_members(args.data or default_source())
            if member.data
            and member.name.lower().endswith(IMAGE_SUFFIXES)
            and split_of(member.name) == args.split
        ]
    )
    want = predict_batches(torch_backend, crops, batch_size=128)
    got = predict_batches(onnx, crops, batch_size=128)
    differences = compare_outputs(want, got, TOLERANCE, "shipped ONNX export")
    print(format_parity(differences, len(crops), f"shipped ONNX export ({args.split} split)"))
    genders = int(((want["gender_prob"] >= 0.5) != (got["gender_prob"] >= 0.5)).sum())
    print(f"gender decisions that differ: {genders}; {time.perf_counter() - started:.0f} s")
    return differences


if __name__ == "__main__":
    main()
