"""Sharing the CPU cores with other processes (issue 22).

Two things let training and prediction keep most of their speed when another process keeps a
core busy:

- `passive_openmp()`: OpenMP's idle threads sleep instead of spinning (`OMP_WAIT_POLICY=
  PASSIVE`). A spinning thread waiting at a barrier takes the core the busy neighbour needs,
  and the neighbour's time slice then holds up the barrier for everyone. It must be set before
  the OpenMP library loads (before torch is imported), so the command line sets it before a
  command runs; any OMP_*/GOMP_*/KMP_* variable the user set is left as it is. Not for
  training: its many small parallel regions ran a third slower idle with sleeping threads.
- `CoreShare`: a look at `/proc/stat` every `CHECK_EVERY_S` seconds (a cheap call per training
  step, no thread) estimates how many cores other processes keep busy and sets the threads to
  the cores they leave free (at least one). One thread per free core: a thread more than there
  are cores makes every parallel region wait on the one that was descheduled.

ONNX Runtime needs neither: its sessions (`onnx_backend.py`) already keep idle threads from
spinning (`session.intra_op.allow_spinning` 0). `python -m benchmarks.neighbour` measures all
three against their speed on an idle machine (BENCHMARKS.md, "Busy neighbour").

Nothing here imports torch; the caller passes the function that sets the threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

OPENMP_PREFIXES = ("OMP_", "GOMP_", "KMP_")
CHECK_EVERY_S = 2.0  # between two looks at /proc/stat


def passive_openmp(environ: dict | None = None) -> bool:
    """Set `OMP_WAIT_POLICY=PASSIVE` in `environ` (default: this process's environment) unless
    the user set any OpenMP variable; whether it was set. Takes effect only in a process that
    has not loaded OpenMP yet (torch not imported)."""
    environ = os.environ if environ is None else environ
    if any(name.startswith(OPENMP_PREFIXES) for name in environ):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


@dataclass(frozen=True)
class CpuTimes:
    """Clock ticks of a set of cores since boot (`/proc/stat`)."""

    busy: int  # running anything: user, nice, system, irq, softirq, steal
    total: int  # busy + idle + iowait


def parse_stat(text: str, cpus: Iterable[int] | None = None) -> CpuTimes:
    """The ticks of the `cpuN` lines of `/proc/stat` text, summed over `cpus` (default: all).
    Guest time is left out: the kernel counts it in user time already."""
    wanted = None if cpus is None else set(cpus)
    busy = total = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        if wanted is not None and int(name[3:]) not in wanted:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (
            [int(field) for field in fields[:8]] + [0] * 8
        )[:8]
        busy += user + nice + system + irq + softirq + steal
        total += user + nice + system + irq + softirq + steal + idle + iowait
    return CpuTimes(busy, total)


def process_ticks(text: str) -> int:
    """User + system clock ticks of a process, from its `/proc/<pid>/stat` text (fields 14
    and 15; the command name in parentheses may hold spaces, so fields count from its end)."""
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def others_busy(before: CpuTimes, after: CpuTimes, own_ticks: int, cores: int) -> float:
    """Cores that other processes kept busy between two samples, given this process's ticks."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    return max(0.0, (after.busy - before.busy - own_ticks) / total * cores)


def threads_for(others: float, cores: int, most: int) -> int:
    """Threads for the cores others leave free: a core counts as taken once others keep it
    busy more than half the time; at least 1, at most `most`."""
    return max(1, min(most, cores - int(others + 0.5)))


class CoreShare:
    """Calls `set_threads(n)` with the threads the cores others leave free allow, looking
    every `every` seconds when `check()` is called (every training step). `cpus`: the cores
    counted (default: those this process may run on). Does nothing where `proc`/stat does not
    exist (not Linux)."""

    def __init__(
        self,
        set_threads: Callable[[int], None],
        most: int,
        every: float = CHECK_EVERY_S,
        proc: str | os.PathLike = "/proc",
        clock: Callable[[], float] = time.monotonic,
        cpus: Iterable[int] | None = None,
    ):
        self.set_threads, self.most, self.every, self.clock = set_threads, most, every, clock
        self.stat, self.own = Path(proc) / "stat", Path(proc) / "self" / "stat"
        if cpus is None and hasattr(os, "sched_getaffinity"):
            cpus = os.sched_getaffinity(0)  # the cores this process may run on
        self.cpus = None if cpus is None else sorted(cpus)
        self.cores = len(self.cpus) if self.cpus else os.cpu_count() or 1
        self.threads = most
        self.available = self.stat.is_file() and self.own.is_file()
        self._sample = self._read() if self.available else None

    def check(self) -> int | None:
        """The new thread count when it changed at this look, else None."""
        if not self.available or self.clock() - self._sample[0] < self.every:
            return None
        before, self._sample = self._sample, self._read()
        others = others_busy(before[1], self._sample[1], self._sample[2] - before[2], self.cores)
        threads = threads_for(others, self.cores, self.most)
        if threads == self.threads:
            return None
        self.threads = threads
        self.set_threads(threads)
        return threads

    def _read(self) -> tuple[float, CpuTimes, int]:
        now = self.clock()
        return (
            now,
            parse_stat(self.stat.read_text(), self.cpus),
            process_ticks(self.own.read_text()),
        )
