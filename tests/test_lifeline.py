"""Worker processes end with their parent however it ends (issue 22): the lifeline alone, and
`utkface predict`, `utkface serve --workers 2` (the released ONNX model) and `utkface prepare`
killed with `kill -9`."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.predict_memory import descendants, predict_command, write_inputs
from utkface.runtime.lifeline import ORPHAN_EXIT_CODE, Lifeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

DEADLINE = 5.0  # seconds an orphaned worker may take to go (the poll checks once a second)

# A parent that starts one forked worker holding a lifeline, from its main thread or from a
# thread that then ends, prints the worker's pid and waits to be killed.
PARENT = textwrap.dedent("""
    import multiprocessing, sys, threading, time
    from utkface.runtime.lifeline import Lifeline

    def worker(lifeline):
        lifeline.hold()
        time.sleep(120)

    def start():
        process = multiprocessing.get_context("fork").Process(target=worker,
                                                              args=(Lifeline.here(),))
        process.start()
        print(process.pid, flush=True)

    if sys.argv[1] == "main":
        start()
    else:
        starter = threading.Thread(target=start)
        starter.start()
        starter.join()
    print("ready", flush=True)
    time.sleep(120)
""")


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pids: list[int]) -> list[int]:
    """The pids of `pids` still running after `DEADLINE` seconds (polled)."""
    deadline = time.monotonic() + DEADLINE
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def kill_group(process: subprocess.Popen) -> None:
    """Whatever a failed test left behind (each test starts its run in a session of its own)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.mark.parametrize("started_by", ["main", "thread"])
def test_worker_ends_when_its_parent_is_killed(started_by):
    # "main": the kernel's parent-death signal; "thread": the polling thread, since the signal
    # would follow the starting thread, which here ends long before the parent
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, started_by],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        worker = int(parent.stdout.readline())
        assert parent.stdout.readline() == "ready\n"
        time.sleep(0.5)
        assert alive(worker), "the worker died with the thread that started it"
        parent.kill()  # the parent only, as the OOM killer does
        parent.wait()
        assert wait_gone([worker]) == []
    finally:
        kill_group(parent)


def _hold_for(lifeline: Lifeline) -> None:
    lifeline.hold()
    time.sleep(30)


def test_hold_ends_a_worker_whose_parent_is_already_gone():
    # The parent can die between starting the worker and the worker's prctl: `hold` checks the
    # parent once at once. Here the lifeline names a process that is not the worker's parent.
    lifeline = Lifeline(parent=os.getppid(), main_thread=True)
    worker = multiprocessing.get_context("fork").Process(target=_hold_for, args=(lifeline,))
    worker.start()
    worker.join(timeout=20)
    assert worker.exitcode == ORPHAN_EXIT_CODE


def kill_when_ready(command: list[str], ready) -> list[int]:
    """Start `command`, SIGKILL it (its own process only, as the OOM killer does) once
    `ready(processes under it)`; the processes that were under it and still run `DEADLINE`
    seconds later."""
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        under = []
        while run.poll() is None and time.monotonic() < deadline and not ready(under):
            time.sleep(0.05)
            under = descendants(run.pid)
        assert len(under) >= 2, run.stderr.read().decode()[-2000:] if run.poll() else under
        run.kill()
        run.wait()
        return wait_gone(under)
    finally:
        kill_group(run)


def test_predict_killed_with_sigkill_leaves_no_worker(tmp_path):
    manifest = write_inputs(tmp_path, 3000, images=4)  # more than it gets through
    command = predict_command(manifest, tmp_path / "out.jsonl", workers=2)
    assert kill_when_ready(command, lambda under: len(under) >= 2) == []


def test_serve_killed_with_sigkill_leaves_no_worker():
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def answers(under) -> bool:  # then the workers (and multiprocessing's helper) are there
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
            return True
        except OSError:
            return False

    command = [sys.executable, "-m", "utkface", "serve", "--port", str(port), "--workers", "2"]
    assert kill_when_ready(command, answers) == []


def test_prepare_killed_with_sigkill_leaves_no_worker(real_data, tmp_path):
    command = [sys.executable, "-m", "utkface", "prepare", "--data", str(real_data),
               "--size", "32", "--out", str(tmp_path), "--workers", "2"]  # fmt: skip
    assert kill_when_ready(command, lambda under: len(under) >= 2) == []
