"""What the benchmark scripts share: a default model to time when none is given."""

from __future__ import annotations

from pathlib import Path

import torch

from utkface.models.checkpoint import model_spec, save_checkpoint
from utkface.models.preprocess import Preprocess
from utkface.models.registry import build_model


def random_checkpoint(path: Path, size: int = 128) -> Path:
    """A seeded, randomly initialised default model (mobilenet_v2, age + gender) at `size` px:
    speed does not depend on the weights."""
    torch.manual_seed(0)
    tasks = ("age", "gender")
    model = build_model("mobilenet_v2", tasks, pretrained=False)
    save_checkpoint(path, model, model_spec("mobilenet_v2", tasks), Preprocess(size=size))
    return path
