"""Kill -9 anywhere, then resume (issue 22): every writing command killed at random moments.

    python -m benchmarks.faults --kills 20           # the table in BENCHMARKS.md
    python -m benchmarks.faults --kills 3 --quick    # tests/test_faults.py

For each of `prepare` (a cache build), `train` (tiny, `--resume`), `export` and `predict
--out F.jsonl` (`--resume`): one clean run gives the reference result, its duration D and the
number of temporary files (`.NAME.tmp.*`, `atomic.TEMP`) it writes. Then trials, each from an
empty folder: the command is started (as its rerun once there is something to resume) and
killed with SIGKILL, `--chain` times in a row, then run to completion and compared with the
clean run. Half the kills come after a delay drawn uniformly over D; the other half the moment
the k-th temporary file of the run appears (k drawn over the clean run's count), that is while
a file is written or the cache is built.

After every kill: every file under its final name is whole (it parses, or equals the clean
run's bytes), and no process of the killed one's process group is left (orphans, such as pool
workers, are counted, then killed so that they do not hold locks into the rerun). After every
completion: no temporaries left, and the same result as the clean run: the same cache bytes;
training ended at the same weights, one metrics row per epoch, checkpoints that load; the same
export bytes; every prediction input exactly once, with the same numbers.

Columns: faults injected (kills that found the command running; runs that finished before
their kill are `missed` and drawn again), survived (kills after which every check passed),
lost and duplicated (prepare: cache rows; train: epochs; export: files; predict: inputs), torn
files, temporaries left after completion, orphans.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from utkface.runtime.atomic import TEMP


@dataclass
class Tally:
    injected: int = 0
    survived: int = 0
    lost: int = 0
    duplicated: int = 0
    torn: int = 0
    leftovers: int = 0
    orphans: int = 0
    missed: int = 0
    writing: int = 0  # kills that found a temporary file (a write or cache build under way)
    problems: list[str] = field(default_factory=list)

    def row(self, name: str) -> str:
        cells = [self.injected, self.writing, self.survived, self.lost, self.duplicated, self.torn]
        cells += [self.leftovers, self.orphans, self.missed]
        return f"| {name} | " + " | ".join(map(str, cells)) + " |"


HEADER = (
    "| command | faults injected | during a write | survived | lost | duplicated | torn files "
    "| temporaries left | orphans | missed |\n|---|---|---|---|---|---|---|---|---|---|"
)


class Command:
    """One command under test: how it is run in a trial folder and how its result is checked.
    `final` returns (lost, duplicated, problems); `torn` the problems of visible files."""

    name = ""
    watched = ("",)  # folders (under the trial folder) where its temporaries appear

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
    name, watched = "prepare", ("cache",)

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
    name, watched = "train", ("run",)

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
    name, watched = "predict", ("", "results.jsonl.parts")

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


def run_command(
    command: Command,
    folder: Path,
    rng: random.Random,
    kills: int,
    chain: int,
    seconds: float,
    temps: int,
    tally: Tally,
) -> None:
    """Trials of `chain` kills each, then completion, until `kills` faults were injected."""
    trial = 0
    while tally.injected < kills and tally.missed < 3 * kills:
        trial += 1
        path = folder / f"trial-{trial:02d}"
        path.mkdir(parents=True)
        killed_here, problems, finished = 0, [], None
        while killed_here < min(chain, kills - tally.injected) and tally.missed < 3 * kills:
            kind = (tally.injected + killed_here + tally.missed) % 3
            temp = rng.randint(1, max(1, temps)) if kind else 0  # kill at its appearance,
            delay = (0, rng.uniform(0, seconds), rng.uniform(0, seconds / 4))[kind]  # or later
            outcome = _run(command, path, bool(killed_here), temp, delay)
            if isinstance(outcome, int):  # it finished first, with this exit code
                tally.missed += 1
                if killed_here:  # a rerun that completed: the trial is over
                    finished = outcome
                    break
                shutil.rmtree(path)  # the first run: draw again, from nothing
                path.mkdir()
                continue
            killed_here += 1
            tally.orphans += outcome[0]
            tally.writing += outcome[1]
            torn = _checked(command.torn, path)
            tally.torn += len(torn)
            problems += torn
        code = _complete(command, path) if finished is None else finished
        lost, duplicated, final = _checked(command.final, path) if code == 0 else (0, 0, [])
        final += [] if code == 0 else [f"the completing run exited with {code}"]
        leftovers = [p for p in path.rglob(f"*{TEMP}*")]
        tally.lost, tally.duplicated = tally.lost + lost, tally.duplicated + duplicated
        tally.leftovers += len(leftovers)
        problems += final + [f"left {p}" for p in leftovers]
        tally.injected += killed_here
        tally.survived += 0 if problems or lost or duplicated else killed_here
        tally.problems += [f"trial {trial}: {p}" for p in problems]
        shutil.rmtree(path)  # keep the disk small; the problems say what went wrong


def _checked(check, folder: Path):
    """`check(folder)`, with an exception (a file that does not parse) as a problem."""
    try:
        return check(folder)
    except Exception as error:
        problem = [f"{type(error).__name__}: {error}"]
        return problem if check.__name__ == "torn" else (0, 0, problem)


def _run(command: Command, folder: Path, rerun: bool, temp: int, delay: float):
    """Start the command and kill it with SIGKILL `delay` seconds after its `temp`-th temporary
    file appeared (after its start for 0). None if it finished first, else the number of
    orphans its process group left and whether a temporary file was there at the kill; its
    exit code if it finished first."""
    log = open(folder / "log.txt", "ab")
    process = _start(command.argv(folder, rerun), log)
    seen, armed = set(), time.monotonic() if temp == 0 else None
    while process.poll() is None:
        now = _temporaries(folder, command.watched)
        seen |= now
        if armed is None and len(seen) >= temp:
            armed = time.monotonic()
        if armed is not None and time.monotonic() - armed >= delay:
            break
        time.sleep(0.001)
    else:
        log.close()
        return process.returncode
    os.kill(process.pid, signal.SIGKILL)  # the process alone: its children must die by themselves
    process.wait()
    log.close()
    writing = bool(now)
    time.sleep(0.2)
    orphans = _group(process.pid)
    while _group(process.pid):
        os.killpg(process.pid, signal.SIGKILL)  # what the lifeline (PR_SET_PDEATHSIG) would do
        time.sleep(0.05)
    return len(orphans), writing


def _complete(command: Command, folder: Path) -> int:
    """Rerun the command to its end; its exit code."""
    with open(folder / "log.txt", "ab") as log:
        return _start(command.argv(folder, rerun=True), log).wait(timeout=900)


def _start(argv: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "utkface", *argv],
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )


def _temporaries(folder: Path, watched) -> set[str]:
    found = set()
    for sub in watched:
        try:
            found.update(e.name for e in os.scandir(folder / sub) if TEMP in e.name)
        except OSError:
            pass
    return found


def _group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def clean_run(command: Command, folder: Path) -> tuple[float, int]:
    """The reference run: its seconds and how many temporaries it wrote."""
    folder.mkdir(parents=True)
    with open(folder / "log.txt", "ab") as log:
        started, seen = time.monotonic(), set()
        process = _start(command.argv(folder, rerun=False), log)
        while process.poll() is None:
            seen |= _temporaries(folder, command.watched)
            time.sleep(0.001)
    if process.returncode:
        raise SystemExit(f"clean {command.name} failed:\n{(folder / 'log.txt').read_text()}")
    command.reference(folder)
    return time.monotonic() - started, len(seen)


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


def main(argv: list[str] | None = None) -> dict[str, Tally]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="faults to inject per command")
    parser.add_argument("--chain", type=int, default=4, help="kills in a row before completion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 epoch, safetensors export")
    parser.add_argument("--commands", default="prepare,train,export,predict")
    parser.add_argument("--work", help="work folder (default: a temporary one, deleted)")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(args.work or tempfile.mkdtemp(prefix="utkface-faults-"))
    data = make_data(root, args.quick)
    chosen = args.commands.split(",")
    if "export" in chosen and "train" not in chosen:  # export needs its checkpoint
        clean_run(Train(data), root / "train-clean")
    tallies = {}
    print(HEADER)
    try:
        for kind in COMMANDS:
            command = kind(data)
            if command.name not in chosen:
                continue
            seconds, temps = clean_run(command, root / f"{command.name}-clean")
            tally = tallies[command.name] = Tally()
            run_command(
                command, root / command.name, rng, args.kills, args.chain, seconds, temps, tally
            )
            print(tally.row(command.name) + f" <!-- clean run {seconds:.1f} s, {temps} temps -->")
            for problem in tally.problems[:10]:
                print(f"    {command.name}: {problem}")
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    return tallies


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


if __name__ == "__main__":
    main()
