"""What each rank trains on: the slice of a split, each epoch's batches, each step's seed.

Everything here is a pure function of the seed, the epoch or step and the rank, so a resumed run
(any rank, any step) draws exactly what an uninterrupted one would, with no state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from utkface.training import balance


def subset_indices(indices: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded random `share` of `indices` (all of them at 1.0), sorted."""
    if share >= 1.0:
        return indices
    keep = max(1, int(round(len(indices) * share)))
    return np.sort(np.random.default_rng(seed).permutation(indices)[:keep])


def steps_per_epoch(train_size: int, world: int, batch_size: int) -> int:
    """Full batches per rank per epoch (the remainder of a shuffle is left out)."""
    return max(1, train_size // world // batch_size)


def epoch_batches(
    train: np.ndarray,
    epoch: int,
    seed: int,
    rank: int,
    world: int,
    batch_size: int,
    weights: np.ndarray | None = None,
) -> list[np.ndarray]:
    """This rank's batches of epoch `epoch`, as rows of the dataset (values of `train`).

    One shuffle of the whole train split per epoch, the same on every rank; rank `r` of `world`
    takes every `world`-th position from `r`, so the ranks' shards are disjoint, cover the split
    and change every epoch. With `weights` (one per image of `train`, `balance.sample_weights`)
    the epoch is `len(train)` weighted draws with replacement instead of a shuffle.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = balance.epoch_order(len(train), weights, generator).numpy()[rank::world]
    steps = steps_per_epoch(len(train), world, batch_size)
    return [train[order[i * batch_size : (i + 1) * batch_size]] for i in range(steps)]


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of step `step` on rank `rank` (augmentation and dropout): different on every
    rank, so the ranks do not draw the same random numbers for their different images."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
