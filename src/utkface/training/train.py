"""Training: `train(config, data, out)` trains on `train`, selects on `val`, reports `test` once.

    utkface train --data ../shared/UTKFace.tar.gz --time-budget 40 --out runs/main
    torchrun --nproc-per-node 2 -m utkface train ...   # DDP, no other change (README: nodes)

A run folder holds `config.json`, `metrics.csv` (one row per epoch) and `curves.png` (its
plot), `last.pt`, `best.pt` (lowest validation score: age error + 20 x gender error rate, i.e.
one point of gender accuracy is worth 0.2 years, averaged over the sources: `validation`)
and, at the end, `final_metrics.json` (test metrics of the best checkpoint). Each epoch
scores the trained weights (`val_*` columns) and their moving average (`val_ema_*`, see
`ema.py`); `best.pt` holds whichever scored lower. `last.pt` also carries the optimizer,
average and step, so `resume` continues exactly where a run stopped, mid-epoch included:
batches and random numbers are functions of the seed, the rank and the step
(`training/sampling.py`), never state that would need saving.

This module is the loop; what surrounds it lives in `utkface.training` (see its docstring).
"""

from __future__ import annotations

import json
import os
import random
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utkface.data.dataset import Dataset
from utkface.data.multisource import prepare_sources
from utkface.evaluation import fairness
from utkface.models.checkpoint import init_weights, model_spec
from utkface.models.registry import build_model, model_entry, model_tasks
from utkface.runtime.atomic import atomic_write, remove_stale
from utkface.runtime.cpu_threads import CoreShare
from utkface.training import sampling, seed_pair
from utkface.training.augment import Augment
from utkface.training.budget import StepClock, TimeBudget
from utkface.training.config import ConfigError, TrainConfig
from utkface.training.distributed import (
    Cluster,
    autocast_dtype,
    pick_device,
    prepared_once,
    setup_distributed,
)
from utkface.training.ema import WeightAverage
from utkface.training.epoch_log import format_metrics, summary_line, write_epoch_files
from utkface.training.interrupts import DeferredInterrupt
from utkface.training.losses import multitask_loss
from utkface.training.saver import CheckpointSaver, fresh_state
from utkface.training.schedule import lr_at, make_optimizer
from utkface.training.trace import RankTrace
from utkface.training.validation import Validator

__all__ = ["Trainer", "load_run_config", "pick_device", "train"]


def train(
    config: TrainConfig,
    data: str | os.PathLike | Dataset | None = None,
    out: str | os.PathLike | None = None,
    *,
    cache: str | os.PathLike | None = None,
    resume: bool = False,
    subset: float = 1.0,
    progress: bool = True,
    report_test: bool = True,
    on_step=None,
) -> dict:
    """Train one model (or, for `model="seed"`, both seed CNNs) and return the final metrics.

    `subset` keeps a seeded random share of each split (for quick runs); `report_test=False`
    leaves the test split unscored (for tuning, which must never look at it); `on_step(step)`
    is called after every optimizer step (tests use it to interrupt a run).
    """
    out = Path(out or Path("runs") / time.strftime(f"%Y%m%d-%H%M%S-{config.model}"))
    cluster = setup_distributed(config.device, config.threads)
    trace = RankTrace.from_env(out, cluster)

    def prepare_data() -> Dataset:
        started = time.time()
        dataset = prepare_sources(
            data, size=config.size, out=cache, seed=config.seed, progress=progress
        )
        if trace:
            trace.prepared(started, time.time())
        return dataset

    dataset = data if isinstance(data, Dataset) else prepared_once(cluster, prepare_data)
    if config.model == "seed":
        return seed_pair.train_pair(
            train,
            config,
            dataset,
            out,
            cluster.main,
            resume,
            subset,
            progress,
            report_test,
            on_step,
        )
    trainer = Trainer(config, dataset, out, subset, progress and cluster.main, cluster, trace)
    return trainer.run(resume, on_step, report_test)


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config a run folder was started with (for `--resume`)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder to resume (no config.json)")
    return TrainConfig(**json.loads(path.read_text()))


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        dataset: Dataset,
        out: Path,
        subset: float,
        progress: bool,
        cluster: Cluster,
        trace: RankTrace | None = None,
    ):
        self.config, self.dataset, self.out, self.subset = config, dataset, out, subset
        self.progress, self.cluster, self.trace = progress, cluster, trace
        self.device = cluster.device
        entry = model_entry(config.model)
        self.preprocess = entry.preprocess(config.size)
        options = {name: getattr(config, name) for name in entry.options}
        # --init replaces the pretrained start: `_start` records that checkpoint's own start
        pretrained = config.pretrained and not config.init
        self.spec = model_spec(config.model, config.tasks, pretrained, **options)
        self.tasks = model_tasks(config.model, config.tasks)
        self.split = {
            name: sampling.subset_indices(dataset.indices(name), subset, config.seed)
            for name in ("train", "val", "test")
        }
        # Batches are read from the memory-mapped cache (pages shared by every process of a
        # node through the page cache), never copied whole into each rank's memory.
        labels = dataset.labels()
        self.labels = {key: torch.from_numpy(value) for key, value in labels.items()}
        # None (balance_alpha 0, no source_mix): a plain shuffle, as before the options
        self.sample_weights = sampling.draw_weights(dataset, self.split["train"], config)
        self.augment = Augment(photo=config.photo_augment) if config.augment else None
        self.validator = Validator(dataset, self.split, self.preprocess, config.eval_batch_size)
        self.clock = StepClock()
        # On a CPU, torch's threads follow the cores other processes leave free (issue 22),
        # unless the user chose them (--threads).
        self.cores = None
        if not config.threads and self.device.type == "cpu":
            self.cores = CoreShare(torch.set_num_threads, most=torch.get_num_threads())
        dtype = autocast_dtype(config.precision)  # None: float32
        self.autocast = partial(torch.autocast, self.device.type, dtype) if dtype else nullcontext

    def run(self, resume: bool, on_step=None, report_test: bool = True) -> dict:
        config, cluster = self.config, self.cluster
        model, optimizer, saver, state = self._start(resume)
        net = cluster.wrap(model)  # DistributedDataParallel under torchrun
        steps = sampling.steps_per_epoch(len(self.split["train"]), cluster.world, config.batch_size)
        if state["total_steps"] is None and config.time_budget is None:
            state["total_steps"] = config.epochs * steps
        provisional = state["total_steps"] or config.epochs * steps
        started = time.time() - state["elapsed"]
        validations = 1 if self.average is None else 2  # it scores both
        budget = None
        if config.time_budget is not None:
            budget = TimeBudget(config, started, self.split, validations, steps, cluster)
        with DeferredInterrupt() as interrupt:
            # An epoch interrupted after its last step still owes its validation and checkpoints.
            while state["step"] < (state["total_steps"] or provisional) or state["step_in_epoch"]:
                epoch_start = time.time()
                try:
                    trained, timed_steps, timed_seconds = self.train_one_epoch(
                        net, optimizer, state, steps, provisional, budget, interrupt, on_step
                    )
                except KeyboardInterrupt:
                    state["elapsed"] = time.time() - started
                    self._interrupted(model, optimizer, state, saver, interrupt.forced)
                    raise
                seconds = time.time() - epoch_start
                state.update(epoch=state["epoch"] + 1, step_in_epoch=0, epoch_losses=[])
                state["elapsed"] = time.time() - started
                validation_start = time.time()
                row = self._end_epoch(model, optimizer, state, saver, trained, seconds)
                if budget is not None and timed_steps:
                    per_epoch = time.time() - validation_start
                    state["total_steps"] = budget.fit(
                        state["step"], timed_seconds / timed_steps, per_epoch
                    )
                if cluster.main:
                    left = (state["total_steps"] or provisional) - state["step"]
                    eta = state["elapsed"] / state["step"] * left
                    print(summary_line(row) + f" | eta {eta / 60:.1f} min")
        return self._finish(model, saver, report_test)

    def _start(self, resume: bool):
        """The model, optimizer, checkpoint saver and run state, fresh or from `last.pt`."""
        config = self.config
        if resume and not (self.out / "last.pt").is_file():
            resume = False  # stopped before its first last.pt: the run starts over
        _seed_everything(config.seed)  # the initial weights: the same on every rank
        pretrained = config.pretrained and not resume and not config.init
        model = build_model(config.model, config.tasks, pretrained, **self.spec["kwargs"])
        if config.init and not resume:
            copied, start = init_weights(model, config.model, config.tasks, config.init)
            if start:
                self.spec["start"] = start
            if self.cluster.main:
                print(f"starting from {config.init}: {copied} tensors")
        model = model.to(self.device).to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, config)
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
        saver = CheckpointSaver(
            self.out, self.spec, self.preprocess, config.to_dict(), self.average
        )
        if self.cluster.main:
            remove_stale(self.out)  # what a killed run was writing
        if resume:
            state = saver.resume(model, optimizer, self.subset)
            if self.cluster.main:
                print(f"resuming {self.out} at epoch {state['epoch'] + 1}, step {state['step']}")
        else:
            state = fresh_state(self.subset)
            if self.cluster.main:
                self.out.mkdir(parents=True, exist_ok=True)
                atomic_write(self.out / "config.json", json.dumps(config.to_dict(), indent=2))
                print("config: " + json.dumps(config.to_dict()))
        return model, optimizer, saver, state

    def train_one_epoch(
        self, net, optimizer, state, steps, provisional, budget, interrupt, on_step
    ) -> tuple[dict, int, float]:
        """The steps of one epoch (from `state["step_in_epoch"]` on, after a resume). Returns
        the epoch's training columns (last learning rate, mean losses over all of its steps,
        images per second of all ranks), and the number of steps timed and their seconds
        (`StepClock`: a process's first steps are not timed)."""
        config, cluster, epoch = self.config, self.cluster, state["epoch"]
        batches = sampling.epoch_batches(
            self.split["train"],
            epoch,
            config.seed,
            cluster.rank,
            cluster.world,
            config.batch_size,
            self.sample_weights,
        )
        bar = tqdm(
            total=steps,
            initial=state["step_in_epoch"],
            disable=not self.progress,
            desc=f"epoch {epoch + 1}",
            unit="step",
            leave=False,
        )
        clock = self.clock
        clock.restart()
        losses = state["epoch_losses"]  # kept across an interruption: the row covers the epoch
        lr = optimizer.param_groups[0]["lr"]  # the last step's, if no step is left to take
        net.train()
        with bar:
            while state["step_in_epoch"] < steps:
                interrupt.check()  # a Ctrl-C during the last step stops here
                total = state["total_steps"] or provisional
                if state["step"] >= total:
                    break
                rows = batches[state["step_in_epoch"]]
                seed = sampling.step_seed(config.seed, cluster.rank, state["step"])
                if self.trace:
                    self.trace.step(epoch + 1, state["step"] + 1, rows, seed)
                torch.manual_seed(seed)  # this rank's augmentation and dropout of this step
                lr = lr_at(state["step"], total, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, parts = self._step(net, optimizer, rows)
                if self.average is not None:
                    self.average.update()
                losses.append([loss] + [parts.get(t, float("nan")) for t in self.tasks])
                state["step"] += 1
                state["step_in_epoch"] += 1
                clock.tick(len(rows) * cluster.world)
                if self.cores is not None:
                    self.cores.check()  # a look at /proc/stat every 2 s
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{clock.rate:.0f}")
                bar.update()
                if budget is not None and state["total_steps"] is None:
                    epoch_done = state["step_in_epoch"] == steps
                    state["total_steps"] = budget.first_fit(state["step"], clock, epoch_done)
                if on_step:
                    on_step(state["step"])
                if self.trace and self.trace.stop_after == state["step"]:
                    interrupt.request()
        mean = np.nanmean(np.array(losses), axis=0) if losses else [float("nan")] * 4
        columns = {"lr": lr, "train_loss": float(mean[0])}
        columns.update({f"train_{t}_loss": float(v) for t, v in zip(self.tasks, mean[1:])})
        return {**columns, "images_per_s": clock.rate}, clock.steps, clock.seconds

    def _step(self, net, optimizer, rows: np.ndarray):
        images = torch.from_numpy(self.dataset.images[rows]).to(self.device, non_blocking=True)
        labels = {key: value[rows].to(self.device) for key, value in self.labels.items()}
        if self.augment is not None:
            # uint8 in, uint8 out; torch's default generator, seeded for this rank and step
            images = self.augment(images)
        with self.autocast():  # the losses take the outputs to float32 themselves
            raw = net(self.preprocess(images))
        loss, parts = multitask_loss(
            raw, labels, self.config.loss_weights, self.config.age_sigma, self.config.age_l1_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), parts

    def _end_epoch(self, model, optimizer, state, saver, trained: dict, seconds) -> dict:
        """Validation (rank 0), the metrics row, `last.pt` and maybe `best.pt`; every rank waits."""
        row = {"epoch": state["epoch"], "step": state["step"], **trained}
        if self.cluster.main:
            average = None if self.average is None else self.average.model
            columns, tables, selected, score = self.validator.epoch_columns(model, average)
            row.update(columns)
            fairness.record(self.out, state["epoch"], tables)  # the tables: fairness.csv
        # images_per_s last but two, after the val columns, as metrics.csv has always had it
        row.update(images_per_s=row.pop("images_per_s"), seconds=seconds, elapsed=state["elapsed"])
        if self.cluster.main:
            state["history"].append(row)
            write_epoch_files(self.out, state["history"])
            saver.save_epoch(model, optimizer, state, row, selected, score)
        if self.trace:
            self.trace.save()
        self.cluster.barrier()
        return row

    def _interrupted(self, model, optimizer, state, saver, forced: bool) -> None:
        if self.trace:
            self.trace.save()
        if not self.cluster.main:
            return
        last = self.out / "last.pt"
        if not forced:
            saver.save_last(model, optimizer, state, {})
            print(f"\ninterrupted: saved {last}; continue with --resume")
        else:
            where = (
                f"--resume continues from {last} as saved before"
                if last.is_file()
                else "no checkpoint was written yet"
            )
            print("\nstopped at once, nothing saved: " + where)

    def _finish(self, model, saver: CheckpointSaver, report_test: bool) -> dict:
        if self.trace:
            self.trace.finished(model)
            self.trace.save()
        result: dict = {"run_dir": str(self.out)}
        if self.cluster.main:
            best = saver.best()
            weights = best["metrics"].get("selected", "weights")
            result.update(best_epoch=best["epoch"], best_weights=weights, val=best["metrics"])
            print(fairness.table_text(self.out, best["epoch"], weights))
            if report_test:  # once, at the very end, from the checkpoint chosen on val
                model.load_state_dict(best["state_dict"])
                result["test"] = self.validator.scores(model, "test")
                print(
                    f"test split (best epoch {best['epoch']}, {weights}): "
                    + format_metrics(result["test"])
                )
            atomic_write(self.out / "final_metrics.json", json.dumps(result, indent=2))
        self.cluster.barrier()
        return result


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
