"""The weight average against hand-computed values, and its state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from utkface.training.ema import WeightAverage


def _model() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    return model


def test_average_follows_the_formula_with_its_warm_up():
    model = _model()
    average = WeightAverage(model, decay=0.5)
    expected = 1.0
    for update, value in enumerate((3.0, 5.0, -1.0), start=1):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model[1].num_batches_tracked.fill_(update * 7)
        average.update()
        decay = min(0.5, (1 + update) / (10 + update))  # 2/11, 3/12, 4/13: the warm-up rules
        expected = decay * expected + (1 - decay) * value
        assert torch.allclose(average.model[0].weight, torch.full((1, 2), expected))
        assert average.model[1].num_batches_tracked.item() == update * 7  # integers are copied
    assert torch.equal(average.model[0].bias, torch.zeros(1))  # unchanged weights stay put
    assert not any(p.requires_grad for p in average.model.parameters())


def test_state_round_trip_continues_identically():
    model = _model()
    first = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    first.update()
    second = WeightAverage(model, decay=0.9)  # e.g. a resumed run: fresh, then loaded
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.model[0].weight, first.model[0].weight)
    with torch.no_grad():
        model[0].weight.fill_(4.0)
    first.update()
    second.update()
    assert second.updates == first.updates == 2
    assert torch.equal(first.model[0].weight, second.model[0].weight)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(_model(), decay)
