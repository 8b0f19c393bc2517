"""An opt-in record of what each rank did, for tests of distributed training.

Off unless `UTKFACE_TRAIN_TRACE=1`: then each rank writes `trace/rank-R.json` into the run
folder: when it prepared the data, the dataset rows and the seed of every step it took, and a
digest of its parameters at the end. `UTKFACE_TRAIN_STOP_AFTER_STEP=N` stops every rank after
step N as one Ctrl-C would (saving `last.pt`), to test resume. Normal runs never write these.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utkface.runtime.atomic import atomic_write
from utkface.training.distributed import Cluster

TRACE_ENV = "UTKFACE_TRAIN_TRACE"
STOP_ENV = "UTKFACE_TRAIN_STOP_AFTER_STEP"


def parameters_digest(parameters: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors' names and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(parameters):
        digest.update(name.encode())
        digest.update(parameters[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankTrace:
    def __init__(self, path: Path, cluster: Cluster, stop_after: int | None):
        self.path, self.stop_after = path, stop_after
        # A resumed run appends to what the interrupted one recorded.
        self.record = (
            json.loads(path.read_text())
            if path.is_file()
            else {
                "rank": cluster.rank,
                "world": cluster.world,
                "node": cluster.node,
                "local_rank": cluster.local_rank,
                "prepare": [],
                "steps": [],
            }
        )

    @classmethod
    def from_env(cls, out: Path, cluster: Cluster) -> RankTrace | None:
        if os.environ.get(TRACE_ENV, "") in ("", "0"):
            return None
        stop = os.environ.get(STOP_ENV)
        path = out / "trace" / f"rank-{cluster.rank}.json"
        return cls(path, cluster, int(stop) if stop else None)

    def prepared(self, started: float, finished: float) -> None:
        self.record["prepare"].append({"started": started, "finished": finished})

    def step(self, epoch: int, step: int, rows: np.ndarray, seed: int) -> None:
        self.record["steps"].append(
            {"epoch": epoch, "step": step, "rows": [int(r) for r in rows], "seed": seed}
        )

    def finished(self, model: nn.Module) -> None:
        parameters = dict(model.named_parameters())
        self.record["parameters"] = sorted(parameters)
        self.record["parameters_digest"] = parameters_digest(parameters)

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.record))
