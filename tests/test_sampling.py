"""Each rank's batches and random seeds: pure functions of (seed, epoch or step, rank)."""

from __future__ import annotations

import numpy as np

from utkface.training.sampling import epoch_batches, step_seed, steps_per_epoch


def test_ranks_get_disjoint_shards_that_cover_the_split_and_change_each_epoch():
    train = np.arange(1000, 1100)  # dataset rows of a 100-image train split
    world, batch = 3, 8  # 100 // 3 // 8 = 4 steps: 96 images a epoch, 4 left out
    assert steps_per_epoch(len(train), world, batch) == 4
    epochs = []
    for epoch in range(2):
        shards = [
            np.concatenate(epoch_batches(train, epoch, 0, rank, world, batch))
            for rank in range(world)
        ]
        assert all(len(shard) == 4 * batch for shard in shards)
        seen = np.concatenate(shards)
        assert len(set(seen.tolist())) == 96 and set(seen.tolist()) <= set(train.tolist())
        epochs.append(shards)
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    # The same arguments give the same batches (what exact resume relies on).
    again = epoch_batches(train, 1, 0, 2, world, batch)
    assert np.array_equal(np.concatenate(again), epochs[1][2])


def test_step_seeds_differ_by_rank_and_step_and_repeat():
    seeds = {(rank, step): step_seed(0, rank, step) for rank in range(4) for step in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert step_seed(0, 1, 7) == seeds[1, 7] != step_seed(1, 1, 7)
