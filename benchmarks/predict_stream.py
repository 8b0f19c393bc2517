"""`utkface predict` at scale: photos/s streamed, a run killed with SIGKILL halfway and resumed,
and the Ray engine, each compared with an uninterrupted run.

    python -m benchmarks.predict_stream [CHECKPOINT] [--images 20000] [--ray-images N]
        [--photos 200] [--no-ray]

The first `--images` UTKFace crops of the shared archive (`$UTKFACE_DATA`) are written to a
temporary folder (removed at the end) and go through `python -m utkface predict --faces aligned`
as a user would run it: (1) uninterrupted into one JSONL file; (2) killed with SIGKILL (the
whole process group) once half the part files exist, then run again with `--resume`; (3) the
first `--ray-images` of them with `--engine ray` on a local Ray cluster. The results of (2) and
(3) are checked against (1): every input exactly once, same genders, ages within float
tolerance. `--photos` 900x600 photos made of four pasted crops go through `--faces detect` for
the whole-photo rate. Without CHECKPOINT a randomly initialised default model (112 px) is used:
speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from benchmarks.common import random_checkpoint
from benchmarks.inputs import composite
from utkface.data.dataset import default_source
from utkface.runtime.predict_output import list_parts
from utkface.runtime.sources import iter_members


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint (default: random 112 px model)")
    parser.add_argument("--images", type=int, default=20_000, help="UTKFace crops to predict on")
    parser.add_argument("--photos", type=int, default=200, help="whole photos with detection")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="decode processes")
    parser.add_argument("--part-size", type=int, default=1000)
    parser.add_argument("--ray-images", type=int, help="crops for the Ray run (default: all)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine run")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, load average at start {_load()}")
    with tempfile.TemporaryDirectory(prefix="utkface-stream-") as temp:
        folder = Path(temp)
        checkpoint = folder / "model.pt"
        if args.checkpoint:
            shutil.copy(args.checkpoint, checkpoint)  # a training run may replace it meanwhile
        else:
            random_checkpoint(checkpoint, size=112)
        crops = write_crops(folder / "crops", args.images)
        common = ["--checkpoint", str(checkpoint), "--workers", str(args.workers),
                  "--part-size", str(args.part_size)]  # fmt: skip

        reference = folder / "reference.jsonl"
        seconds = run([str(crops), "--faces", "aligned", "--out", str(reference), *common])
        want = {row["source"]: row for row in read_jsonl(reference)}
        print(f"uninterrupted, --faces aligned: {args.images} crops in {seconds:.1f} s = "
              f"{args.images / seconds:.1f} photos/s (load {_load()})")  # fmt: skip

        resumed = folder / "resumed.jsonl"
        killed_after, before = kill_halfway(
            [str(crops), "--faces", "aligned", "--out", str(resumed), *common]
        )
        seconds = run([str(crops), "--faces", "aligned", "--out", str(resumed), "--resume",
                       *common])  # fmt: skip
        print(f"SIGKILL after {killed_after:.1f} s with {before} results in whole parts; "
              f"--resume did the other {args.images - before} in {seconds:.1f} s")  # fmt: skip
        compare("killed + resumed", read_jsonl(resumed), want)

        if not args.no_ray:
            count = min(args.ray_images or args.images, args.images)
            manifest = folder / "ray-inputs.txt"  # the first `count` crops, as a manifest
            manifest.write_text("".join(f"{source}\n" for source in list(want)[:count]))
            rows, seconds = run_ray(manifest, checkpoint, folder / "ray")
            print(f"--engine ray (local cluster of {os.cpu_count()} CPUs, 1 model actor, start-up "
                  f"excluded): {count} crops in {seconds:.1f} s = "
                  f"{count / seconds:.1f} photos/s (load {_load()})")  # fmt: skip
            compare("ray", [as_json(row) for row in rows], {s: want[s] for s in list(want)[:count]})

        if args.photos:
            photos = write_photos(folder / "photos", crops, args.photos)
            seconds = run([str(photos), "--faces", "detect", "--out", str(folder / "d.csv"),
                           *common])  # fmt: skip
            rate = args.photos / seconds
            print(f"--faces detect, 900x600 photos with 4 faces: {args.photos} photos in "
                  f"{seconds:.1f} s = {rate:.2f} photos/s (load {_load()})")  # fmt: skip
    print(f"load average at end {_load()}")


def write_crops(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    written = 0
    for member in iter_members(default_source()):
        if member.data and written < count:
            (folder / Path(member.name).name).write_bytes(member.data)
            written += 1
    if written < count:
        sys.exit(f"the archive holds only {written} images")
    return folder


def write_photos(folder: Path, crops: Path, count: int) -> Path:
    folder.mkdir()
    files = sorted(crops.iterdir())
    for index in range(count):
        picked = [Image.open(files[(4 * index + k) % len(files)]) for k in range(4)]
        composite(picked).save(folder / f"{index:04d}.jpg", quality=90)
    return folder


def run_ray(inputs: Path, checkpoint: Path, out: Path) -> tuple[list[dict], float]:
    """`predict_ray` on a local cluster started first, so that the time is the pipeline's."""
    import ray

    from utkface.apps.ray_predict import predict_ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    try:
        start = time.monotonic()
        predict_ray([str(inputs)], checkpoint, out, faces="aligned", batch_size=64, actors=1)
        seconds = time.monotonic() - start
    finally:
        ray.shutdown()
    return pq.read_table(out).to_pylist(), seconds


def run(arguments: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "utkface", "predict", *arguments])
    if done.returncode not in (0, 1):
        sys.exit(f"utkface predict exited with {done.returncode}")
    return time.monotonic() - start


def kill_halfway(arguments: list[str]) -> tuple[float, int]:
    """Run, SIGKILL the process group once half the parts exist; (seconds, results kept)."""
    out = Path(arguments[arguments.index("--out") + 1])
    parts = out.with_name(out.name + ".parts")
    total = len(list(Path(arguments[0]).iterdir()))
    size = int(arguments[arguments.index("--part-size") + 1])
    start = time.monotonic()
    command = [sys.executable, "-m", "utkface", "predict", *arguments]
    process = subprocess.Popen(command, start_new_session=True)
    while len(list_parts(parts)) < total // size // 2 and process.poll() is None:
        time.sleep(0.1)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    else:  # a tiny run can end before half its parts are seen; --resume then has nothing to do
        print(f"the run ended (exit {process.returncode}) before it could be killed")
    kept = sum(len(part.read_text().splitlines()) for part in list_parts(parts))
    return time.monotonic() - start, kept


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def as_json(row: dict) -> dict:
    """A Parquet row (one face) in the JSONL shape, for `compare`."""
    face = {key: row[key] for key in ("age", "gender", "gender_prob")}
    return {"source": row["source"], "error": row["error"], "faces": [face] if row["age"] else []}


def compare(name: str, rows: list[dict], want: dict[str, dict]) -> None:
    sources = [row["source"] for row in rows]
    once = len(sources) == len(set(sources)) and set(sources) == set(want)
    worst, genders = 0.0, 0
    for row in rows:
        for face, expected in zip(row["faces"], want[row["source"]]["faces"]):
            worst = max(worst, abs(face["age"] - expected["age"]))
            genders += face["gender"] != expected["gender"]
    print(f"{name}: {len(rows)} results for {len(set(sources))} inputs, each exactly once: "
          f"{once}; largest age difference {worst:.2g} years; "
          f"genders differing {genders}")  # fmt: skip


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
