"""Losses: age as a label distribution, gender as a logit, race with unknown labels ignored.

The age loss follows DLDL-v2 (Gao et al., 2018): cross-entropy against a Gaussian around the
true age (the label distribution) plus an L1 term on the distribution's expectation, so the
predicted mean - the reported age - is trained directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utkface.runtime.names import NUM_AGES, UNKNOWN_RACE


def gaussian_age_targets(
    ages: torch.Tensor, sigma: float, num_ages: int = NUM_AGES
) -> torch.Tensor:
    """(B,) integer ages -> (B, num_ages) Gaussian label distributions, each summing to 1."""
    grid = torch.arange(num_ages, device=ages.device, dtype=torch.float32)
    logits = -0.5 * ((grid[None, :] - ages[:, None].float()) / sigma) ** 2
    return logits.softmax(dim=1)


def age_loss(
    logits: torch.Tensor, ages: torch.Tensor, sigma: float = 2.0, l1_weight: float = 1.0
) -> torch.Tensor:
    """Label-distribution cross-entropy + `l1_weight` * |E[age] - age|, averaged over the batch.

    logits: (B, 117); ages: (B,) integers.
    """
    log_probs = logits.float().log_softmax(dim=1)
    targets = gaussian_age_targets(ages, sigma, logits.shape[1])
    distribution = -(targets * log_probs).sum(dim=1).mean()
    grid = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    expectation = log_probs.exp() @ grid  # (B,)
    return distribution + l1_weight * (expectation - ages.float()).abs().mean()


def gender_loss(logits: torch.Tensor, genders: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the logit of P(female); genders: (B,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits.float(), genders.float())


def race_loss(logits: torch.Tensor, races: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over 5 races; rows with unknown race (-1) are ignored (0 if all are)."""
    if (races != UNKNOWN_RACE).sum() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return F.cross_entropy(logits.float(), races, ignore_index=UNKNOWN_RACE)


def seed_age_loss(values: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """The seed's age loss: mean squared error on the regressed age."""
    return F.mse_loss(values.float(), ages.float())


def multitask_loss(
    raw: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    weights: dict[str, float],
    age_sigma: float = 2.0,
    age_l1_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the losses of the tasks present in `raw`; also each part as a float."""
    parts: dict[str, torch.Tensor] = {}
    if "age" in raw:
        parts["age"] = age_loss(raw["age"], labels["age"], age_sigma, age_l1_weight)
    if "age_value" in raw:
        parts["age"] = seed_age_loss(raw["age_value"], labels["age"])
    if "gender" in raw:
        parts["gender"] = gender_loss(raw["gender"], labels["gender"])
    if "race" in raw:
        parts["race"] = race_loss(raw["race"], labels["race"])
    total = sum(weights.get(task, 1.0) * value for task, value in parts.items())
    return total, {task: float(value.detach()) for task, value in parts.items()}
