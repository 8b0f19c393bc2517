"""Video speed: frames per second of `Predictor.predict_video` on a 640x480 clip, end to end
(decoding, detection, crops, model, tracking), with 1 and with 4 faces, torch and ONNX.

    python -m benchmarks.video_speed [CHECKPOINT] [--frames 50] [--every 1 3] [--threads N]

The clip is `benchmarks.clips.moving_faces` (real UTKFace crops of 112 px crossing a noisy
background, H.264 in MP4, written once per face count). For each `--every` N > 1 it also says
how far the tracked run strays from detecting on every frame: mean IoU of the boxes and mean
absolute difference of the smoothed ages, per face and frame. Without CHECKPOINT a randomly
initialised default model (mobilenet_v2, age + gender, 128 px) is timed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.clips import moving_faces, real_crops, write_clip
from benchmarks.common import random_checkpoint
from utkface.runtime.faces import box_iou
from utkface.runtime.predict import Predictor


def run(predictor: Predictor, clip: Path, every: int) -> tuple[float, dict]:
    """Frames per second, and {(frame, track): (box, smoothed age)}."""
    started = time.perf_counter()
    results = list(predictor.predict_video(clip, every=every))
    fps = len(results) / (time.perf_counter() - started)
    faces = {(r.frame, f.track): (f.face.box, f.smoothed.age) for r in results for f in r.faces}
    return fps, faces


def _predictor(checkpoint, backend: str, threads: int | None) -> Predictor:
    return Predictor.from_checkpoint(
        checkpoint, backend=backend, threads=threads if backend == "onnx" else None
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint (default: random 128 px model)")
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"])
    parser.add_argument("--faces", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="video-speed-"))
    checkpoint = args.checkpoint or random_checkpoint(folder / "random.pt")
    crops = real_crops(max(args.faces))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| backend | faces | every | frames/s | box IoU vs every 1 | smoothed age diff |")
    print("|---|---|---|---|---|---|")
    for count in args.faces:
        clip = folder / f"faces{count}.mp4"
        frames = moving_faces(crops[:count], size=(640, 480), frames=args.frames, side=112)
        write_clip(clip, frames, fps=25)
        for backend in args.backends:
            predictor = _predictor(checkpoint, backend, args.threads)
            _, reference = run(predictor, clip, 1)  # warm-up, and the reference for every > 1
            for every in args.every:
                fps, faces = run(predictor, clip, every)
                stray = ["", ""]
                if every > 1:
                    shared = [key for key in faces if key in reference]
                    ious = [box_iou(faces[k][0], reference[k][0]) for k in shared]
                    ages = [abs(faces[k][1] - reference[k][1]) for k in shared]
                    stray = [f"{np.mean(ious):.3f}", f"{np.mean(ages):.2f} years"]
                print(f"| {backend} | {count} | {every} | {fps:.1f} | {stray[0]} | {stray[1]} |")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
