"""What each rank trains on: the slice of a split, each epoch's batches, each step's seed.

Everything here is a pure function of the seed, the epoch or step and the rank, so a resumed run
(any rank, any step) draws exactly what an uninterrupted one would, with no state to save.
"""

from __future__ import annotations

import numpy as np
import torch

from utkface.data.multisource import column_names
from utkface.runtime.errors import OptionError
from utkface.training import balance


def subset_indices(indices: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded random `share` of `indices` (all of them at 1.0), sorted."""
    if share >= 1.0:
        return indices
    keep = max(1, int(round(len(indices) * share)))
    return np.sort(np.random.default_rng(seed).permutation(indices)[:keep])


def draw_weights(dataset, train: np.ndarray, config) -> np.ndarray | None:
    """The draw weight of each image of `train` (rows of `dataset`) under the config's
    `balance_alpha` (race x age band cells) and `source_mix` (each source's share); None when
    neither is set (a plain shuffle)."""
    weights = None
    if config.balance_alpha:
        weights = balance.sample_weights(dataset.labels(train), config.balance_alpha)
    if config.source_mix:
        sources = np.array([dataset.records[i].source for i in train], dtype=object)
        keys = column_names(list(dict.fromkeys(sources.tolist())))
        weights = mix_weights(sources, config.source_mix, keys, weights)
    return weights


def mix_weights(
    sources: np.ndarray, mix: dict[str, float], keys: dict[str, str], base: np.ndarray | None
) -> np.ndarray | None:
    """(N,) draw weights giving each source its share of an epoch's draws (`source_mix`).

    `sources`: each train image's source name; `mix`: `{key: share}` for some of the sources
    (keys as `keys` maps names, `multisource.column_names`); the sources not named share what
    is left in proportion to their sizes. Within a source the weights keep `base`'s
    proportions (`balance.sample_weights`; uniform when None). None when `mix` is empty: the
    sources are drawn in proportion to their sizes, as one shuffle does."""
    if not mix:
        return base
    names = list(dict.fromkeys(sources.tolist()))
    if len(names) < 2:
        raise OptionError("source_mix (--mix) shares an epoch between several --data sources")
    by_key = {keys.get(name, name): name for name in names}
    unknown = sorted(set(mix) - set(by_key))
    if unknown:
        raise OptionError(
            f"source_mix names {', '.join(unknown)}; the sources are {', '.join(by_key)}"
        )
    if any(not 0.0 <= share <= 1.0 for share in mix.values()):
        raise OptionError(f"source_mix shares must lie in [0, 1], got {mix}")
    named = sum(mix.values())
    rest = [name for name in names if keys.get(name, name) not in mix]
    if named > 1.0 + 1e-6 or (not rest and abs(named - 1.0) > 1e-6):
        raise OptionError(
            f"source_mix shares sum to {named:g}; they must sum to 1, or to less when a "
            f"source is left out (the sources left out share the rest)"
        )
    counts = {name: int(np.sum(sources == name)) for name in names}
    left = max(0.0, 1.0 - named)
    rest_total = sum(counts[name] for name in rest)
    share = {by_key[key]: value for key, value in mix.items()}
    share.update({name: left * counts[name] / rest_total for name in rest})
    base = np.ones(len(sources)) if base is None else np.asarray(base, dtype=np.float64)
    weights = np.zeros(len(sources))
    for name in names:
        inside = sources == name
        weights[inside] = share[name] * base[inside] / base[inside].sum()
    return weights * len(sources)  # mean 1, as `balance.sample_weights`


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
