"""A full disk (issue 22): `prepare`, `train`, `predict --out` and `export` stop with one line
naming the file they could not write (exit status 2, no traceback), leave any earlier file as
it was and no temporary behind, and the same command (with `--resume` where it has one)
finishes once there is room, with the result of a clean run.

The full disk is a file size limit (RLIMIT_FSIZE) set in the child process, with SIGXFSZ
ignored so that a write past it fails with EFBIG, as one on a full disk fails with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import face_pixels
from tiny_checkpoints import tiny_checkpoint

from utkface.models.checkpoint import read_checkpoint
from utkface.runtime.atomic import atomic_open, atomic_write, remove_stale, writing
from utkface.runtime.errors import DiskFullError


def utkface(*args, limit: int | None = None) -> subprocess.CompletedProcess:
    """`python -m utkface ARGS` in a child process; with `limit`, no file it writes may grow
    past `limit` bytes."""

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "utkface", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=limit_writes if limit else None,
    )


def assert_disk_full(done: subprocess.CompletedProcess, command: str, path: str | Path) -> None:
    """Exit status 2 and, as the last line, `utkface COMMAND: error: cannot write PATH: file
    too large` (`path` a regular expression when a str), no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    pattern = re.escape(str(path)) if isinstance(path, Path) else path
    last = done.stderr.strip().splitlines()[-1]
    assert re.fullmatch(f"utkface {command}: error: cannot write {pattern}: file too large", last)


def temporaries(folder: Path) -> list[Path]:
    return list(folder.rglob("*.tmp.*"))


# --- the pieces --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_a_full_disk_is_one_error_naming_the_file(tmp_path, code):
    path = tmp_path / "best.pt"
    atomic_write(path, b"the good one")
    with pytest.raises(DiskFullError) as raised:
        with atomic_open(path) as file:
            file.write(b"half of a new")
            raise OSError(code, os.strerror(code))
    assert str(raised.value) == f"cannot write {path}: {os.strerror(code).lower()}"
    assert isinstance(raised.value, OSError)  # `except OSError` code still catches it
    assert path.read_bytes() == b"the good one"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    with pytest.raises(OSError) as other, writing(path):
        raise OSError(errno.EIO, "I/O error")
    assert type(other.value) is OSError  # any other failure passes unchanged


def test_remove_stale_deletes_what_a_dead_writer_left_and_spares_a_live_one(tmp_path):
    stale_file = tmp_path / ".last.pt.tmp.abcd1234"
    stale_file.write_bytes(b"torn")
    stale_folder = tmp_path / ".faces-32px-0123.tmp.x1y2z3w4"
    (stale_folder / "pixels.npy").parent.mkdir()
    (stale_folder / "pixels.npy").write_bytes(b"torn")
    (tmp_path / ".hidden").write_text("not ours")
    with atomic_open(tmp_path / "metrics.csv", "w") as file:
        (live,) = tmp_path.glob(".metrics.csv.tmp.*")
        assert sorted(remove_stale(tmp_path)) == sorted([stale_file, stale_folder])
        assert live.exists()  # its writer holds the lock
        file.write("epoch\n1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "metrics.csv"]
    assert (tmp_path / "metrics.csv").read_text() == "epoch\n1\n"


# --- the commands, in a child process with a file size limit ----------------------------------


def test_prepare(make_faces, tmp_path):
    faces = tmp_path / "faces"
    make_faces(faces, count=24)
    out, clean = tmp_path / "cache", tmp_path / "clean"
    args = ["prepare", "--data", faces, "--size", "32", "--workers", "1", "--out"]
    # 24 x 32 x 32 x 3 = 73,728 bytes of pixels
    assert_disk_full(utkface(*args, out, limit=16_000), "prepare", f"{out}/faces-32px-\\w+")
    assert list(out.iterdir()) == []  # no cache, no half-built one
    assert utkface(*args, out).returncode == 0
    assert utkface(*args, clean).returncode == 0
    ((built,), (reference,)) = list(out.iterdir()), list(clean.iterdir())
    assert built.name == reference.name and not temporaries(out)
    for name in ("images.npy", "manifest.csv", "skipped.csv"):
        assert (built / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_train(make_faces, tmp_path):
    faces, cache = tmp_path / "faces", tmp_path / "cache"
    make_faces(faces, count=80)
    common = ["--data", faces, "--cache", cache]
    args = ["train", *common, "--size", "32", "--batch-size", "16", "--epochs", "1"]
    args += ["--no-pretrained", "--threads", "1", "--device", "cpu", "--out"]
    run, clean = tmp_path / "run", tmp_path / "clean"
    # metrics.csv, fairness.csv and curves.png fit in 1 MB; best.pt (~10 MB) does not
    assert_disk_full(utkface(*args, run, limit=1_000_000), "train", run / "best.pt")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()
    assert not temporaries(tmp_path)
    resumed = utkface("train", "--resume", run, *common)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert utkface(*args, clean).returncode == 0
    got, want = read_checkpoint(run / "last.pt"), read_checkpoint(clean / "last.pt")
    assert got["epoch"] == want["epoch"] == 1
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key
    assert json.loads((run / "final_metrics.json").read_text())["best_epoch"] == 1
    assert not temporaries(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("disk-full-model")
    images = np.stack([face_pixels(seed, 32) for seed in range(8)])
    return tiny_checkpoint(folder / "tiny.pt", images, size=32)


@pytest.mark.parametrize("where", ["joining the parts", "writing a part"])
def test_predict(make_faces, tmp_path, where):
    faces = tmp_path / "faces"
    make_faces(faces, count=24)
    out, clean = tmp_path / "out" / "results.jsonl", tmp_path / "clean" / "results.jsonl"
    args = ["predict", faces, "--faces", "aligned", "--part-size", "2", "--workers", "1", "--out"]
    assert utkface(*args, clean).returncode == 0  # the released model, ONNX Runtime
    joined = clean.stat().st_size  # 12 parts of ~1/12 of it each
    limit, path = (joined // 2, out) if where == "joining the parts" else (joined // 48, None)
    path = path or out.parent / "results.jsonl.parts" / "part-00000.jsonl"
    assert_disk_full(utkface(*args, out, limit=limit), "predict", path)
    assert not out.exists() and not temporaries(tmp_path)
    parts = sorted(p.name for p in (out.parent / "results.jsonl.parts").iterdir())
    assert len(parts) == (12 if where == "joining the parts" else 0)
    assert utkface(*args, out, "--resume").returncode == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = {row["source"]: row for row in map(json.loads, clean.read_text().splitlines())}
    assert sorted(row["source"] for row in got) == sorted(want)  # each input exactly once
    for row in got:
        assert row == want[row["source"]]
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.jsonl"]


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow), "safetensors"])
def test_export(checkpoint, make_faces, tmp_path, fmt):
    faces = tmp_path / "faces"
    make_faces(faces, count=8, size=32)
    out, clean = tmp_path / "out" / f"model.{fmt}", tmp_path / "clean" / f"model.{fmt}"
    args = ["export", "--checkpoint", checkpoint, "--format", fmt, "--images", faces, "--out"]
    out.parent.mkdir()
    out.write_bytes(b"an earlier export")
    assert_disk_full(utkface(*args, out, limit=1_000_000), "export", out)  # ~10 MB of weights
    assert out.read_bytes() == b"an earlier export" and not temporaries(tmp_path)
    assert utkface(*args, out).returncode == 0
    assert utkface(*args, clean).returncode == 0
    assert out.read_bytes() == clean.read_bytes()
    assert not temporaries(tmp_path)
