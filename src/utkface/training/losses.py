"""Losses: age as a label distribution, gender as a logit, race with unknown labels ignored.

The age loss follows DLDL-v2 (Gao et al., 2018): cross-entropy against a Gaussian around the
true age (the label distribution) plus an L1 term on the distribution's expectation, so the
predicted mean - the reported age - is trained directly.

An interval label (an age bin, `age_min..age_max`, FairFace's) says only that the age lies in
the bin, so its loss is `interval_nll`: minus the log of the probability mass the predicted
distribution puts on the bin's ages. A batch may mix both kinds; each sample gets its own
(a mask per sample), and the age loss is their mean over the batch.
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
    logits: torch.Tensor,
    ages: torch.Tensor,
    sigma: float = 2.0,
    l1_weight: float = 1.0,
    age_min: torch.Tensor | None = None,
    age_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean over the batch of each sample's age loss: for an exact age, label-distribution
    cross-entropy + `l1_weight` * |E[age] - age|; for an interval (`age_min < age_max`, given
    as (B,) integers beside `ages`), `interval_nll`.

    logits: (B, 117); ages: (B,) integers (-1 where the label is an interval).
    """
    log_probs = logits.float().log_softmax(dim=1)
    exact = _exact_mask(ages, age_min, age_max)  # (B,) bool
    targets = gaussian_age_targets(ages.clamp(min=0), sigma, logits.shape[1])
    distribution = -(targets * log_probs).sum(dim=1)  # (B,)
    grid = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
    expectation = log_probs.exp() @ grid  # (B,)
    per_sample = distribution + l1_weight * (expectation - ages.float()).abs()
    if not exact.all():
        interval = _interval_nll(log_probs, age_min, age_max)
        per_sample = torch.where(exact, per_sample, interval)
    return per_sample.mean()


def interval_nll(logits: torch.Tensor, age_min: torch.Tensor, age_max: torch.Tensor):
    """-log P(age_min <= age <= age_max) under softmax(logits), averaged over the batch.

    logits: (B, A) over ages 0..A-1; age_min, age_max: (B,) integers, both ends inclusive
    (an upper end past A-1 counts as A-1)."""
    return _interval_nll(logits.float().log_softmax(dim=1), age_min, age_max).mean()


def _interval_nll(log_probs: torch.Tensor, age_min: torch.Tensor, age_max: torch.Tensor):
    """(B,) -log of the mass of each row's interval, summed in log space (logsumexp) so a bin
    the model gives almost nothing stays finite and keeps its gradient."""
    grid = torch.arange(log_probs.shape[1], device=log_probs.device)
    inside = (grid[None, :] >= age_min[:, None]) & (grid[None, :] <= age_max[:, None])
    return -log_probs.masked_fill(~inside, float("-inf")).logsumexp(dim=1)


def _exact_mask(ages, age_min, age_max) -> torch.Tensor:
    """(B,) True where the label is one age (no interval given, or age_min == age_max)."""
    if age_min is None or age_max is None:
        return torch.ones_like(ages, dtype=torch.bool)
    return (ages >= 0) | (age_min == age_max)


def gender_loss(logits: torch.Tensor, genders: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the logit of P(female); genders: (B,) in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits.float(), genders.float())


def race_loss(logits: torch.Tensor, races: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over 5 races; rows with unknown race (-1) are ignored (0 if all are)."""
    if (races != UNKNOWN_RACE).sum() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return F.cross_entropy(logits.float(), races, ignore_index=UNKNOWN_RACE)


def seed_age_loss(
    values: torch.Tensor,
    ages: torch.Tensor,
    age_min: torch.Tensor | None = None,
    age_max: torch.Tensor | None = None,
) -> torch.Tensor:
    """The seed's age loss: mean squared error on the regressed age; for an interval label,
    the squared distance from the interval (0 inside it)."""
    if age_min is None or age_max is None:
        return F.mse_loss(values.float(), ages.float())
    values = values.float()
    below = (age_min.float() - values).clamp(min=0)
    above = (values - age_max.float()).clamp(min=0)
    return ((below + above) ** 2).mean()


def multitask_loss(
    raw: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    weights: dict[str, float],
    age_sigma: float = 2.0,
    age_l1_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the losses of the tasks present in `raw`; also each part as a float."""
    parts: dict[str, torch.Tensor] = {}
    interval = labels.get("age_min"), labels.get("age_max")  # absent: every age is exact
    if "age" in raw:
        parts["age"] = age_loss(raw["age"], labels["age"], age_sigma, age_l1_weight, *interval)
    if "age_value" in raw:
        parts["age"] = seed_age_loss(raw["age_value"], labels["age"], *interval)
    if "gender" in raw:
        parts["gender"] = gender_loss(raw["gender"], labels["gender"])
    if "race" in raw:
        parts["race"] = race_loss(raw["race"], labels["race"])
    total = sum(weights.get(task, 1.0) * value for task, value in parts.items())
    return total, {task: float(value.detach()) for task, value in parts.items()}
