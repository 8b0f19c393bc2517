"""Ranks, devices and the process group: one process or many (torchrun, on one or more nodes).

`setup_distributed` reads the variables torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`LOCAL_WORLD_SIZE`), joins the process group (NCCL on CUDA, gloo otherwise) and gives each
process its share of the CPU cores. Without torchrun it is a world of one and nothing is joined.
`prepared_once` runs the data preparation on rank 0 before anyone else, so a shared cache is
built once, not once per rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from utkface.training.config import ConfigError

T = TypeVar("T")
# Rank 0 may spend a long time preparing the data while the others wait for it.
PREPARE_TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: its rank among `world` processes, and its device."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0  # rank among the processes of this node
    node: int = 0  # torchrun's GROUP_RANK: which node (agent) this process belongs to

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` in DistributedDataParallel when there are several processes."""
        if self.world == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's `value` on every rank (so that every rank stops at the same step)."""
        if self.world == 1:
            return value
        shared = torch.tensor([value], dtype=torch.long, device=self.device)  # NCCL: on GPU
        dist.broadcast(shared, 0)
        return int(shared)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype training's forward pass is autocast to, or None for float32. bfloat16 keeps
    float32's range, so it needs no loss scaling; it is opt-in, as most CPUs have no fast
    bfloat16 and its speed on a GPU has not been measured here yet (BENCHMARKS.md)."""
    return torch.bfloat16 if precision == "bf16" else None


def setup_distributed(device_name: str, threads: int = 0) -> Cluster:
    """The `Cluster` of this process; joins the process group when torchrun started it."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = pick_device(device_name)
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    # The processes of one node share its cores.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    node = int(os.environ.get("GROUP_RANK", 0))
    return Cluster(device=device, rank=rank, world=world, local_rank=local_rank, node=node)


def prepared_once(cluster: Cluster, prepare: Callable[[], T]) -> T:
    """`prepare()` on rank 0 first, then on the first process of every other node, then on the
    rest. With the cache on a filesystem all nodes share, rank 0 builds it and everyone else
    opens it; with a node-local cache each node builds its own once. The waits go through a gloo
    group with a long timeout, since building a cache can take far longer than a training step.
    """
    if cluster.world == 1:
        return prepare()
    group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    stages = (cluster.rank == 0, cluster.local_rank == 0, True)
    result, done = None, False
    for turn, mine in enumerate(stages):
        if mine and not done:
            result, done = prepare(), True
        if turn < len(stages) - 1:
            dist.barrier(group=group)
    dist.destroy_process_group(group)
    return result
