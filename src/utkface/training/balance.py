"""Balanced sampling over race x age band cells, so the dense young-White mode of UTKFace does not
swallow the thin groups (`TrainConfig.balance_alpha`).

Each training image is drawn with probability proportional to `count(cell) ** -alpha`, where a
cell is one race (unknown race its own) x one age band of the fairness tables (0-19, 20-39,
40-59, 60+). `alpha = 0` is today's uniform shuffle; `alpha = 1` gives every non-empty cell the
same share of draws; values between move part of the way.

Why sampling rather than loss weights: at alpha = 1 the smallest cells of UTKFace's train split
(tens of images) against the largest (thousands) would give single images weights a hundred
times the mean, so a batch's gradient would hang on one or two faces. Drawing them more often
instead keeps every batch's loss an ordinary mean, each repeat of a face is augmented
differently, and the epoch keeps its length (draws with replacement, as
`torch.utils.data.WeightedRandomSampler` makes them).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from utkface.runtime.errors import OptionError
from utkface.runtime.names import FAIRNESS_BANDS, RACES, band_ages, band_index


def cells(labels: dict) -> np.ndarray:
    """Each sample's race x age band cell as one int: race (unknown = last) x band."""
    race = np.asarray(labels["race"], dtype=np.int64)
    race = np.where((race >= 0) & (race < len(RACES)), race, len(RACES))
    # an interval label (age -1) is placed by its interval (`names.band_ages`)
    ages = band_ages(labels.get("age_min", labels["age"]), labels.get("age_max", labels["age"]))
    return race * len(FAIRNESS_BANDS) + band_index(ages, FAIRNESS_BANDS)


def sample_weights(labels: dict, alpha: float) -> np.ndarray:
    """(N,) float64 weights, `count(cell of i) ** -alpha`, scaled to mean 1 (all ones at 0)."""
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"balance alpha must be in [0, 1], got {alpha}")
    index = cells(labels)
    if len(index) == 0:
        return np.ones(0)
    counts = np.bincount(index)
    weights = counts[index].astype(np.float64) ** -alpha
    return weights / weights.mean()


def epoch_order(count: int, weights: np.ndarray | None, generator: torch.Generator) -> torch.Tensor:
    """`count` sample indices for one epoch: a permutation when `weights` is None (uniform),
    else `count` draws with replacement with probability proportional to `weights`."""
    if weights is None:
        return torch.randperm(count, generator=generator)
    sampler = WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.float64), count, replacement=True, generator=generator
    )
    return torch.tensor(list(sampler), dtype=torch.long)
