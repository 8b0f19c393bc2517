"""Worker processes end with their parent however it ends (issue 22): the lifeline alone, and
`utkface predict` and `utkface serve --workers 2` (the released ONNX model) killed with
`kill -9`."""

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


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """3,000 distinct paths of a few tiny crops: more than the run gets through before it is
    killed."""
    return write_inputs(tmp_path_factory.mktemp("inputs"), 3000, images=4)


def test_predict_killed_with_sigkill_leaves_no_worker(manifest, tmp_path):
    command = predict_command(manifest, tmp_path / "out.jsonl", workers=2)
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        workers = []
        while len(workers) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            workers = descendants(run.pid)
        assert len(workers) >= 2, run.stderr.read().decode()[-2000:] if run.poll() else workers
        run.kill()  # `kill -9` of predict's own process, not of its group
        run.wait()
        assert wait_gone(workers) == []
    finally:
        kill_group(run)


def test_serve_killed_with_sigkill_leaves_no_worker(tmp_path):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "utkface", "serve", "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:  # a worker answers: the workers (and multiprocessing's helper) have started
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        under = descendants(server.pid)
        assert len(under) >= 2, server.stderr.read().decode()[-2000:] if server.poll() else under
        server.kill()
        server.wait()
        assert wait_gone(under) == []
    finally:
        kill_group(server)
