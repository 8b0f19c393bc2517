"""Tiny random-init checkpoints whose predictions still depend on the image.

A freshly initialised MobileNetV2 in eval mode maps every image to almost the same features
(running statistics mean 0, var 1), so parity on it would compare constants. Estimating the
batch-norm statistics from a few real crops and scaling the heads up gives outputs that vary
from image to image, which is what export parity and API tests need. Used by test_export.py
and test_serve.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utkface.models.checkpoint import model_spec, save_checkpoint
from utkface.models.registry import build_model, model_entry


def tiny_checkpoint(
    path: Path,
    images: np.ndarray,
    size: int = 64,
    tasks=("age", "gender"),
    seed: int = 0,
    head_scale: float = 10.0,
    name: str = "mobilenet_v2",
) -> Path:
    """Write a random-init checkpoint of model `name` (its own preprocessing preset) with
    batch-norm statistics from `images` (uint8 `(N, size, size, 3)`) and heads scaled by
    `head_scale` so logits spread over several units (3 gives frame-to-frame age jitter of a
    few years on video, like a weak model)."""
    torch.manual_seed(seed)
    model = build_model(name, tasks, pretrained=False)
    preprocess = model_entry(name).preprocess(size)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration batch
    model.train()
    with torch.no_grad():
        model(preprocess(images))
        for head in model.heads.values():
            head.weight.mul_(head_scale)
    save_checkpoint(path, model.eval(), model_spec(name, tasks), preprocess)
    return path
