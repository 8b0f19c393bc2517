"""An exponential moving average of a model's weights, kept next to the model in training.

Validation scores both the trained weights and their average every epoch, and the better of the
two (on the validation split) becomes `best.pt`. The average smooths out the noise of large
learning-rate steps, so it is usually the better one until the learning rate has decayed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """`average = decay * average + (1 - decay) * weights` after every optimizer step of `model`.

    The decay warms up as `(1 + n) / (10 + n)` over the first updates (so early averages are not
    dominated by the initial weights); floating-point buffers (batch-norm statistics) are
    averaged the same way and integer buffers copied. The tensors of `model` are paired with
    their averages once, here: move `model` to its device before, and update it in place after.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        current, average = model.state_dict(), self.model.state_dict()
        floats = [name for name, value in average.items() if value.dtype.is_floating_point]
        others = [name for name in average if name not in set(floats)]
        self._floats = ([average[n] for n in floats], [current[n].detach() for n in floats])
        self._others = ([average[n] for n in others], [current[n].detach() for n in others])

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self._floats, 1.0 - decay)  # one fused kernel for all tensors
        for average, value in zip(*self._others):
            average.copy_(value)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])  # copies into the paired tensors
