"""The run folder's checkpoints: `last.pt` every epoch (and on Ctrl-C) with everything resume
needs, `best.pt` whenever the validation score improves, with weights and metadata only.
Resume starts from the last whole `last.pt` (each is written atomically), so a run killed at
any moment (kill -9 included) loses at most the epoch it was in.

Only rank 0 writes; on resume every rank reads `last.pt`, so under torchrun on several nodes
the run folder must be on a filesystem all of them share.
"""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from utkface.models.checkpoint import read_checkpoint, save_checkpoint
from utkface.models.preprocess import Preprocess
from utkface.training.config import ConfigError
from utkface.training.ema import WeightAverage

# Random number states that runs before the per-step seeds (sampling.step_seed) saved; ignored.
_OLD_RNG_KEYS = ("aug_rng", "torch_rng", "numpy_rng", "python_rng", "cuda_rng")


def fresh_state(subset: float) -> dict:
    """Where a new run starts; `last.pt` keeps this dict (plus optimizer and average)."""
    return {
        "epoch": 0,
        "step": 0,
        "step_in_epoch": 0,
        "total_steps": None,
        "elapsed": 0.0,
        "best_score": math.inf,
        "history": [],
        "epoch_losses": [],  # [loss, *task losses] per step of the current epoch
        "subset": subset,
    }


class CheckpointSaver:
    def __init__(
        self,
        out: Path,
        spec: dict,
        preprocess: Preprocess,
        config: dict,
        average: WeightAverage | None,
    ):
        self.out, self.spec, self.preprocess = out, spec, preprocess
        self.config, self.average = config, average

    def save(self, model: nn.Module, state: dict, path: Path, row: dict, optimizer=None) -> None:
        """A checkpoint of `model`; with `optimizer`, also everything `resume` needs."""
        extra = None
        if optimizer is not None:
            train_state = dict(state, optimizer=optimizer.state_dict())
            if self.average is not None:
                train_state["ema"] = self.average.state_dict()
            extra = {"train_state": train_state}
        save_checkpoint(
            path,
            model,
            self.spec,
            self.preprocess,
            config=self.config,
            metrics=row,
            epoch=state["epoch"],
            extra=extra,
        )

    def save_last(self, model: nn.Module, optimizer, state: dict, row: dict) -> None:
        self.save(model, state, self.out / "last.pt", row, optimizer)

    def save_epoch(
        self, model: nn.Module, optimizer, state: dict, row: dict, selected: nn.Module, score
    ) -> None:
        """`last.pt`, and `best.pt` from `selected` when `score` beats every earlier epoch."""
        best = score < state["best_score"]
        if best:  # weights and metadata only: best.pt is for using, not resuming
            state["best_score"] = score
            self.save(selected, state, self.out / "best.pt", row)
        # last.pt after best.pt: a run killed between the two redoes the epoch and writes its
        # best.pt again, where the other order would resume past a best.pt never written.
        self.save_last(model, optimizer, state, row)

    def best(self) -> dict:
        return read_checkpoint(self.out / "best.pt")

    def resume(self, model: nn.Module, optimizer, subset: float) -> dict:
        """Load `last.pt` into `model`, `optimizer` and the average; return the run's state."""
        saved = read_checkpoint(self.out / "last.pt")
        model.load_state_dict(saved["state_dict"])
        if "start" in saved["model"]:  # inherited through --init, which a resume does not reread
            self.spec["start"] = saved["model"]["start"]
        state = saved["train_state"]
        if state.setdefault("subset", 1.0) != subset:
            # Another slice of the data would silently continue a different run.
            raise ConfigError(
                f"{self.out} was trained with subset={state['subset']}; resume it with "
                f"the same subset (--subset {state['subset']}), not {subset}"
            )
        state.setdefault("epoch_losses", [])
        optimizer.load_state_dict(state.pop("optimizer"))
        average = state.pop("ema", None)
        if self.average is not None and average is not None:
            self.average.load_state_dict(average)
        for key in _OLD_RNG_KEYS:
            state.pop(key, None)
        return state
