"""Balanced sampling over race x age band cells: weights by hand, and draw frequencies that move
toward uniform cells as alpha goes from 0 to 1."""

import numpy as np
import pytest
import torch

from utkface.training.balance import cells, epoch_order, sample_weights
from utkface.training.config import ConfigError, resolve_config

# Cells: White/0-19 x2, White/20-39 x3, Black/60+ x1, unknown race/40-59 x1 (its own cell).
TINY = {"age": np.array([5, 19, 20, 30, 39, 70, 50]), "race": np.array([0, 0, 0, 0, 0, 1, -1])}


def test_cells_by_hand():
    # race * 4 + band; unknown race is race 5
    assert cells(TINY).tolist() == [0, 0, 1, 1, 1, 4 + 3, 5 * 4 + 2]


def test_weights_by_hand():
    assert sample_weights(TINY, 0.0).tolist() == [1.0] * 7
    # alpha 1: 1/count = 1/2, 1/2, 1/3 x3, 1, 1; mean 4/7 -> scaled by 7/4
    expected = np.array([1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 1, 1]) * 7 / 4
    assert sample_weights(TINY, 1.0) == pytest.approx(expected)
    # alpha 1/2: 1/sqrt(count), scaled to mean 1
    raw = np.array([2, 2, 3, 3, 3, 1, 1], dtype=float) ** -0.5
    assert sample_weights(TINY, 0.5) == pytest.approx(raw / raw.mean())
    # at alpha 1 every cell carries the same total weight
    weights, index = sample_weights(TINY, 1.0), cells(TINY)
    totals = [weights[index == c].sum() for c in np.unique(index)]
    assert totals == pytest.approx([7 / 4] * 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample_weights(TINY, 1.5)
    with pytest.raises(ConfigError, match="balance_alpha"):
        resolve_config(balance_alpha=-0.1)


def test_weighted_order_moves_cell_frequencies_toward_uniform():
    # Three cells of 400, 40 and 10 images (young White, old Black, old Indian).
    labels = {
        "age": np.array([25] * 400 + [65] * 40 + [45] * 10),
        "race": np.array([0] * 400 + [1] * 40 + [3] * 10),
    }
    index, sizes = cells(labels), np.array([400, 40, 10])
    shares = {}
    for alpha in (0.0, 0.5, 1.0):
        weights = sample_weights(labels, alpha) if alpha else None
        generator = torch.Generator().manual_seed(0)
        drawn = np.concatenate([epoch_order(450, weights, generator).numpy() for _ in range(40)])
        counts = np.array([np.sum(index[drawn] == c) for c in np.unique(index)])
        shares[alpha] = counts / counts.sum()
        expected = sizes ** (1 - alpha) / np.sum(sizes ** (1 - alpha))  # P(cell) ~ n^(1-alpha)
        assert shares[alpha] == pytest.approx(expected, abs=0.015), alpha
    spread = [shares[a].max() / shares[a].min() for a in (0.0, 0.5, 1.0)]
    assert spread[0] == pytest.approx(40) and spread[0] > spread[1] > spread[2]
    assert spread[2] < 1.15  # alpha 1: the three cells are drawn about equally often
    # alpha 0 stays a plain permutation: every image once per epoch
    order = epoch_order(450, None, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(450))
    # the order is a pure function of the generator's seed
    weights = sample_weights(labels, 1.0)
    again = [epoch_order(450, weights, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(*again)
