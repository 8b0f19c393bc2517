"""Training end to end on a small slice of the real data: the run folder, checkpoints that
reload to identical predictions, exact resume after an interruption, the time budget, the seed
preset, the CLI, and DDP across two "nodes" of one CPU process each (torchrun, c10d, gloo).

All runs share the session's real dataset (`real_dataset`, prepared once at `REAL_SIZE` px)
and train a randomly initialised MobileNetV2 on ~70 images for a few steps; the two-node test
prepares 80 generated faces of its own, to check that they are prepared once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_SIZE
from PIL import Image

from utkface.apps.cli import main
from utkface.data.dataset import prepare, split_of
from utkface.evaluation import metrics
from utkface.models.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from utkface.models.inference import predict_arrays
from utkface.training import train as train_module
from utkface.training.budget import MEASURED_STEPS, StepClock, TimeBudget
from utkface.training.config import resolve_config
from utkface.training.distributed import Cluster
from utkface.training.sampling import subset_indices
from utkface.training.trace import STOP_ENV, TRACE_ENV, parameters_digest
from utkface.training.train import Trainer, load_run_config, train

pytestmark = pytest.mark.slow

SUBSET = 0.004  # of ~17k train images: 68 train, ~9 val, ~8 test
BATCH = 16  # -> 4 steps per epoch
STEPS_PER_EPOCH = 4
RUN_FILES = {
    "config.json",
    "metrics.csv",
    "fairness.csv",
    "last.pt",
    "best.pt",
    "final_metrics.json",
}


def small_config(**overrides):
    values = dict(
        size=REAL_SIZE,
        batch_size=BATCH,
        epochs=2,
        pretrained=False,  # no weights needed; the ImageNet path is covered in test_models.py
        threads=1,  # deterministic and kind to a shared machine
        device="cpu",
        eval_batch_size=64,
    )
    return resolve_config(**{**values, **overrides})


@pytest.fixture(autouse=True)
def _restore_threads():
    """Trainer sets torch's thread count for the whole process; give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(real_dataset, tmp_path_factory):
    """An uninterrupted 2-epoch run (8 steps, augmentation and dropout on)."""
    out = tmp_path_factory.mktemp("run") / "full"
    config = small_config()
    result = train(config, real_dataset, out, subset=SUBSET, progress=False)
    return config, out, result


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _split(dataset, name: str, config) -> np.ndarray:
    return subset_indices(dataset.indices(name), SUBSET, config.seed)


def _assert_same_weights(path_a: Path, path_b: Path) -> None:
    a, b = read_checkpoint(path_a)["state_dict"], read_checkpoint(path_b)["state_dict"]
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---------------------------------------------------------------------------------------------
# one run, end to end


def test_run_folder(finished_run, real_dataset):
    config, out, result = finished_run
    assert RUN_FILES <= {path.name for path in out.iterdir()}
    assert json.loads((out / "config.json").read_text()) == config.to_dict()

    rows = _rows(out / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert [int(row["step"]) for row in rows] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    columns = ("train_loss", "val_mae", "val_cs5", "val_gender_acc", "lr", "images_per_s")
    for column in columns + ("val_ema_mae", "val_ema_gender_acc", "val_ema_score"):
        assert all(np.isfinite(float(row[column])) for row in rows), column
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine decay
    # fairness.csv: per epoch and weights, 24 race x age band cells and 6 races that add up to
    # the val split, and whose n-weighted MAE is the epoch's val MAE
    fair = _rows(out / "fairness.csv")
    assert len(fair) == 2 * 2 * (24 + 6)
    val_n = len(_split(real_dataset, "val", config))
    for row in rows:
        for weights, column in (("weights", "val_mae"), ("ema", "val_ema_mae")):
            cells = [
                r
                for r in fair
                if (r["epoch"], r["weights"], r["table"]) == (row["epoch"], weights, "race_age")
            ]
            assert sum(int(r["n"]) for r in cells) == val_n
            mae = sum(int(r["n"]) * float(r["mae"]) for r in cells if r["mae"]) / val_n
            assert mae == pytest.approx(float(row[column]))
    assert "val_max_abs_bias" in rows[0] and "val_ema_gender_gap" in rows[0]

    final = json.loads((out / "final_metrics.json").read_text())
    assert final == json.loads(json.dumps(result))
    assert final["test"]["n"] == len(_split(real_dataset, "test", config))
    # best.pt: the lowest validation score of either the weights or their average.
    scores = {
        (int(row["epoch"]), weights): float(row[column])
        for row in rows
        for weights, column in (("weights", "val_score"), ("ema", "val_ema_score"))
    }
    assert (final["best_epoch"], final["best_weights"]) == min(scores, key=scores.get)

    last = read_checkpoint(out / "last.pt")
    assert last["train_state"]["step"] == last["train_state"]["total_steps"] == 8
    assert last["epoch"] == 2 and last["config"] == config.to_dict()
    best = read_checkpoint(out / "best.pt")
    assert "train_state" not in best  # no optimizer state in the checkpoint users copy around
    assert best["model"] == {
        "name": "mobilenet_v2",
        "tasks": ["age", "gender", "race"],
        "kwargs": {"dropout": 0.2},
    }
    assert best["preprocess"]["size"] == REAL_SIZE
    assert best["labels"]["gender"] == {"0": "male", "1": "female"}


def test_init_carries_the_start_of_the_checkpoint_it_starts_from(finished_run, real_dataset):
    """A run started with --init descends from that checkpoint's face-pretrained start, not
    from a pretrained start of its own: its checkpoints record the source's `start`, also
    after a resume, which does not read the --init file again."""
    from utkface.models.face_backbones import FACE_WEIGHTS

    _, out, _ = finished_run
    model, meta = load_checkpoint(out / "best.pt")
    start = FACE_WEIGHTS["mobilefacenet"].provenance()
    source = out.parent / "with-start.pt"
    save_checkpoint(source, model, {**meta["model"], "start": start}, meta["preprocess"])
    tuned, config = out.parent / "tuned", small_config(epochs=1, init=str(source))

    def interrupt(step: int) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, real_dataset, tuned, subset=SUBSET, progress=False, on_step=interrupt)
    assert read_checkpoint(tuned / "last.pt")["model"]["start"] == start
    source.unlink()
    train(config, real_dataset, tuned, subset=SUBSET, progress=False, resume=True)
    for name in ("last.pt", "best.pt"):
        assert read_checkpoint(tuned / name)["model"]["start"] == start, name
    plain = out.parent / "plain"
    train(
        small_config(epochs=1, init=str(out / "best.pt")),
        real_dataset,
        plain,
        subset=SUBSET,
        progress=False,
    )
    assert "start" not in read_checkpoint(plain / "best.pt")["model"]


def test_best_checkpoint_reloads_to_identical_predictions(finished_run, real_dataset, tmp_path):
    config, out, result = finished_run
    model, meta = load_checkpoint(out / "best.pt")
    test = _split(real_dataset, "test", config)
    images, labels = real_dataset.images[test], real_dataset.labels(test)
    predictions = predict_arrays(model, meta["preprocess"], images, config.eval_batch_size)
    keys = {"age", "age_low", "age_high", "age_probs", "gender_prob", "race_prob"}
    assert set(predictions) == keys

    # The test metrics were computed by the in-memory model at the end of training.
    age = metrics.age_metrics(labels["age"], predictions["age"])
    gender = metrics.gender_metrics(labels["gender"], predictions["gender_prob"])
    assert age["mae"] == result["test"]["mae"]
    assert gender["accuracy"] == result["test"]["gender_acc"]

    # Saved again and reloaded: exactly the same numbers.
    save_checkpoint(tmp_path / "copy.pt", model, meta["model"], meta["preprocess"])
    again, again_meta = load_checkpoint(tmp_path / "copy.pt")
    repeated = predict_arrays(again, again_meta["preprocess"], images, config.eval_batch_size)
    for key, value in predictions.items():
        assert np.array_equal(value, repeated[key]), key


# ---------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize(
    "stop_after",
    [
        6,  # mid-epoch 2
        STEPS_PER_EPOCH,  # the last step of epoch 1, before its validation
        2 * STEPS_PER_EPOCH,  # the very last step, before the final validation
    ],
)
def test_resume_after_interruption_gives_the_same_weights(
    finished_run, real_dataset, tmp_path, stop_after
):
    config, full, _ = finished_run
    out = tmp_path / "interrupted"

    def interrupt(step: int) -> None:
        if step == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, real_dataset, out, subset=SUBSET, progress=False, on_step=interrupt)
    saved = read_checkpoint(out / "last.pt")["train_state"]
    assert saved["step"] == stop_after
    assert not (out / "final_metrics.json").exists()

    train(config, real_dataset, out, subset=SUBSET, progress=False, resume=True)
    _assert_same_weights(full / "last.pt", out / "last.pt")
    _assert_same_weights(full / "best.pt", out / "best.pt")
    averages = [read_checkpoint(run / "last.pt")["train_state"]["ema"] for run in (full, out)]
    assert averages[0]["updates"] == averages[1]["updates"] == 2 * STEPS_PER_EPOCH
    for key, value in averages[0]["weights"].items():
        assert torch.equal(value, averages[1]["weights"][key]), key
    full_rows, rows = _rows(full / "metrics.csv"), _rows(out / "metrics.csv")
    assert len(rows) == len(full_rows) == 2
    for row, full_row in zip(rows, full_rows):
        # The interrupted epoch's row still averages the loss over all of its steps.
        for key in ("epoch", "step", "lr", "train_loss", "val_mae", "val_score", "val_ema_score"):
            assert row[key] == full_row[key], key
    assert _rows(out / "fairness.csv") == _rows(full / "fairness.csv")  # no epoch twice
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["test"] == json.loads((full / "final_metrics.json").read_text())["test"]


@pytest.mark.parametrize("presses, saved_step", [(1, 6), (2, STEPS_PER_EPOCH)])
def test_ctrl_c_in_the_middle_of_a_step(
    finished_run, real_dataset, tmp_path, monkeypatch, capsys, presses, saved_step
):
    """One Ctrl-C during step 6 lets that step finish, then saves it; a second one stops at
    once and keeps the end-of-epoch `last.pt`. Either way, resume ends at the full run's weights."""
    config, full, _ = finished_run
    out = tmp_path / "ctrl-c"
    original, calls = train_module.multitask_loss, []
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started in the background

    def loss_then_sigint(*args, **kwargs):  # the loss is computed before backward and AdamW
        calls.append(1)
        if len(calls) == 6:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "multitask_loss", loss_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        train(config, real_dataset, out, subset=SUBSET, progress=False)
    assert read_checkpoint(out / "last.pt")["train_state"]["step"] == saved_step
    printed = capsys.readouterr().out
    assert ("stopped at once" if presses == 2 else "interrupted: saved") in printed
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back

    monkeypatch.setattr(train_module, "multitask_loss", original)
    train(config, real_dataset, out, subset=SUBSET, progress=False, resume=True)
    _assert_same_weights(full / "last.pt", out / "last.pt")


def test_time_budget_computes_a_finite_schedule(real_dataset, tmp_path, capsys):
    # A 3-second budget: far less than even the fixed allowance for the test pass, so the run
    # stops soon after the speed is measured; `epochs` is ignored.
    config = small_config(time_budget=0.05, epochs=1000)
    result = train(
        config, real_dataset, tmp_path / "budget", subset=SUBSET, progress=False, report_test=False
    )
    state = read_checkpoint(tmp_path / "budget" / "last.pt")["train_state"]
    assert isinstance(state["total_steps"], int)
    assert 0 < state["total_steps"] == state["step"] < 1000 * STEPS_PER_EPOCH
    assert "test" not in result  # report_test=False leaves the test split alone
    assert "test" not in json.loads((tmp_path / "budget" / "final_metrics.json").read_text())
    assert len(_rows(tmp_path / "budget" / "metrics.csv")) == state["epoch"]
    assert "time budget 0.05 min at" in capsys.readouterr().out


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_leaves_the_first_steps_out_of_the_speed(capsys):
    # A process's first steps load kernels and choose algorithms (25 s on a GPU). Here each of
    # the first two takes 30 s, the twelve after them 0.5 s each (16 images: 32 img/s).
    clock = FakeClock()
    steps = StepClock(clock=clock)
    for seconds in [30, 30] + [0.5] * MEASURED_STEPS:
        clock.now += seconds
        steps.tick(16)
    assert (steps.steps, steps.images, steps.seconds, steps.rate) == (12, 192, 6.0, 32.0)
    # A 10-minute budget, 96 val and 96 test images (1 s each at a third of a step's cost per
    # image), 100 steps an epoch: 582 s planned - 66 s spent - 11 s of test = 505 s left, at
    # 0.5 s a step + 1 s of validation / 100 steps = 0.51 s: 990 steps more after the 14 done.
    config = small_config(time_budget=10, batch_size=16)
    splits = {"train": range(1600), "val": range(96), "test": range(96)}
    budget = TimeBudget(config, 0.0, splits, 1, 100, Cluster(torch.device("cpu")), clock=clock)
    assert budget.first_fit(14, steps, epoch_done=False) == 14 + 990
    assert "time budget 10 min at 32 img/s: 1004 steps" in capsys.readouterr().out
    # Timed from the start, the same steps would have planned for 4.7 s a step: 117 steps.


def test_threads_follow_the_free_cores_unless_given(real_dataset, tmp_path, monkeypatch):
    looks = []

    class Recorder:  # CoreShare's interface, counting the looks
        def __init__(self, set_threads, most):
            looks.append(most)

        def check(self):
            looks.append("check")

    monkeypatch.setattr(train_module, "CoreShare", Recorder)
    run = dict(subset=SUBSET, progress=False, report_test=False)
    train(small_config(threads=0, epochs=1), real_dataset, tmp_path / "auto", **run)
    assert looks == [torch.get_num_threads()] + ["check"] * STEPS_PER_EPOCH
    looks.clear()
    train(small_config(threads=1, epochs=1), real_dataset, tmp_path / "given", **run)
    assert looks == []  # --threads is the user's: kept as given


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_precision_sets_the_dtype_of_the_training_forward_pass(
    real_dataset, tmp_path, monkeypatch, precision, dtype
):
    seen, original = [], train_module.multitask_loss

    def record(raw, *args):
        seen.append({value.dtype for value in raw.values()})
        return original(raw, *args)

    monkeypatch.setattr(train_module, "multitask_loss", record)
    config = small_config(precision=precision, epochs=1)
    train(config, real_dataset, tmp_path / precision, subset=SUBSET, progress=False)
    assert len(seen) == STEPS_PER_EPOCH and all(dtypes == {dtype} for dtypes in seen)
    rows = _rows(tmp_path / precision / "metrics.csv")
    assert np.isfinite(float(rows[0]["train_loss"]))


# ---------------------------------------------------------------------------------------------
# the seed preset: two CNNs at 200 px


def _faces_by_split(folder: Path, make_faces, face_names, wanted: dict, size: int) -> Path:
    """Generated faces under UTKFace names, `wanted[split]` of each split."""
    wanted, names = dict(wanted), []
    for name in face_names(40 * sum(wanted.values())):
        split = split_of(name)
        if wanted[split]:
            wanted[split] -= 1
            names.append(name)
    assert not any(wanted.values())
    make_faces(folder, names, size=size)
    return folder


@pytest.fixture(scope="module")
def seed_faces(tmp_path_factory, make_faces, face_names):
    """Generated 200 px faces, chosen so every split has some (12 train, 3 val, 3 test)."""
    folder = tmp_path_factory.mktemp("seed-faces")
    return _faces_by_split(folder, make_faces, face_names, {"train": 12, "val": 3, "test": 3}, 200)


def test_seed_preset_trains_both_cnns_and_resumes(seed_faces, tmp_path):
    # One full batch of the 12 train faces a step, so each epoch's loss is on the same faces.
    config = resolve_config(model="seed", epochs=4, batch_size=12, threads=1, device="cpu")
    assert config.size == 200
    out, cache = tmp_path / "seed", tmp_path / "cache"
    seed_faces = _labels_in_pixels(seed_faces, tmp_path / "faces")

    def interrupt(step: int) -> None:
        raise KeyboardInterrupt  # after the gender CNN's first step

    with pytest.raises(KeyboardInterrupt):
        train(config, seed_faces, out, cache=cache, progress=False, on_step=interrupt)
    assert (out / "gender_model" / "last.pt").is_file()
    assert not (out / "age_model").exists()
    assert load_run_config(out) == config  # what `utkface train --resume` reads

    result = train(config, seed_faces, out, cache=cache, progress=False, resume=True)
    assert set(result) == {"gender_model", "age_model"}
    images = np.stack([np.asarray(_load(path)) for path in sorted(seed_faces.iterdir())[:3]])
    expected_keys = {"gender_model": {"gender_prob"}, "age_model": {"age"}}
    for folder, keys in expected_keys.items():
        run = out / folder
        assert RUN_FILES <= {path.name for path in run.iterdir()}
        assert "test" in result[folder]
        state = read_checkpoint(run / "last.pt")["train_state"]
        assert state["step"] == 4  # 12 train images / batch 12, four epochs
        losses = [float(row["train_loss"]) for row in _rows(run / "metrics.csv")]
        assert len(losses) == 4 and losses[3] < losses[0], (folder, losses)  # it learns
        model, meta = load_checkpoint(run / "best.pt")
        assert meta["preprocess"].size == 200 and meta["preprocess"].mean == (0.0, 0.0, 0.0)
        predictions = predict_arrays(model, meta["preprocess"], images)
        assert set(predictions) == keys and all(len(v) == 3 for v in predictions.values())


def _labels_in_pixels(source: Path, folder: Path) -> Path:
    """Copies of the faces whose top half shows their labels, so a few steps can learn them:
    gender as its colour (red female, blue male), age as its brightness."""
    folder.mkdir()
    for path in sorted(source.iterdir()):
        age, gender = (int(part) for part in path.name.split("_")[:2])
        pixels = np.array(Image.open(path))
        pixels[: len(pixels) // 2] = (20 + 2 * age, 0, 0) if gender else (0, 0, 20 + 2 * age)
        Image.fromarray(pixels).save(folder / path.name, quality=95)
    return folder


def _load(path: Path):
    from utkface.runtime.images import load_rgb

    return load_rgb(path, 200)


# ---------------------------------------------------------------------------------------------
# command line


def _cli_args(real_data: Path, real_dataset, out: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(real_data),
        "--cache",
        str(real_dataset.cache_dir.parent),  # the session's prepared cache: no new prepare
        "--size",
        str(REAL_SIZE),
        "--subset",
        str(SUBSET),
        "--batch-size",
        str(BATCH),
        "--epochs",
        "1",
        "--no-pretrained",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def test_cli_train_interrupt_and_resume(real_data, real_dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli"
    original_step, calls = Trainer._step, []

    def step_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_step(self, *args)

    monkeypatch.setattr(Trainer, "_step", step_then_interrupt)
    assert main(_cli_args(real_data, real_dataset, out)) == 130
    assert "continue with --resume" in capsys.readouterr().out
    assert read_checkpoint(out / "last.pt")["train_state"]["step"] == 2
    monkeypatch.setattr(Trainer, "_step", original_step)

    resume = ["train", "--resume", str(out), "--data", str(real_data)]
    resume += ["--cache", str(real_dataset.cache_dir.parent)]
    # Resuming on another slice of the data would silently train a different run.
    assert main(resume) == 2
    assert "subset" in capsys.readouterr().err

    assert main(resume + ["--subset", str(SUBSET)]) == 0
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["step"] == state["total_steps"] == STEPS_PER_EPOCH
    assert len(_rows(out / "metrics.csv")) == 1
    assert "test" in json.loads((out / "final_metrics.json").read_text())
    assert load_run_config(out).size == REAL_SIZE


def test_cli_train_no_test_leaves_the_test_split_unscored(real_data, real_dataset, tmp_path):
    out = tmp_path / "tuning"
    assert main(_cli_args(real_data, real_dataset, out) + ["--no-test"]) == 0
    final = json.loads((out / "final_metrics.json").read_text())
    assert "test" not in final and final["val"]["val_mae"] > 0


# ---------------------------------------------------------------------------------------------
# DDP


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The README's multi-node command, run as two "nodes" of one process each on this machine.
NODE_FACES = {"train": 64, "val": 8, "test": 8}  # 64 = 2 ranks x 2 steps x batch 16
NODE_STEPS = 2  # per epoch


def _node_args(faces: Path, cache: Path, out: Path) -> list[str]:
    return [
        *("train", "--data", str(faces), "--cache", str(cache), "--out", str(out)),
        *("--model", "mobilenet_v3_small", "--no-pretrained", "--size", "32"),
        *("--batch-size", str(BATCH), "--epochs", "2", "--threads", "1", "--device", "cpu"),
    ]


def _two_nodes(args: list[str], **env: str) -> tuple[list[int], str]:
    """`torchrun --nnodes 2 --node-rank K ... -m utkface ARGS` for K = 0, 1 at once (c10d
    rendezvous on a free local port, gloo); returns their exit codes."""
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", **env)
    nodes = []
    for node_rank in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
        command += ["--nproc-per-node", "1", "--node-rank", str(node_rank)]
        command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test"]
        command += ["-m", "utkface", *args]
        nodes.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    return [node.returncode for node in nodes], "\n".join(outputs)[-6000:]


def _traces(run: Path) -> list[dict]:
    return [json.loads((run / "trace" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]


def _parameters_digest(checkpoint: Path, names: list[str]) -> str:
    state = read_checkpoint(checkpoint)["state_dict"]
    return parameters_digest({name: state[name] for name in names})


def test_two_nodes_train_in_step_and_resume(tmp_path, make_faces, face_names):
    faces = _faces_by_split(tmp_path / "faces", make_faces, face_names, NODE_FACES, 48)
    cache, full, part = tmp_path / "cache", tmp_path / "full", tmp_path / "part"
    trace = {TRACE_ENV: "1"}

    codes, output = _two_nodes(_node_args(faces, cache, full), **trace)
    assert codes == [0, 0], output
    assert RUN_FILES <= {path.name for path in full.iterdir()}
    ranks = _traces(full)
    assert {(t["rank"], t["node"], t["world"]) for t in ranks} == {(0, 0, 2), (1, 1, 2)}

    # The data was prepared once: rank 1 opened the cache only after rank 0 had built it.
    assert len(list(cache.iterdir())) == 1
    first, second = (t["prepare"][0] for t in sorted(ranks, key=lambda t: t["rank"]))
    assert second["started"] >= first["finished"]

    # Identical weights on both ranks at the end, and those are the weights of last.pt.
    names = ranks[0]["parameters"]
    assert ranks[0]["parameters_digest"] == ranks[1]["parameters_digest"]
    assert ranks[0]["parameters_digest"] == _parameters_digest(full / "last.pt", names)

    # Each epoch the two ranks' shards are disjoint and cover the train split; shards change
    # from epoch to epoch; the ranks draw different random numbers at every step.
    train_rows = set(prepare(faces, size=32, out=cache).indices("train").tolist())
    assert len(train_rows) == NODE_FACES["train"]
    shards = {
        (t["rank"], epoch): {row for s in t["steps"] if s["epoch"] == epoch for row in s["rows"]}
        for t in ranks
        for epoch in (1, 2)
    }
    for epoch in (1, 2):
        assert not shards[0, epoch] & shards[1, epoch]
        assert shards[0, epoch] | shards[1, epoch] == train_rows
    assert shards[0, 1] != shards[0, 2]
    seeds = [[s["seed"] for s in t["steps"]] for t in ranks]
    assert len(seeds[0]) == len(seeds[1]) == 2 * NODE_STEPS
    assert len(set(seeds[0]) | set(seeds[1])) == 4 * NODE_STEPS

    # Stopped after epoch 1 (as by Ctrl-C on every node), then resumed: the same run.
    codes, output = _two_nodes(_node_args(faces, cache, part), **trace, **{STOP_ENV: "2"})
    assert codes != [0, 0], output
    saved = read_checkpoint(part / "last.pt")
    assert (saved["epoch"], saved["train_state"]["step"]) == (1, NODE_STEPS)
    assert len(_rows(part / "metrics.csv")) == 1
    resume = ["train", "--resume", str(part), "--data", str(faces), "--cache", str(cache)]
    codes, output = _two_nodes(resume, **trace)
    assert codes == [0, 0], output
    _assert_same_weights(full / "last.pt", part / "last.pt")
    _assert_same_weights(full / "best.pt", part / "best.pt")
    for resumed, uninterrupted in zip(_traces(part), ranks):
        assert resumed["steps"] == uninterrupted["steps"]
        assert resumed["parameters_digest"] == uninterrupted["parameters_digest"]
