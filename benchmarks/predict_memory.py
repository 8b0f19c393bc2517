"""`utkface predict` over many inputs: resident memory of the run and its workers (issue 22).

    python -m benchmarks.predict_memory [--inputs 100000] [--workers 2] [--images 8]
        [--checkpoint FILE] [--interval 0.1] [--unreadable]

`--images` small generated crops (64 px) are written to a temporary folder (removed at the end)
with `--inputs` hard links to them, listed in a `.txt` manifest: distinct paths, since predict
takes each path once. `python -m utkface predict MANIFEST --faces aligned --out results.jsonl`
runs over them as a user would (the released ONNX model unless `--checkpoint`; with
`--unreadable` the files are no images, so no input has a face), and every
`--interval` seconds the VmRSS (/proc/PID/status) of the run and of every process under it is
added up. Printed: the memory once the first 1,000 results are written (counted in the part
files), at the end (the last sample with the workers still running), the peak, and the growth
from the first to the end. Memory, unlike speed, does not depend much on the machine's load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MB = 2**20


@dataclass
class Sample:
    done: int  # results written so far (lines in the part files)
    parent: int  # bytes resident in the `utkface predict` process
    workers: int  # bytes resident in the processes under it, together

    @property
    def total(self) -> int:
        return self.parent + self.workers


@dataclass
class Memory:
    samples: list[Sample] = field(default_factory=list)
    returncode: int | None = None

    def after(self, done: int) -> Sample:
        """The first sample with at least `done` results written (else the last)."""
        return next((s for s in self.samples if s.done >= done), self.samples[-1])

    @property
    def end(self) -> Sample:
        """The last sample with the workers still there, before the run winds down."""
        return next((s for s in reversed(self.samples) if s.workers), self.samples[-1])

    @property
    def peak(self) -> int:
        return max(s.total for s in self.samples)


def write_inputs(
    folder: Path, inputs: int, images: int = 8, size: int = 64, unreadable: bool = False
) -> Path:
    """A manifest of `inputs` distinct paths: hard links to `images` smooth generated crops
    (or, `unreadable`, to files that are no image: every input gives an error, no face)."""
    originals = folder / "originals"
    links = folder / "inputs"
    originals.mkdir(parents=True)
    links.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(images):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        path = originals / f"{index}.png"
        if unreadable:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)
        paths.append(path)
    manifest = folder / "inputs.txt"
    with manifest.open("w") as lines:
        for index in range(inputs):
            link = links / f"{index:06d}.png"
            os.link(paths[index % images], link)
            lines.write(f"{link.relative_to(folder)}\n")  # from the manifest's folder
    return manifest


def predict_command(manifest: Path, out: Path, workers: int, checkpoint=None) -> list[str]:
    command = [sys.executable, "-m", "utkface", "predict", str(manifest), "--faces", "aligned",
               "--out", str(out), "--workers", str(workers)]  # fmt: skip
    return command + (["--checkpoint", str(checkpoint)] if checkpoint else [])


def measure(command: list[str], out: Path, interval: float = 0.1) -> Memory:
    """Run `command` (a `utkface predict ... --out out`) to its end, sampling its memory."""
    parts = out.with_name(out.name + ".parts")
    counted: dict[str, int] = {}  # part file -> lines, each part read once
    memory = Memory()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            while process.poll() is None:
                for name in _listdir(parts):
                    if name.startswith("part-") and name not in counted:
                        try:
                            counted[name] = _lines(parts / name)
                        except OSError:  # joined into `out` and removed meanwhile
                            pass
                under = sum(map(rss_bytes, descendants(process.pid)))
                sample = Sample(sum(counted.values()), rss_bytes(process.pid), under)
                if sample.parent:  # not yet exited
                    memory.samples.append(sample)
                time.sleep(interval)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        memory.returncode = process.returncode
        if process.returncode not in (0, 1) or not memory.samples:
            log.seek(0)
            sys.exit(f"utkface predict exited with {process.returncode}:\n{log.read()[-3000:]}")
    return memory


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in _listdir(Path("/proc")):
        if entry.isdigit():
            stat = _read(Path("/proc", entry, "stat"))
            if stat:  # "pid (comm) state ppid ...", comm may hold spaces and parentheses
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` in bytes; 0 for a process that has exited (or is a zombie)."""
    for line in _read(Path(f"/proc/{pid}/status")).splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the process ended meanwhile
        return ""


def _listdir(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs to predict on")
    parser.add_argument("--images", type=int, default=8, help="distinct images behind them")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--checkpoint", help="model file (default: the released ONNX model)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument(
        "--unreadable", action="store_true", help="inputs that are no image (no face in any)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="utkface-memory-") as temp:
        folder = Path(temp)
        manifest = write_inputs(folder, args.inputs, args.images, unreadable=args.unreadable)
        out = folder / "results.jsonl"
        start = time.monotonic()
        command = predict_command(manifest, out, args.workers, args.checkpoint)
        memory = measure(command, out, args.interval)
        seconds = time.monotonic() - start
        rows = _lines(out)
    first, end = memory.after(1000), memory.end
    kind = "unreadable files" if args.unreadable else "images"
    print(f"utkface predict --faces aligned --workers {args.workers}: {args.inputs} inputs "
          f"({args.images} {kind}), {rows} results, exit {memory.returncode}, {seconds:.0f} s, "
          f"{len(memory.samples)} samples")  # fmt: skip
    for name, sample in (("after the first 1,000", first), ("at the end", end)):
        print(f"RSS {name} ({sample.done} done): {sample.total / MB:.1f} MB "
              f"(parent {sample.parent / MB:.1f} + workers {sample.workers / MB:.1f})")  # fmt: skip
    print(f"RSS peak: {memory.peak / MB:.1f} MB; growth from the first 1,000 to the end: "
          f"{(end.total - first.total) / MB:+.1f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
