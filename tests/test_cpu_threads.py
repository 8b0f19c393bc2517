"""Sharing the cores with other processes (`runtime/cpu_threads.py`, issue 22): `/proc/stat`
samples read from text, the threads chosen for given busy figures, the user's OpenMP settings
respected, and nothing done where there is no `/proc/stat`. The speed it buys is measured by
`python -m benchmarks.neighbour`, not here."""

from __future__ import annotations

import os

import pytest

from utkface.apps import cli
from utkface.runtime.cpu_threads import (
    CoreShare,
    CpuTimes,
    others_busy,
    parse_stat,
    passive_openmp,
    process_ticks,
    threads_for,
)

#          user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  1000 10 300 5000 40 0 7 3 99 0
cpu0 400 5 100 2500 20 0 3 1 50 0
cpu1 600 5 200 2500 20 0 4 2 49 0
intr 11101939 0 0 0
ctxt 13354533
btime 1764720000
"""
# pid (comm) state ppid ... utime (14th) stime (15th) ...; a name may hold spaces and ")"
SELF_STAT = "4242 (python3 (x) y) R 1 4242 4242 0 -1 4194304 100 0 0 0 {utime} {stime} 0 0 20 0"


def test_parse_stat_sums_the_cores_asked_for_without_guest_time():
    # busy: user + nice + system + irq + softirq + steal; total adds idle + iowait
    assert parse_stat(STAT) == CpuTimes(busy=509 + 811, total=3029 + 3331)
    assert parse_stat(STAT, cpus=[1]) == CpuTimes(busy=811, total=3331)
    assert parse_stat("cpu0 1 2 3 4\n") == CpuTimes(busy=6, total=10)  # old kernels: 4 fields


def test_process_ticks_count_from_the_end_of_the_command_name():
    assert process_ticks(SELF_STAT.format(utime=250, stime=30)) == 280


def test_others_busy_leaves_out_this_process():
    before, after = CpuTimes(busy=1000, total=4000), CpuTimes(busy=1400, total=4400)
    # 400 ticks of 2 cores' 400 were busy, 200 of them ours: the others kept one core busy
    assert others_busy(before, after, own_ticks=200, cores=2) == pytest.approx(1.0)
    assert others_busy(before, after, own_ticks=400, cores=2) == 0.0
    assert others_busy(before, before, own_ticks=0, cores=2) == 0.0  # no time passed


@pytest.mark.parametrize(
    ("others", "cores", "most", "threads"),
    [
        (0.0, 2, 2, 2),
        (0.4, 2, 2, 2),  # a core others use less than half the time is still ours
        (0.67, 2, 2, 1),  # a spinning neighbour sharing two cores with our two threads
        (1.0, 2, 2, 1),
        (3.0, 2, 2, 1),  # never fewer than one
        (0.0, 8, 4, 4),  # never more than the share we started with
        (2.6, 8, 8, 5),
    ],
)
def test_threads_for_busy_figures(others, cores, most, threads):
    assert threads_for(others, cores, most) == threads


def test_passive_openmp_respects_the_users_variables():
    environ = {"PATH": "/bin"}
    assert passive_openmp(environ) and environ["OMP_WAIT_POLICY"] == "PASSIVE"
    for name in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_WAIT_POLICY"):
        environ = {name: "7"}
        assert not passive_openmp(environ) and environ == {name: "7"}


@pytest.mark.parametrize(("command", "passive"), [("info", True), ("train", False)])
def test_the_command_line_sets_it_for_every_command_but_train(monkeypatch, command, passive):
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OMP_")}
    environ = {key: value for key, value in environ.items() if key[:4] not in ("GOMP", "KMP_")}
    monkeypatch.setattr(os, "environ", environ)
    arguments = {
        "info": ["info", "--checkpoint", "missing.onnx"],
        "train": ["train", "--model", "missing"],
    }
    assert cli.main(arguments[command]) == 2  # a user error, after the setting
    assert ("OMP_WAIT_POLICY" in environ) == passive


class FakeProc:
    """A `/proc` folder of text files and a clock, both moved by the test."""

    def __init__(self, folder):
        self.folder, self.now, self.busy, self.total, self.own = folder, 0.0, 0, 0, 0
        (folder / "self").mkdir()
        self.write()

    def advance(self, seconds: float, others: float, own: float, cores: int = 2) -> None:
        """`seconds` at 100 ticks a second on each core: others busy `others` cores, us `own`."""
        ticks = seconds * 100
        self.now += seconds
        self.busy += int((others + own) * ticks)
        self.total += int(cores * ticks)
        self.own += int(own * ticks)
        self.write()

    def write(self) -> None:
        idle = self.total - self.busy
        (self.folder / "stat").write_text(f"cpu  0\ncpu0 {self.busy} 0 0 {idle} 0 0 0 0\ncpu1 0\n")
        (self.folder / "self" / "stat").write_text(SELF_STAT.format(utime=self.own, stime=0))


def test_core_share_follows_the_free_cores_every_interval(tmp_path):
    proc, chosen = FakeProc(tmp_path), []
    share = CoreShare(
        chosen.append, most=2, every=2.0, proc=tmp_path, clock=lambda: proc.now, cpus=[0, 1]
    )
    proc.advance(1.0, others=1.0, own=1.0)
    assert share.check() is None and chosen == []  # not 2 s yet: not even a look
    proc.advance(1.0, others=1.0, own=1.0)
    assert share.check() == 1 and chosen == [1]  # a neighbour keeps one core busy
    proc.advance(2.0, others=1.0, own=1.0)
    assert share.check() is None and chosen == [1]  # unchanged: torch is not called again
    proc.advance(2.0, others=0.1, own=1.0)
    assert share.check() == 2 and chosen == [1, 2]  # it left


def test_core_share_does_nothing_without_proc_stat(tmp_path):
    chosen, now = [], [0.0]
    share = CoreShare(chosen.append, most=2, proc=tmp_path / "none", clock=lambda: now[0])
    for _ in range(3):
        now[0] += 10
        assert share.check() is None
    assert not share.available and chosen == []
