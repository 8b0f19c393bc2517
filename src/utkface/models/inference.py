"""The one batched forward pass: uint8 images in, numpy predictions out.

Training's validation, `evaluate`, `predict` and the web demo all call `predict_arrays`, so a
number reported anywhere comes from the same preprocessing and decoding.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from utkface.models.preprocess import Preprocess
from utkface.models.registry import decode_outputs


@torch.no_grad()
def forward_raw(
    model: nn.Module, preprocess: Preprocess, batch: np.ndarray | torch.Tensor, tta: bool = False
) -> dict[str, torch.Tensor]:
    """Raw outputs for one (B, S, S, 3) uint8 batch; `tta` averages with the mirrored image."""
    device = next(model.parameters()).device
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    x = preprocess(batch.to(device, non_blocking=True))
    raw = model(x)
    if tta:
        # Averaging logits = normalized geometric mean of the two distributions.
        mirrored = model(x.flip(3))
        raw = {key: (value + mirrored[key]) / 2 for key, value in raw.items()}
    return raw


def predict_arrays(
    model: nn.Module,
    preprocess: Preprocess,
    images: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    tta: bool = False,
) -> dict[str, np.ndarray]:
    """Predictions for (N, S, S, 3) uint8 images, keys as in `models.decode_outputs`."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(images), batch_size):
            decoded = decode_outputs(
                forward_raw(model, preprocess, images[start : start + batch_size], tta)
            )
            for key, value in decoded.items():
                chunks.setdefault(key, []).append(value.float().cpu().numpy())
    finally:
        model.train(was_training)
    return {key: np.concatenate(parts) for key, parts in chunks.items()}
