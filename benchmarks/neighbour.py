"""Speed beside a busy neighbour (issue 22): training and prediction, idle and with another
process keeping one core busy, as the code ran before the change and after it.

    flock /tmp/cpu.lock python -m benchmarks.neighbour [--data UTKFace.tar.gz] [--seconds 10]

Every figure comes from a fresh process (OpenMP reads its settings once, when torch loads it):
- `train`: `train.train` itself (the default model at 112 px on the prepared UTKFace cache,
  `$UTKFACE_CACHE`, of `--data`, default `$UTKFACE_DATA`), images/s over the steps after the
  first two, stopped from `on_step`.
  before: `--threads` = the core count (what `setup_distributed` chose); after: threads left
  to `cpu_threads.CoreShare`. OpenMP's default wait policy in both (the command line leaves
  training's alone: PASSIVE cost it a third of its idle speed).
- `torch`: the released model's torch backend (`load_backend`), faces/s in batches of
  `--batch` crops from the cache. before: OpenMP's default wait policy; after: PASSIVE.
- `onnx`: the released ONNX export. before: a session with ONNX Runtime's defaults (idle
  threads spin); after: `OnnxBackend` (they sleep).
The neighbour is a child spinning one core (`while True: pass`), killed after each figure;
the kernel kills every child if this process dies first (no orphans).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from utkface.runtime.cpu_threads import OPENMP_PREFIXES, others_busy, parse_stat, passive_openmp
from utkface.runtime.lifeline import Lifeline

WORKLOADS = ("train", "torch", "onnx")
MODES = ("before", "after")
WARMUP_STEPS = 2  # untimed: kernels are chosen, caches filled
SIZE = 112  # the default model's and the released model's input side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="UTKFace source of the 112 px cache (default: its own)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure")
    parser.add_argument("--batch", type=int, default=32, help="images per step / call")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.data, args.seconds, args.batch)))
        return
    print(f"{os.cpu_count()} cores; {args.seconds:g} s per figure, batch {args.batch}")
    print(
        f"{'workload':9s} {'code':7s} {'idle':>8s} {'busy':>8s} {'kept':>6s}  threads idle/busy"
        "  others' cores idle/busy"
    )
    for workload in args.only:
        for mode in MODES:
            idle = run_child(workload, mode, args, neighbour=False)
            busy = run_child(workload, mode, args, neighbour=True)
            print(
                f"{workload:9s} {mode:7s} {idle['rate']:8.1f} {busy['rate']:8.1f} "
                f"{busy['rate'] / idle['rate']:6.0%}  {idle['threads']:>7}/{busy['threads']:<9}"
                f"  {idle['others']:.2f}/{busy['others']:.2f}",
                flush=True,
            )


def run_child(workload: str, mode: str, args, neighbour: bool) -> dict:
    """One figure from a fresh process, with a spinning neighbour when `neighbour`; `others`:
    the cores processes other than these kept busy meanwhile (a disturbed figure shows it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(OPENMP_PREFIXES)}
    if mode == "after" and workload == "torch":
        passive_openmp(env)  # as the command line sets it for every command but train
    command = [sys.executable, "-m", "benchmarks.neighbour", "--child", workload, mode]
    command += ["--seconds", str(args.seconds), "--batch", str(args.batch)]
    command += ["--data", args.data] if args.data else []
    spinner, start = None, _cpu_sample()
    if neighbour:
        spin = [sys.executable, "-c", "while True: pass"]
        spinner = subprocess.Popen(spin, preexec_fn=Lifeline.here().hold)
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, preexec_fn=Lifeline.here().hold
        )
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if done.returncode:
        raise RuntimeError(f"{workload} {mode} failed:\n{done.stderr[-3000:]}")
    figure = json.loads(done.stdout.strip().splitlines()[-1])
    end = _cpu_sample()
    ticks = (end[1] - start[1]) * os.sysconf("SC_CLK_TCK")  # the children's, waited for
    cores = len(os.sched_getaffinity(0))
    return {**figure, "others": others_busy(start[0], end[0], round(ticks), cores)}


def _cpu_sample():
    """The cores' ticks (`/proc/stat`) and the CPU seconds of this process's ended children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    stat = parse_stat(Path("/proc/stat").read_text(), os.sched_getaffinity(0))
    return stat, usage.ru_utime + usage.ru_stime


def measure(workload: str, mode: str, data: str | None, seconds: float, batch: int) -> dict:
    """Images per second of `workload` as the code ran in `mode`, and torch's threads at the
    end (ONNX Runtime's are its own)."""
    import torch  # only in the child: the parent must not load OpenMP

    from utkface.data.dataset import default_source, prepare

    dataset = prepare(data or default_source(), size=SIZE)  # opens the cache
    if workload == "train":
        rate = train_rate(dataset, mode, seconds, batch)
    else:
        images = dataset.images[dataset.indices("test")[:batch]]
        rate = predict_rate(predictor(workload, mode), images, seconds)
    return {"rate": rate, "threads": torch.get_num_threads()}


def train_rate(dataset, mode: str, seconds: float, batch: int) -> float:
    from benchmarks.steps import step_marks
    from utkface.training.config import resolve_config

    threads = os.cpu_count() if mode == "before" else 0  # 0: CoreShare follows the free cores
    config = resolve_config(
        size=SIZE, batch_size=batch, pretrained=False, device="cpu", threads=threads, epochs=1
    )

    def enough(marks: list[float]) -> bool:
        timed = len(marks) - 1 - WARMUP_STEPS
        return timed >= 2 and marks[-1] - marks[WARMUP_STEPS] >= seconds

    marks = step_marks(config, dataset, enough)
    timed = len(marks) - 1 - WARMUP_STEPS
    return timed * batch / (marks[-1] - marks[WARMUP_STEPS])


def predictor(workload: str, mode: str):
    """A callable: uint8 (B, S, S, 3) crops -> predictions, for `workload` as run in `mode`."""
    from utkface.runtime import released
    from utkface.runtime.backends import load_backend

    if workload == "onnx" and mode == "before":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(released.path("onnx")))  # its defaults
        return lambda images: session.run(None, {"images": images})
    return load_backend(released.path(workload), workload, device="cpu")


def predict_rate(backend, images, seconds: float) -> float:
    for _ in range(WARMUP_STEPS):
        backend(images)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        backend(images)
        calls += 1
    return calls * len(images) / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
