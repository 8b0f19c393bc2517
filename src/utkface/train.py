"""Training: `train(config, data, out)` trains on `train`, selects on `val`, reports `test` once.

    utkface train --data ../shared/UTKFace.tar.gz --time-budget 40 --out runs/main
    torchrun --nproc-per-node 2 -m utkface train ...   # DDP, no other change

A run folder holds `config.json`, `metrics.csv` (one row per epoch) and `curves.png` (its
plot), `last.pt`, `best.pt` (lowest validation score: age MAE + 20 x gender error rate, i.e. one
point of gender accuracy is worth 0.2 years) and, at the end, `final_metrics.json` (test metrics
of the best checkpoint). Each epoch scores the trained weights (`val_*` columns) and their
moving average (`val_ema_*`, see `ema.py`); `best.pt` holds whichever scored lower. `last.pt`
also carries the optimizer, average, step and RNG states, so `resume` continues exactly where a
run stopped, mid-epoch included.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from utkface import balance, fairness
from utkface.atomic import atomic_open, atomic_write
from utkface.augment import Augment
from utkface.checkpoint import model_spec, read_checkpoint, save_checkpoint
from utkface.config import ConfigError, TrainConfig
from utkface.data import Dataset
from utkface.ema import WeightAverage
from utkface.evaluate import build_report
from utkface.inference import predict_arrays
from utkface.losses import multitask_loss
from utkface.models import build_model, model_tasks
from utkface.multisource import prepare_sources
from utkface.plots import save_figure, training_curves
from utkface.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

SEED_RUNS = {"seed_gender": "gender_model", "seed_age": "age_model"}
GENDER_ERROR_YEARS = 20.0  # model selection: 1 point of gender accuracy = 0.2 years of MAE


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
    dataset = (
        data
        if isinstance(data, Dataset)
        else prepare_sources(data, size=config.size, out=cache, seed=config.seed, progress=progress)
    )
    if config.model == "seed":
        if not resume and int(os.environ.get("RANK", 0)) == 0:
            out.mkdir(parents=True, exist_ok=True)  # the whole run's config, for --resume
            atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=2))
        results = {}
        for index, (name, folder) in enumerate(SEED_RUNS.items()):
            single = TrainConfig(**{**config.to_dict(), "model": name})
            # A run interrupted in its first CNN never started the second: start it afresh.
            started = index == 0 or (out / folder / "last.pt").is_file()
            results[folder] = train(
                single,
                dataset,
                out / folder,
                resume=resume and started,
                subset=subset,
                progress=progress,
                report_test=report_test,
                on_step=on_step,
            )
        return results
    return Trainer(config, dataset, out, subset, progress).run(resume, on_step, report_test)


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved config a run folder was started with (for `--resume`)."""
    return TrainConfig(**json.loads((Path(run_dir) / "config.json").read_text()))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


class Trainer:
    def __init__(self, config: TrainConfig, dataset: Dataset, out: Path, subset: float, progress):
        self.config, self.out, self.subset = config, out, subset
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = pick_device(config.device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick kernels
        if self.world > 1:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        cores = os.cpu_count() or 1
        torch.set_num_threads(
            config.threads or max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
        )
        self.progress = progress and self.rank == 0
        self.main = self.rank == 0
        seed_model = config.model.startswith("seed_")
        self.preprocess = Preprocess(
            config.size,
            (0.0, 0.0, 0.0) if seed_model else IMAGENET_MEAN,  # the seed scaled pixels to 0..1
            (1.0, 1.0, 1.0) if seed_model else IMAGENET_STD,
        )
        self.tasks = model_tasks(config.model, config.tasks)
        self.spec = model_spec(
            config.model, config.tasks, **({} if seed_model else {"dropout": config.dropout})
        )
        self.split = {
            name: _subset(dataset.indices(name), subset, config.seed)
            for name in ("train", "val", "test")
        }
        self.dataset = dataset
        # Training pixels live in RAM (uint8); an epoch never touches the disk or a JPEG.
        self.images = torch.from_numpy(np.ascontiguousarray(dataset.images[self.split["train"]]))
        labels = dataset.labels(self.split["train"])
        self.labels = {key: torch.from_numpy(value) for key, value in labels.items()}
        alpha = config.balance_alpha  # 0: a plain shuffle, as before the option existed
        self.sample_weights = balance.sample_weights(labels, alpha) if alpha else None
        self.augment = Augment() if config.augment else None

    # ---------------------------------------------------------------------------------------
    def run(self, resume: bool, on_step, report_test: bool = True) -> dict:
        with _DeferredInterrupt() as self.interrupt:
            return self._run(resume, on_step, report_test)

    def _run(self, resume: bool, on_step, report_test: bool) -> dict:
        config = self.config
        _seed_everything(config.seed)
        model = build_model(
            config.model,
            config.tasks,
            pretrained=config.pretrained and not resume,
            **self.spec["kwargs"],
        )
        model = model.to(self.device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        self.average = WeightAverage(model, config.ema_decay) if config.ema_decay else None
        state = self._fresh_state()
        if resume:
            state = self._load_resume(model, optimizer)
        elif self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(self.out / "config.json", json.dumps(config.to_dict(), indent=2))
            print("config: " + json.dumps(config.to_dict()))
        net = model
        if self.world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        steps_per_epoch = max(1, len(self.split["train"]) // self.world // config.batch_size)
        if state["total_steps"] is None and config.time_budget is None:
            state["total_steps"] = config.epochs * steps_per_epoch
        provisional = state["total_steps"] or config.epochs * steps_per_epoch
        started = time.time() - state["elapsed"]

        # An epoch interrupted after its last step still owes its validation and checkpoints.
        while state["step"] < (state["total_steps"] or provisional) or state["step_in_epoch"]:
            epoch = state["epoch"]
            order = self._epoch_order(epoch, steps_per_epoch)
            bar = tqdm(
                total=steps_per_epoch,
                initial=state["step_in_epoch"],
                disable=not self.progress,
                desc=f"epoch {epoch + 1}",
                unit="step",
                leave=False,
            )
            epoch_start, images_done, timed_steps = time.time(), 0, 0
            losses = state["epoch_losses"]  # kept across an interruption: the row covers the epoch
            lr = optimizer.param_groups[0]["lr"]  # the last step's, if no step is left to take
            net.train()
            try:
                while state["step_in_epoch"] < steps_per_epoch:
                    self.interrupt.check()  # a Ctrl-C during the last step stops here
                    total = state["total_steps"] or provisional
                    if state["step"] >= total:
                        break
                    batch = order[state["step_in_epoch"]]
                    lr = _lr_at(state["step"], total, config)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss, parts = self._step(net, optimizer, batch, state["aug_rng"])
                    if self.average is not None:
                        self.average.update()
                    losses.append([loss] + [parts.get(t, float("nan")) for t in self.tasks])
                    state["step"] += 1
                    state["step_in_epoch"] += 1
                    images_done += len(batch) * self.world
                    timed_steps += 1
                    rate = images_done / max(time.time() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
                    bar.update()
                    # Measure the speed over 12 steps of one epoch (fewer if epochs are short).
                    if state["total_steps"] is None and timed_steps == min(12, steps_per_epoch):
                        per_step = (time.time() - epoch_start) / timed_steps
                        val_guess = per_step / config.batch_size / 3 * len(self.split["val"])
                        val_guess *= 1 if self.average is None else 2  # it scores both
                        state["total_steps"] = self._budget_steps(
                            started, state["step"], per_step, val_guess, steps_per_epoch
                        )
                    if on_step:
                        on_step(state["step"])
            except KeyboardInterrupt:
                state["elapsed"] = time.time() - started
                if self.main and not self.interrupt.forced:
                    self._save(model, optimizer, state, self.out / "last.pt", {})
                    print(f"\ninterrupted: saved {self.out / 'last.pt'}; continue with --resume")
                elif self.main:
                    last = self.out / "last.pt"
                    print(
                        "\nstopped at once, nothing saved: "
                        + (
                            f"--resume continues from {last} as saved before"
                            if last.is_file()
                            else "no checkpoint was written yet"
                        )
                    )
                raise
            finally:
                bar.close()
            seconds = time.time() - epoch_start
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            state["epoch_losses"] = []
            state["elapsed"] = time.time() - started
            validation_start = time.time()
            row = self._end_epoch(model, optimizer, state, losses, lr, images_done, seconds)
            if config.time_budget is not None and timed_steps:
                # Refit the step count to the speed seen so far: the machine may be busier or
                # freer than during the first steps. The cosine follows the new length.
                state["total_steps"] = self._budget_steps(
                    started,
                    state["step"],
                    seconds / timed_steps,
                    time.time() - validation_start,
                    steps_per_epoch,
                    quiet=True,
                )
            if self.main:
                left = (state["total_steps"] or provisional) - state["step"]
                eta = state["elapsed"] / state["step"] * left
                print(_summary_line(row) + f" | eta {eta / 60:.1f} min")
        return self._finish(model, report_test)

    # ---------------------------------------------------------------------------------------
    def _step(self, net, optimizer, batch: torch.Tensor, aug_rng: torch.Generator):
        images = self.images[batch].to(self.device, non_blocking=True)
        labels = {key: value[batch].to(self.device) for key, value in self.labels.items()}
        x = self.preprocess(images)
        if self.augment is not None:
            x = self.augment(x, aug_rng)
        raw = net(x)
        loss, parts = multitask_loss(
            raw, labels, self.config.loss_weights, self.config.age_sigma, self.config.age_l1_weight
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), parts

    def _epoch_order(self, epoch: int, steps: int) -> list[torch.Tensor]:
        """This rank's batches of epoch `epoch`: a pure function of (seed, epoch)."""
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = balance.epoch_order(len(self.split["train"]), self.sample_weights, generator)
        order = order[self.rank :: self.world]
        size = self.config.batch_size
        return [order[i * size : (i + 1) * size] for i in range(steps)]

    def _budget_steps(
        self, started, step, per_step, per_epoch, steps_per_epoch, quiet=False
    ) -> int:
        """Total steps that fit the time budget at `per_step` seconds a step plus `per_epoch`
        seconds of validation and checkpointing an epoch, keeping room for one test pass."""
        test_cost = per_step / self.config.batch_size / 3 * len(self.split["test"]) + 10.0
        remaining = self.config.time_budget * 60 * 0.97 - (time.time() - started) - test_cost
        total = step + max(0, int(remaining / (per_step + per_epoch / steps_per_epoch)))
        if self.world > 1:  # every rank must stop at the same step
            shared = torch.tensor([total], dtype=torch.long, device=self.device)  # NCCL: on GPU
            dist.broadcast(shared, 0)
            total = int(shared)
        if self.main and not quiet:
            rate = self.config.batch_size * self.world / per_step
            print(
                f"time budget {self.config.time_budget} min at {rate:.0f} img/s: {total} steps "
                f"(~{total / steps_per_epoch:.1f} epochs)"
            )
        return total

    def _validate(self, model, split: str) -> dict:
        indices = self.split[split]
        images = self.dataset.images[indices]
        predictions = predict_arrays(model, self.preprocess, images, self.config.eval_batch_size)
        labels = self.dataset.labels(indices)
        report = build_report(labels, predictions)  # the same definitions as `evaluate`
        result: dict = {"n": int(len(indices))}
        if report["age"]:
            result.update(mae=report["age"]["mae"], cs5=report["age"]["cs"]["5"])
        if report["gender"]:
            result["gender_acc"] = report["gender"]["accuracy"]
        if report["race"]:
            result["race_acc"] = report["race"]["accuracy"]
        result.update(fairness.summary(report), fairness=fairness.rows(report))
        result["score"] = (result.get("mae") or 0.0) + GENDER_ERROR_YEARS * (
            1 - result["gender_acc"] if result.get("gender_acc") is not None else 0.0
        )
        return result

    def _end_epoch(self, model, optimizer, state, losses, lr, images_done, seconds) -> dict:
        mean = np.nanmean(np.array(losses), axis=0) if losses else [float("nan")] * 4
        row = {
            "epoch": state["epoch"],
            "step": state["step"],
            "lr": lr,
            "train_loss": float(mean[0]),
        }
        row.update({f"train_{t}_loss": float(v) for t, v in zip(self.tasks, mean[1:])})
        candidates = {"weights": model}
        if self.main:
            val = self._validate(model, "val")
            tables = {"weights": val.pop("fairness")}  # -> fairness.csv, not metrics.csv
            row.update({f"val_{key}": value for key, value in val.items() if key != "n"})
            if self.average is not None:
                candidates["ema"] = self.average.model
                val = self._validate(self.average.model, "val")
                tables["ema"] = val.pop("fairness")
                row.update({f"val_ema_{key}": value for key, value in val.items() if key != "n"})
                row["selected"] = "ema" if row["val_ema_score"] < row["val_score"] else "weights"
            fairness.record(self.out, state["epoch"], tables)
        row.update(
            images_per_s=images_done / max(seconds, 1e-9), seconds=seconds, elapsed=state["elapsed"]
        )
        if self.main:
            state["history"].append(row)
            _write_metrics(self.out / "metrics.csv", state["history"])
            save_figure(training_curves(state["history"]), self.out / "curves.png")
            selected = row.get("selected", "weights")
            score = row["val_ema_score"] if selected == "ema" else row["val_score"]
            best = score < state["best_score"]
            if best:
                state["best_score"] = score
            self._save(model, optimizer, state, self.out / "last.pt", row)
            if best:  # weights and metadata only: best.pt is for using, not resuming
                self._save(candidates[selected], None, state, self.out / "best.pt", row)
        if self.world > 1:
            dist.barrier()
        return row

    def _finish(self, model, report_test: bool) -> dict:
        result: dict = {"run_dir": str(self.out)}
        if self.main:
            best = read_checkpoint(self.out / "best.pt")
            weights = best["metrics"].get("selected", "weights")
            result.update(best_epoch=best["epoch"], best_weights=weights, val=best["metrics"])
            print(fairness.table_text(self.out, best["epoch"], weights))
            if report_test:  # once, at the very end, from the checkpoint chosen on val
                model.load_state_dict(best["state_dict"])
                result["test"] = self._validate(model, "test")
                print(
                    f"test split (best epoch {best['epoch']}, {weights}): "
                    + _format_metrics(result["test"])
                )
            atomic_write(self.out / "final_metrics.json", json.dumps(result, indent=2))
        if self.world > 1:
            dist.barrier()
        return result

    # ---------------------------------------------------------------------------------------
    def _fresh_state(self) -> dict:
        return {
            "epoch": 0,
            "step": 0,
            "step_in_epoch": 0,
            "total_steps": None,
            "elapsed": 0.0,
            "best_score": math.inf,
            "history": [],
            "epoch_losses": [],  # [loss, *task losses] per step of the current epoch
            "subset": self.subset,
            "aug_rng": torch.Generator().manual_seed(self.config.seed + 1),
        }

    def _save(self, model, optimizer, state, path, row) -> None:
        """A checkpoint of `model`; with `optimizer`, also everything `resume` needs."""
        extra = None
        if optimizer is not None:
            train_state = {key: value for key, value in state.items() if key != "aug_rng"}
            train_state.update(
                aug_rng=state["aug_rng"].get_state(),
                optimizer=optimizer.state_dict(),
                torch_rng=torch.get_rng_state(),
                numpy_rng=np.random.get_state(),
                python_rng=random.getstate(),
                cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            )
            if self.average is not None:
                train_state["ema"] = self.average.state_dict()
            extra = {"train_state": train_state}
        save_checkpoint(
            path,
            model,
            self.spec,
            self.preprocess,
            config=self.config.to_dict(),
            metrics=row,
            epoch=state["epoch"],
            extra=extra,
        )

    def _load_resume(self, model, optimizer) -> dict:
        saved = read_checkpoint(self.out / "last.pt")
        model.load_state_dict(saved["state_dict"])
        train_state = saved["train_state"]
        if train_state.setdefault("subset", 1.0) != self.subset:
            # Another slice of the data would silently continue a different run.
            raise ConfigError(
                f"{self.out} was trained with subset={train_state['subset']}; resume it with "
                f"the same subset (--subset {train_state['subset']}), not {self.subset}"
            )
        train_state.setdefault("epoch_losses", [])
        optimizer.load_state_dict(train_state.pop("optimizer"))
        average = train_state.pop("ema", None)
        if self.average is not None and average is not None:
            self.average.load_state_dict(average)
        torch.set_rng_state(train_state.pop("torch_rng"))
        np.random.set_state(train_state.pop("numpy_rng"))
        random.setstate(train_state.pop("python_rng"))
        cuda_rng = train_state.pop("cuda_rng")
        if cuda_rng is not None and torch.cuda.is_available():
            with suppress(RuntimeError):
                torch.cuda.set_rng_state_all(cuda_rng)
        generator = torch.Generator()
        generator.set_state(train_state.pop("aug_rng"))
        train_state["aug_rng"] = generator
        if self.main:
            print(
                f"resuming {self.out} at epoch {train_state['epoch'] + 1}, "
                f"step {train_state['step']}"
            )
        return train_state


class _DeferredInterrupt:
    """Holds a Ctrl-C (SIGINT) until the optimizer step under way is complete, so the `last.pt`
    saved on interrupt never holds a half-applied step; a second Ctrl-C stops at once, and then
    nothing is saved. Outside the main thread (no signal handlers there) it does nothing."""

    def __enter__(self) -> _DeferredInterrupt:
        self.requested = self.forced = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to `lr * min_lr_ratio` at `total` steps."""
    warmup = int(config.warmup * total)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalization parameters (the usual AdamW practice)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _subset(indices: np.ndarray, share: float, seed: int) -> np.ndarray:
    if share >= 1.0:
        return indices
    keep = max(1, int(round(len(indices) * share)))
    return np.sort(np.random.default_rng(seed).permutation(indices)[:keep])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_metrics(path: Path, history: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in history for key in row))
    with atomic_open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _format_metrics(values: dict) -> str:
    names = {
        "mae": "MAE {:.2f}",
        "cs5": "CS@5 {:.1%}",
        "gender_acc": "gender acc {:.2%}",
        "race_acc": "race acc {:.2%}",
        "max_abs_bias": "max |bias| {:.2f}",  # over race x age band cells with n >= 20
        "gender_gap": "race gender gap {:.1%}",
    }
    text = ", ".join(
        fmt.format(values[key]) for key, fmt in names.items() if values.get(key) is not None
    )
    return text + (f" (n={values['n']})" if "n" in values else "")


def _summary_line(row: dict) -> str:
    val = {key[4:]: value for key, value in row.items() if key.startswith("val_")}
    ema = {key[8:]: value for key, value in row.items() if key.startswith("val_ema_")}
    average = f" | average {_format_metrics(ema)}" if ema else ""
    return (
        f"epoch {row['epoch']:3d} | loss {row['train_loss']:.3f} | val {_format_metrics(val)}"
        f"{average} | {row['images_per_s']:.0f} img/s | {row['seconds']:.0f} s"
    )
