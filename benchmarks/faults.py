"""Kill -9 anywhere, then resume (issue 22): every writing command killed at random moments.

    python -m benchmarks.faults --kills 20           # the table in BENCHMARKS.md
    python -m benchmarks.faults --kills 3 --quick    # tests/test_faults.py

For each of `prepare` (a cache build), `train` (tiny, `--resume`), `export` and `predict
--out F.jsonl` (`--resume`): one clean run gives the reference result, its duration D and the
number of temporary files (`.NAME.tmp.*`, `atomic.TEMP`) it writes. Then trials, each from an
empty folder: the command is started (as its rerun once there is something to resume) and
killed with SIGKILL, `--chain` times in a row, then run to completion and compared with the
clean run. A third of the kills come after a delay drawn uniformly over D, a third the moment
the k-th temporary file of the run appears (k drawn over the clean run's count), that is while
a file is written or the cache is built, and a third a delay drawn over D/4 after that.
(The commands and their checks: `fault_commands`.)

After every kill: every file under its final name is whole (it parses, or equals the clean
run's bytes), and no process of the killed one's process group is left (orphans, such as pool
workers, are counted, then killed so that they do not hold locks into the rerun). After every
completion: no temporaries left, and the same result as the clean run: the same cache bytes;
training ended at the same weights, one metrics row per epoch, checkpoints that load; the same
export bytes; every prediction input exactly once, with the same numbers.

Columns: faults injected (kills that found the command running; runs that finished before
their kill are `missed`, and drawn again), during a write (kills that found a temporary file
there), survived (kills after which every check passed),
lost and duplicated (prepare: cache rows; train: epochs; export: files; predict: inputs), torn
files, temporaries left after completion, orphans.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.fault_commands import COMMANDS, Command, Train, make_data
from utkface.runtime.atomic import TEMP

_libc = ctypes.CDLL(None, use_errno=True)  # inotify (Linux)


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
    file appeared (after its start for 0). Returns the number of orphans its process group
    left and whether a temporary file was there at the kill, or its exit code if it finished
    first."""
    log = open(folder / "log.txt", "ab")
    with Temporaries(folder) as temporaries:
        process = _start(command.argv(folder, rerun), log)
        armed = time.monotonic() if temp == 0 else None
        while process.poll() is None:
            if armed is None and len(temporaries.seen) >= temp:
                armed = time.monotonic()
            left = delay - (time.monotonic() - armed) if armed is not None else 0.05
            if armed is not None and left <= 0:
                break
            temporaries.wait(min(left, 0.05))
        else:
            log.close()
            return process.returncode
        os.kill(
            process.pid, signal.SIGKILL
        )  # the process alone: its children must die by themselves
        writing = bool(temporaries.now)
    process.wait()
    log.close()
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


class Temporaries:
    """The temporary files (`atomic.TEMP` in the name) created under `folder` and the folders
    made in it, as inotify reports them: a poll would miss the writes shorter than its
    interval. `seen`: every one so far; `now`: those not yet renamed or deleted."""

    CREATE, DELETE, MOVED_FROM, ISDIR = 0x100, 0x200, 0x40, 0x40000000

    def __init__(self, folder: Path):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        self.folders: dict[int, Path] = {}
        self.seen: set[str] = set()
        self.now: set[str] = set()
        self._watch(folder)

    def __enter__(self) -> Temporaries:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def _watch(self, folder: Path) -> None:
        mask = self.CREATE | self.DELETE | self.MOVED_FROM
        handle = _libc.inotify_add_watch(self.fd, os.fsencode(folder), mask)
        if handle < 0:
            return  # gone already
        self.folders[handle] = folder
        for entry in os.scandir(folder):  # made before the watch
            self._created(folder, entry.name, entry.is_dir(follow_symlinks=False))

    def _created(self, folder: Path, name: str, is_dir: bool) -> None:
        if TEMP in name:
            self.seen.add(name)
            self.now.add(name)
        elif is_dir:
            self._watch(folder / name)

    def wait(self, seconds: float) -> None:
        """Take in what happened, waiting up to `seconds` for something to."""
        if not select.select([self.fd], [], [], max(seconds, 0))[0]:
            return
        data = os.read(self.fd, 1 << 16)
        offset = 0
        while offset < len(data):
            handle, mask, _, size = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
            offset += 16 + size
            folder = self.folders.get(handle)
            if folder is None or not name:
                continue
            if mask & self.CREATE:
                self._created(folder, name, bool(mask & self.ISDIR))
            else:
                self.now.discard(name)


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
    with open(folder / "log.txt", "ab") as log, Temporaries(folder) as temporaries:
        started = time.monotonic()
        process = _start(command.argv(folder, rerun=False), log)
        while process.poll() is None:
            temporaries.wait(0.05)
        seen = temporaries.seen
    if process.returncode:
        raise SystemExit(f"clean {command.name} failed:\n{(folder / 'log.txt').read_text()}")
    command.reference(folder)
    return time.monotonic() - started, len(seen)


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


if __name__ == "__main__":
    main()
