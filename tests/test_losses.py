"""Losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utkface.runtime.names import NUM_AGES
from utkface.training.losses import (
    age_loss,
    gaussian_age_targets,
    gender_loss,
    multitask_loss,
    race_loss,
    seed_age_loss,
)


def _gaussian_by_hand(age: int, sigma: float, num_ages: int) -> np.ndarray:
    weights = np.array([math.exp(-0.5 * ((k - age) / sigma) ** 2) for k in range(num_ages)])
    return weights / weights.sum()


@pytest.mark.parametrize("sigma", [1.0, 2.0, 5.0])
def test_gaussian_targets_sum_to_one_and_peak_at_the_age(sigma):
    ages = torch.tensor([0, 1, 37, 116])
    targets = gaussian_age_targets(ages, sigma)
    assert targets.shape == (4, NUM_AGES)
    assert torch.allclose(targets.sum(dim=1), torch.ones(4))
    assert targets.argmax(dim=1).tolist() == ages.tolist()
    for row, age in zip(targets, ages.tolist()):
        assert np.allclose(row.numpy(), _gaussian_by_hand(age, sigma, NUM_AGES), atol=1e-7)
    # Symmetric around an age far from both ends.
    assert torch.allclose(targets[2, 37 - 3], targets[2, 37 + 3])


def test_gaussian_targets_small_grid_by_hand():
    # sigma 1 over ages 0..2 around 1: weights e^-0.5, 1, e^-0.5.
    targets = gaussian_age_targets(torch.tensor([1]), sigma=1.0, num_ages=3)
    edge = math.exp(-0.5)
    expected = torch.tensor([[edge, 1.0, edge]]) / (1 + 2 * edge)
    assert torch.allclose(targets, expected)


def test_age_loss_uniform_logits_by_hand():
    # Uniform over 0..4: cross-entropy is ln 5 whatever the target, E[age] = 2.
    logits = torch.zeros(2, 5)
    ages = torch.tensor([2, 0])
    loss = age_loss(logits, ages, sigma=1.0, l1_weight=0.5)
    expected = math.log(5) + 0.5 * (abs(2 - 2) + abs(2 - 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert age_loss(logits, ages, sigma=1.0, l1_weight=0.0).item() == pytest.approx(math.log(5))


def test_age_loss_general_case_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -0.5, 0.3]])
    ages = torch.tensor([2, 0])
    sigma, l1_weight = 1.5, 0.25
    total = 0.0
    for row, age in zip(logits.tolist(), ages.tolist()):
        probs = np.exp(row) / np.exp(row).sum()
        targets = _gaussian_by_hand(age, sigma, 4)
        cross_entropy = -(targets * np.log(probs)).sum()
        expectation = (probs * np.arange(4)).sum()
        total += cross_entropy + l1_weight * abs(expectation - age)
    assert age_loss(logits, ages, sigma, l1_weight).item() == pytest.approx(total / 2, rel=1e-6)


def test_age_loss_is_smallest_near_the_true_age_and_has_gradients():
    ages = torch.tensor([40])
    targets = gaussian_age_targets(ages, 2.0)
    right = targets.clamp_min(1e-12).log().requires_grad_()  # logits of the target itself
    wrong = torch.roll(right.detach(), 10, dims=1)  # the same shape, 10 years off
    assert age_loss(right, ages).item() < age_loss(wrong, ages).item()
    age_loss(right, ages).backward()
    assert right.grad is not None and torch.isfinite(right.grad).all()


def test_gender_bce_by_hand():
    logits = torch.tensor([0.0, math.log(3.0)])  # P(female) = 0.5, 0.75
    genders = torch.tensor([1, 0])
    expected = (math.log(2) + math.log(4)) / 2  # -ln 0.5, -ln(1 - 0.75)
    assert gender_loss(logits, genders).item() == pytest.approx(expected, rel=1e-6)


def test_race_ce_ignores_unknown_by_hand():
    logits = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [5.0, 5.0, 5.0, 5.0, 5.0],  # unknown race: must not count
            [0.0, 0.0, 2.0, 0.0, 0.0],
        ]
    )
    races = torch.tensor([0, -1, 4])
    first = -math.log(math.e / (math.e + 4))
    third = -math.log(1 / (math.exp(2) + 4))
    assert race_loss(logits, races).item() == pytest.approx((first + third) / 2, rel=1e-6)


def test_race_all_unknown_is_zero_with_a_gradient_path():
    logits = torch.randn(3, 5, requires_grad=True)
    loss = race_loss(logits, torch.tensor([-1, -1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(3, 5))


def test_seed_age_mse_by_hand():
    values = torch.tensor([10.0, 20.0, 33.0])
    ages = torch.tensor([12, 20, 30])
    assert seed_age_loss(values, ages).item() == pytest.approx((4 + 0 + 9) / 3)


def test_multitask_loss_weights_and_parts():
    raw = {
        "age": torch.zeros(2, NUM_AGES),
        "gender": torch.tensor([0.0, math.log(3.0)]),
        "race": torch.zeros(2, 5),
    }
    labels = {
        "age": torch.tensor([58, 58]),
        "gender": torch.tensor([1, 0]),
        "race": torch.tensor([1, -1]),
    }
    total, parts = multitask_loss(raw, labels, {"age": 1.0, "gender": 4.0, "race": 0.5}, 2.0, 0.25)
    # Uniform age logits: CE = ln 117, E[age] = 58 = the true age, so no L1 part.
    assert parts["age"] == pytest.approx(math.log(NUM_AGES), rel=1e-6)
    assert parts["gender"] == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert parts["race"] == pytest.approx(math.log(5), rel=1e-6)
    expected = parts["age"] + 4.0 * parts["gender"] + 0.5 * parts["race"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # A missing weight counts as 1.
    total, _ = multitask_loss(raw, labels, {}, 2.0, 0.25)
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-6)


def test_multitask_loss_for_the_seed_models():
    labels = {
        "age": torch.tensor([10, 20]),
        "gender": torch.tensor([0, 1]),
        "race": torch.tensor([0, 0]),
    }
    total, parts = multitask_loss({"age_value": torch.tensor([13.0, 20.0])}, labels, {"age": 2.0})
    assert parts == {"age": pytest.approx(4.5)} and total.item() == pytest.approx(9.0)
    total, parts = multitask_loss({"gender": torch.zeros(2)}, labels, {"gender": 1.0})
    assert set(parts) == {"gender"} and total.item() == pytest.approx(math.log(2))
