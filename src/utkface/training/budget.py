"""`--time-budget`: the number of optimizer steps that fits the minutes given.

The speed is measured over the first steps (12, or fewer in short epochs), the schedule's length
is set from it, and it is refitted after every epoch to the speed seen so far (the machine may
be busier or freer than at the start); the cosine learning rate follows the new length. A
process's first steps are never timed (`StepClock`). Both take the clock they read (tests give
them one that advances by set amounts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from utkface.training.config import TrainConfig
from utkface.training.distributed import Cluster

MEASURED_STEPS = 12
SAFETY = 0.97  # share of the budget planned for; the rest absorbs noise
TEST_ALLOWANCE_S = 10.0  # fixed cost of the final test pass (loading best.pt, warm-up)
WARMUP_STEPS = 2  # a process's first steps, left out of its speed


class StepClock:
    """The speed of an epoch's steps. A process's first `WARMUP_STEPS` steps are left out: they
    load kernels and choose algorithms (about 25 s on a GPU, against milliseconds a step after),
    and a budget fitted to them would plan a schedule a hundred times too short."""

    def __init__(self, warmup: int = WARMUP_STEPS, clock: Callable[[], float] = time.monotonic):
        self.untimed, self.clock = warmup, clock
        self.restart()

    def restart(self) -> None:
        """Time a new epoch from now."""
        self.started, self.steps, self.images = self.clock(), 0, 0

    def tick(self, images: int) -> None:
        """A step of `images` images (of all ranks) is done."""
        if self.untimed:
            self.untimed -= 1
            self.restart()
        else:
            self.steps += 1
            self.images += images

    @property
    def seconds(self) -> float:
        return self.clock() - self.started

    @property
    def rate(self) -> float:
        """Images per second over the timed steps (nan before the first)."""
        return self.images / max(self.seconds, 1e-9) if self.steps else float("nan")


class TimeBudget:
    def __init__(
        self,
        config: TrainConfig,
        started: float,
        splits: dict,
        validations: int,
        steps_per_epoch: int,
        cluster: Cluster,
        clock: Callable[[], float] = time.time,
    ):
        """`started`: when the run started (on `clock`); `splits`: the indices of each split;
        `validations`: val passes per epoch (the weights, and their average)."""
        self.minutes, self.started, self.batch_size = config.time_budget, started, config.batch_size
        self.val_size, self.test_size = len(splits["val"]), len(splits["test"])
        self.validations, self.steps_per_epoch, self.cluster = validations, steps_per_epoch, cluster
        self.clock = clock

    def first_fit(self, step: int, clock: StepClock, epoch_done: bool) -> int | None:
        """Total steps once `clock` has timed `MEASURED_STEPS` steps, or all of a shorter first
        epoch (None before)."""
        if not clock.steps or (clock.steps < MEASURED_STEPS and not epoch_done):
            return None
        per_step = clock.seconds / clock.steps
        # Evaluation runs about 3x faster per image than a training step (no backward).
        validation = per_step / self.batch_size / 3 * self.val_size * self.validations
        return self.fit(step, per_step, validation, announce=True)

    def fit(self, step: int, per_step: float, per_epoch: float, announce: bool = False) -> int:
        """Total steps that fit at `per_step` seconds a step plus `per_epoch` seconds of
        validation and checkpoints an epoch, keeping room for one test pass. Every rank gets
        rank 0's answer, so all stop at the same step."""
        test_cost = per_step / self.batch_size / 3 * self.test_size + TEST_ALLOWANCE_S
        remaining = self.minutes * 60 * SAFETY - (self.clock() - self.started) - test_cost
        per_step_all_in = per_step + per_epoch / self.steps_per_epoch
        total = self.cluster.broadcast_int(step + max(0, int(remaining / per_step_all_in)))
        if self.cluster.main and announce:
            rate = self.batch_size * self.cluster.world / per_step
            print(
                f"time budget {self.minutes} min at {rate:.0f} img/s: {total} steps "
                f"(~{total / self.steps_per_epoch:.1f} epochs)"
            )
        return total
