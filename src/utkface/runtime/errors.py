"""The project's error types: what a user's input or setup can cause, as opposed to bugs.

Every error a user can fix (a bad file, option or setting, a missing optional extra) derives
from `UtkfaceError`, and its message names the file or option and the problem. The command line
prints those as one line and exits with status 2; any other exception is a bug and keeps its
traceback. The concrete types live beside the code that raises them (`ImageError` in
`images.py`, `SourceError` in `sources.py`, `ConfigError` in `config.py`, ...), or here when
several stages raise them (`CheckpointError` for model files of either format, `DiskFullError`
for a write that found no room); each also derives from the builtin it used to be (ValueError,
ImportError, OSError, ...), so existing `except ValueError` code keeps working.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UtkfaceError(Exception):
    """A problem with the user's input or setup; the message says what to fix."""


class OptionError(UtkfaceError, ValueError):
    """A bad option or argument value; the message names the valid choices."""


class MissingExtra(UtkfaceError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class CheckpointError(UtkfaceError, ValueError):
    """A model file (checkpoint or ONNX export) that is not usable, not safe or not the one
    expected; the message names it."""


class DiskFullError(UtkfaceError, OSError):
    """A write failed for want of room: no space left on the device (ENOSPC), a file size
    limit (EFBIG) or a disk quota (EDQUOT). The message names the file; whatever was being
    written was not left in place of a whole file (`atomic.writing`)."""


# PyTorch and what only training needs are an extra: the runtime runs on ONNX Runtime.
TRAIN_HINT = (
    "PyTorch (training, export, checkpoints) is an optional extra: pip install 'utkface[train]'"
)


def require(module: str, hint: str, error: type[MissingExtra] = MissingExtra) -> ModuleType:
    """`import module` (dotted names give the submodule), or raise `error` with `hint`, which
    names the extra to install, and the module that is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as problem:
        raise error(f"{hint} (missing module {problem.name or module!r})") from problem
