"""Command-line error handling: user errors (`UtkfaceError`) are one line and exit status 2,
anything else is a bug and keeps its traceback; `--debug` shows the traceback for both."""

from __future__ import annotations

import pytest

from utkface.apps.cli import main
from utkface.data import dataset as data
from utkface.evaluation.evaluate import EvaluationError
from utkface.models.checkpoint import CheckpointError
from utkface.models.export import ParityError
from utkface.models.registry import PretrainedWeightsError
from utkface.runtime.errors import MissingExtra, OptionError, UtkfaceError
from utkface.runtime.faces import DetectorUnavailable
from utkface.runtime.images import ImageError
from utkface.runtime.names import LabelError
from utkface.runtime.sources import SourceError
from utkface.training.config import ConfigError


@pytest.mark.parametrize(
    "error",
    [
        CheckpointError,
        ConfigError,
        DetectorUnavailable,
        EvaluationError,
        ImageError,
        LabelError,
        ParityError,
        PretrainedWeightsError,
        SourceError,
    ],
)
def test_every_user_error_is_a_utkface_error(error):
    assert issubclass(error, UtkfaceError)


def _fail_with(monkeypatch, error: BaseException) -> None:
    def prepare(*args, **kwargs):
        raise error

    monkeypatch.setattr(data, "prepare", prepare)


@pytest.mark.parametrize(
    "error",
    [OptionError("--size must be positive"), MissingExtra("pip install 'utkface[train]'")],
)
def test_a_user_error_is_one_line_and_exit_status_2(monkeypatch, capsys, error):
    _fail_with(monkeypatch, error)
    assert main(["prepare", "--data", "x"]) == 2
    assert capsys.readouterr().err == f"utkface prepare: error: {error}\n"


@pytest.mark.parametrize(
    "error", [ValueError("a bug"), FileNotFoundError(2, "a bug"), ImportError("a bug"), KeyError()]
)
def test_any_other_error_is_a_bug_and_keeps_its_traceback(monkeypatch, capsys, error):
    _fail_with(monkeypatch, error)
    with pytest.raises(type(error)) as raised:
        main(["prepare", "--data", "x"])
    assert raised.value is error and capsys.readouterr().err == ""


def test_debug_shows_the_traceback_of_user_errors_too(monkeypatch):
    error = SourceError("x: no such file or folder")
    _fail_with(monkeypatch, error)
    with pytest.raises(SourceError) as raised:
        main(["--debug", "prepare", "--data", "x"])
    assert raised.value is error


def test_a_missing_config_or_run_folder_is_a_user_error(tmp_path, capsys):
    for args, message in (
        (["--config", str(tmp_path / "nope.yaml")], "nope.yaml: cannot read the config file"),
        (["--resume", str(tmp_path)], "not a run folder to resume (no config.json)"),
    ):
        assert main(["train", *args]) == 2
        error = capsys.readouterr().err
        assert message in error and len(error.splitlines()) == 1, error


def test_prepare_reads_its_limits_from_the_command_line(tmp_path, make_faces, capsys):
    paths = make_faces(tmp_path / "faces", count=6, size=64)
    sizes = sorted(path.stat().st_size for path in paths)
    cap_mb = (sizes[2] + 1) / 2**20  # the three smallest files fit, the others do not
    cache = tmp_path / "cache"
    args = ["prepare", "--data", str(tmp_path / "faces"), "--out", str(cache), "--size", "32"]
    assert main(args + ["--max-file-mb", str(cap_mb)]) == 0
    out = capsys.readouterr().out
    assert "used 3, skipped 3" in out and "file too large" in out
    assert main(args) == 0  # the defaults (50 MB a file) keep every file
    assert "used 6, skipped 0" in capsys.readouterr().out


def test_require_names_the_extra_and_the_missing_module():
    from utkface.runtime.errors import require
    from utkface.runtime.video import VideoUnavailable

    assert require("json.decoder", "unused").__name__ == "json.decoder"  # the submodule
    with pytest.raises(
        VideoUnavailable, match=r"pip install 'utkface\[x\]' \(missing module 'no_such_mod'\)"
    ):
        require("no_such_mod.sub", "pip install 'utkface[x]'", VideoUnavailable)
