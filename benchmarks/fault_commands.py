"""The commands `benchmarks.faults` kills: how each is run in a trial folder, and how what it
left is checked against its clean run (`torn` after a kill, `final` after completion).

Prepare: a cache build of 300 generated crops (2 decoding processes), bytes against the clean
cache. Train: a tiny run (32 px MobileNetV2, 80 crops, 2 epochs; 1 with `quick`), `--resume`
once its folder has a config: the same weights as the clean run, one metrics row per epoch,
checkpoints that load. Export: the clean training run's best.pt to ONNX (safetensors with
`quick`), bytes against the clean export. Predict: the 80 crops with the released model into
`results.jsonl`, `--resume` on every rerun: each input once, the clean run's numbers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


class Command:
    """One command under test: how it is run in a trial folder and how its result is checked.
    `final` returns (lost, duplicated, problems); `torn` the problems of visible files."""

    name = ""

    def __init__(self, data: Data):
        self.data = data

    def argv(self, folder: Path, rerun: bool) -> list[str]:
        raise NotImplementedError

    def torn(self, folder: Path) -> list[str]:
        raise NotImplementedError

    def final(self, folder: Path) -> tuple[int, int, list[str]]:
        raise NotImplementedError

    def reference(self, folder: Path) -> None:
        """Keep what `final` compares with, from the clean run in `folder`."""


@dataclass
class Data:
    root: Path  # the work folder
    faces: Path  # many generated crops: prepare (its decoding pool needs 256)
    small: Path  # a few of them: train, export parity, predict
    cache: Path  # `small` prepared once, for train
    quick: bool

    @property
    def checkpoint(self) -> Path:
        """What export exports: the clean train run's best.pt."""
        return self.root / "train-clean" / "run" / "best.pt"


class Prepare(Command):
    name = "prepare"

    def argv(self, folder, rerun):
        return [
            "prepare",
            "--data",
            str(self.data.faces),
            "--out",
            str(folder / "cache"),
            "--size",
            "32",
            "--workers",
            "2",
        ]

    def reference(self, folder):
        (self.cache,) = _visible(folder / "cache")
        self.digests = _digests(self.cache)

    def torn(self, folder):
        caches = _visible(folder / "cache")
        return [f"{c}: not the clean cache" for c in caches if _digests(c) != self.digests]

    def final(self, folder):
        caches = _visible(folder / "cache")
        rows = Counter(_lines(caches[0] / "manifest.csv") if caches else [])
        want = Counter(_lines(self.cache / "manifest.csv"))
        problems = self.torn(folder) + ([] if len(caches) == 1 else [f"{len(caches)} caches"])
        return sum((want - rows).values()), sum((rows - want).values()), problems


class Train(Command):
    name = "train"

    def argv(self, folder, rerun):
        data = ["--data", str(self.data.small), "--cache", str(self.data.cache)]
        if rerun and (folder / "run" / "config.json").is_file():
            return ["train", "--resume", str(folder / "run"), *data]
        epochs = "1" if self.data.quick else "2"
        return [
            "train",
            *data,
            "--out",
            str(folder / "run"),
            "--size",
            "32",
            "--epochs",
            epochs,
            "--batch-size",
            "16",
            "--no-pretrained",
            "--threads",
            "1",
            "--device",
            "cpu",
        ]

    def reference(self, folder):
        self.clean = _checkpoint(folder / "run" / "last.pt")
        self.best_epoch = _checkpoint(folder / "run" / "best.pt")["epoch"]

    def torn(self, folder):
        run, problems = folder / "run", []
        for name in ("last.pt", "best.pt"):
            if (run / name).exists():
                try:
                    _checkpoint(run / name)
                except Exception as error:
                    problems.append(f"{run / name}: {error}")
        for name in ("config.json", "final_metrics.json"):
            if (run / name).exists():
                _json(run / name, problems)
        return problems

    def final(self, folder):
        run, problems = folder / "run", self.torn(folder)
        rows = csv.DictReader(io.StringIO((run / "metrics.csv").read_text()))
        epochs = [int(row["epoch"]) for row in rows]
        want = self.clean["epoch"]
        last = _checkpoint(run / "last.pt")
        state = last["train_state"]
        if (last["epoch"], state["step"]) != (want, state["total_steps"]):
            problems.append(f"last.pt at epoch {last['epoch']}, step {state['step']}")
        differ = [
            k for k, v in self.clean["state_dict"].items() if not last["state_dict"][k].equal(v)
        ]
        if differ:
            problems.append(f"weights differ from the clean run's ({len(differ)} tensors)")
        if _checkpoint(run / "best.pt")["epoch"] != self.best_epoch:
            problems.append("best.pt is not the clean run's best epoch")
        _json(run / "final_metrics.json", problems)
        return len(set(range(1, want + 1)) - set(epochs)), len(epochs) - len(set(epochs)), problems


class Export(Command):
    name = "export"

    def argv(self, folder, rerun):
        fmt = "safetensors" if self.data.quick else "onnx"  # quick: no ONNX tracing (~20 s)
        return [
            "export",
            "--checkpoint",
            str(self.data.checkpoint),
            "--format",
            fmt,
            "--out",
            str(folder / f"model.{fmt}"),
            "--images",
            str(self.data.small),
        ]

    def reference(self, folder):
        (self.path,) = folder.glob("model.*")
        self.digest = _sha256(self.path)
        _load_model(self.path)

    def torn(self, folder):
        path = folder / self.path.name
        return [f"{path}: torn"] if path.exists() and _sha256(path) != self.digest else []

    def final(self, folder):
        lost = not (folder / self.path.name).exists()
        return int(lost), 0, self.torn(folder)


class Predict(Command):
    name = "predict"

    def argv(self, folder, rerun):
        return [
            "predict",
            str(self.data.small),
            "--faces",
            "aligned",
            "--out",
            str(folder / "results.jsonl"),
            "--part-size",
            "8",
            "--workers",
            "2",
        ] + (["--resume"] if rerun else [])

    def reference(self, folder):
        self.rows = {row["source"]: row for row in _jsonl(folder / "results.jsonl")}

    def torn(self, folder):
        problems = []
        for path in [folder / "results.jsonl", *(folder / "results.jsonl.parts").glob("part-*")]:
            try:
                _jsonl(path) if path.exists() else None
            except ValueError as error:
                problems.append(f"{path}: {error}")
        return problems

    def final(self, folder):
        rows, problems = _jsonl(folder / "results.jsonl"), self.torn(folder)
        got = Counter(row["source"] for row in rows)
        for row in rows:
            want = self.rows.get(row["source"])
            if want and not _same_faces(row["faces"], want["faces"]):
                problems.append(f"{row['source']}: other numbers than the clean run")
        if (folder / "results.jsonl.parts").exists():
            problems.append("the parts folder was not removed")
        lost = len(set(self.rows) - set(got))
        return lost, sum(got.values()) - len(got) + len(set(got) - set(self.rows)), problems


COMMANDS = (Prepare, Train, Export, Predict)


def make_data(root: Path, quick: bool) -> Data:
    faces, small = root / "data" / "faces", root / "data" / "small"
    for folder in (faces, small):
        folder.mkdir(parents=True)
    for index in range(300):
        rng = np.random.default_rng(index)
        age, gender, race = (index * 7) % 90 + 1, index % 2, index % 5
        name = f"{age}_{gender}_{race}_2017{index:013d}.jpg.chip.jpg"
        y, x = np.mgrid[0:48, 0:48] / 47
        pixels = (
            rng.uniform(40, 200, 3) + x[..., None] * rng.uniform(-60, 60, 3) + y[..., None] * 40
        )
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(faces / name, quality=90)
        if index < 80:
            shutil.copy(faces / name, small / name)
    data = Data(root, faces, small, root / "data" / "cache", quick)
    code = subprocess.run(
        [
            sys.executable,
            "-m",
            "utkface",
            "prepare",
            "--data",
            str(small),
            "--out",
            str(data.cache),
            "--size",
            "32",
        ],
        capture_output=True,
    )
    if code.returncode:
        raise SystemExit(code.stderr.decode())
    return data


def _visible(folder: Path) -> list[Path]:
    return (
        sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    )


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _json(path: Path, problems: list[str]) -> None:
    try:
        json.loads(path.read_text())
    except ValueError as error:
        problems.append(f"{path}: {error}")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _checkpoint(path: Path) -> dict:
    from utkface.models.checkpoint import read_checkpoint

    return read_checkpoint(path)


def _load_model(path: Path) -> None:
    from utkface.runtime.backends import load_backend

    load_backend(path, "onnx" if path.suffix == ".onnx" else "torch")


def _same_faces(got: list[dict], want: list[dict]) -> bool:
    keys = ("age", "age_low", "age_high", "gender_prob")
    # float32 sums differ in the last bits with the batch a crop lands in
    return len(got) == len(want) and all(
        math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-5)
        for a, b in zip(got, want)
        for k in keys
    )
