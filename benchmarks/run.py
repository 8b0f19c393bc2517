"""The seed's architecture vs ours, speed and accuracy, side by side in one run (issue 7).

    python -m benchmarks.run [--quick] [--out DIR] [--only SECTION ...] [--render RESULTS_JSON]

Runs every step of `benchmarks/steps.py` in its own process, in this order: ingest (`prepare`
cold and warm), the peak of a large convolution, training throughput of the seed gender CNN,
seed age CNN and our default model, time to 87% validation gender accuracy for the seed gender
CNN and our model, and inference with PyTorch and ONNX Runtime. It prints a table and writes
into `--out` (default `runs/benchmarks/<time>[-quick]`): `results.json` (every figure with its
machine, command, load and peak memory), `results.md` (ready to paste into BENCHMARKS.md),
`logs/` (each step's output) and `runs/` (the time-to-accuracy training runs).

`--quick` uses small budgets and few iterations: 7.0 minutes on this project's 2-core machine
(with other processes busy on up to one core), the first build of the 200 px dataset cache
that the seed CNN trains from (16 s, 2.5 GB in the default cache folder) included. The full run
took 34.5 minutes on a quiet machine, most of it the two 15-minute time-to-accuracy budgets.

This process imports neither torch nor numpy, so that a step's peak resident memory, read with
`os.wait4`, is its own and not inherited from a large parent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("ingest", "peak", "train", "accuracy", "inference")
SPEED_MODELS = ("seed_gender", "seed_age", "mobilenet_v2")
ACCURACY_MODELS = ("seed_gender", "mobilenet_v2")
INFERENCE_MODELS = ("mobilenet_v2", "seed_gender", "seed_age")
BUSY_CORES = 0.25  # other processes' CPU above this (in cores) marks a figure as disturbed

# Sizes of each mode. Time-to-accuracy trains on a `subset` share of every split (val too) so
# that the seed CNN's epochs are short enough to be validated several times in the budget.
MODES = {
    "quick": {
        "peak": {"batch": 4, "repeats": 5},
        "train": {"steps": 3, "warmup": 1},
        "accuracy": {"budget": 1.0, "subset": 0.05},
        "inference": {"seconds": 1.0, "batch": 64},
    },
    "full": {
        "peak": {"batch": 16, "repeats": 20},
        "train": {"steps": 10, "warmup": 2},
        "accuracy": {"budget": 15.0, "subset": 0.25},
        "inference": {"seconds": 5.0, "batch": 64},
    },
}


@dataclass
class Step:
    section: str
    name: str  # file name of its result and log
    args: list[str] = field(default_factory=list)


def plan(mode: str, out: Path, cache: Path, sections) -> list[Step]:
    sizes = MODES[mode]

    def options(values: dict) -> list[str]:
        return [text for key, value in values.items() for text in (f"--{key}", str(value))]

    steps = []
    if "ingest" in sections:
        for phase in ("cold", "warm"):
            args = ["ingest", "--phase", phase, "--cache", str(cache)]
            steps.append(Step("ingest", f"ingest-{phase}", args))
    if "peak" in sections or "train" in sections:  # training's GFLOP/s is read against it
        steps.append(Step("peak", "peak-conv", ["peak_conv", *options(sizes["peak"])]))
    if "train" in sections:
        for model in SPEED_MODELS:
            args = ["train_speed", "--model", model, *options(sizes["train"])]
            steps.append(Step("train", f"train-{model}", args))
    if "accuracy" in sections:
        for model in ACCURACY_MODELS:
            run_dir = out / "runs" / f"accuracy-{model}"
            args = ["time_to_accuracy", "--model", model, "--run-dir", str(run_dir)]
            steps.append(Step("accuracy", f"accuracy-{model}", args + options(sizes["accuracy"])))
    if "inference" in sections:
        for model in INFERENCE_MODELS:
            for backend in ("torch", "onnx"):
                args = ["inference", "--model", model, "--backend", backend]
                args += options(sizes["inference"])
                steps.append(Step("inference", f"inference-{model}-{backend}", args))
    return steps


def cpu_ticks() -> tuple[float, float]:
    """(busy, steal) seconds of all CPUs since boot, from /proc/stat (0, 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    hertz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hertz, steal / hertz


def run_step(step: Step, out: Path, threads: int, env: dict) -> dict:
    """Run one step in a fresh process; attach its wall time, peak RSS, CPU and load."""
    result = out / "steps" / f"{step.name}.json"
    command = [sys.executable, "-m", "benchmarks.steps", *step.args, "--threads", str(threads)]
    command += ["--result", str(result)]
    result.unlink(missing_ok=True)  # never read a previous run's figures
    load_start, (busy_start, steal_start) = os.getloadavg(), cpu_ticks()
    start = time.perf_counter()
    with open(out / "logs" / f"{step.name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        # wait4: this child's own rusage (its forked decode workers included, as reaped).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    busy, steal = (end - begin for end, begin in zip(cpu_ticks(), (busy_start, steal_start)))
    own = usage.ru_utime + usage.ru_stime
    measured = {
        "step": step.name,
        "command": shlex.join(["python", "-m", "benchmarks.steps", *command[3:]]),
        "exit_code": process.returncode,
        "wall_s": wall,
        "cpu_s": own,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "others_cores": max(0.0, busy - own) / wall,  # other processes' CPU during the step
        "steal_cores": steal / wall,  # CPU the hypervisor gave to other machines
    }
    if process.returncode != 0 or not result.is_file():
        tail = (out / "logs" / f"{step.name}.log").read_text().strip().splitlines()[-3:]
        failed = {"section": step.section, "system": step.name, "metric": "failed", "value": None}
        failed.update(text="failed", notes=" / ".join(tail))
        return {"machine": None, "rows": [{**failed, **measured}]}
    data = json.loads(result.read_text())
    data["rows"] = [{**line, **measured} for line in data["rows"]]
    return data


def code_version() -> str | None:
    """The checkout's commit, marked when the measured code has uncommitted changes."""
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True)
        changed = subprocess.run(
            git + ["status", "--porcelain", "--", "src", "benchmarks"], capture_output=True
        )
    except OSError:
        return None
    if commit.returncode != 0:
        return None
    dirty = " with uncommitted changes" if changed.stdout.strip() else ""
    return commit.stdout.decode().strip() + dirty


def derive(rows: list[dict]) -> dict:
    """Training GFLOP/s as a share of the measured convolution peak, and whether the
    time-to-accuracy runs validated on the very same files."""
    peak = next((r["value"] for r in rows if r["section"] == "peak" and r["value"]), None)
    for line in rows:
        if line["section"] == "training throughput" and line.get("gflops") and peak:
            line["share_of_peak"] = line["gflops"] / peak
            line["text"] += f" = {line['share_of_peak']:.0%} of peak"
    digests = {r["val_files_sha256"] for r in rows if r.get("val_files_sha256")}
    return {"peak_gflops": peak, "accuracy_same_val_files": len(digests) == 1 if digests else None}


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    m, run, sizes = report["machine"], report["run"], report["run"]["sizes"]
    lines = [
        f"Measured {run['date']} on {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch {m['torch']} with {m['torch_threads']} threads, onnxruntime {m['onnxruntime']}, "
        f"Python {m['python']}.",
        f"Command: `{run['command']}` ({run['mode']} run, {run['minutes']:.1f} min in all)"
        + (f", code at commit {run['commit']}." if run.get("commit") else "."),
        "",
        "| What | System | Result | Details | Load 1 min (start → end) | Others' CPU, cores "
        "| Peak RSS, MB | Wall, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in report["rows"]:
        busy = line["others_cores"]
        values = (
            line["section"],
            line["system"],
            line["text"],
            line["notes"],
            f"{line['load_start'][0]:.2f} → {line['load_end'][0]:.2f}",
            f"{busy:.2f}{' ⚠' if busy > BUSY_CORES else ''}",
            f"{line['peak_rss_mb']:,.0f}",
            f"{line['wall_s']:.0f}",
        )
        lines.append("| " + " | ".join(cell(value) for value in values) + " |")
    disturbed = sorted({r["step"] for r in report["rows"] if r["others_cores"] > BUSY_CORES})
    same = report["derived"]["accuracy_same_val_files"]
    train, accuracy = sizes["train"], sizes["accuracy"]
    lines += [
        "",
        "How to read it:",
        "",
        "- Load is the 1-minute load average when the step started and ended. It includes this "
        "benchmark's own threads (a 2-thread step alone drives it toward 2), so it says little "
        "by itself. Others' CPU is the CPU time of every other process on the machine during "
        "the step (all CPUs' busy time in /proc/stat minus the step's own), in cores: "
        f"⚠ marks steps above {BUSY_CORES}, whose speed is lower than a quiet machine gives. "
        f"Disturbed steps: {', '.join(disturbed) if disturbed else 'none'}.",
        "- Peak RSS: the largest resident set of the step's process or any child it reaped "
        "(`os.wait4`). Every step is a fresh Python process, so this includes the interpreter "
        "and the imported libraries (the warm ingest row is close to that floor), and pages of "
        "the memory-mapped dataset cache that the step read.",
        "- Ingest: `data.prepare` of the whole archive at 128 px into a fresh temporary cache "
        "(cold: read, parse, decode with all cores, split, write; the archive may sit in the OS "
        "page cache), then a second process that finds the cache (warm).",
        "- Peak: the best of repeated calls of one large convolution, forward only; the "
        "training GFLOP/s are read against it.",
        f"- Training throughput: `train.train` itself on random pixels, stopped from its "
        f"`on_step` hook; the median of {train['steps']} step times after {train['warmup']} "
        "warm-up steps. One step = index the batch, preprocess, augment (when the model's "
        "preset does: ours yes, the seed preset no), forward, `multitask_loss`, backward, AdamW "
        "(+ reading the loss). FLOPs: `FlopCounterMode` on one forward + backward (matmuls and "
        "convolutions only, depthwise backward corrected, see benchmarks/steps.py).",
        f"- Time to 87%: `train.train` with `time_budget={accuracy['budget']:g}` min and "
        f"`subset={accuracy['subset']:g}` (a seeded share of train AND val), each model with its "
        "own preset (seed: 200 px, batch 32, constant lr 1e-3, no augmentation, from scratch; "
        "ours: the default config, ImageNet-pretrained, augmented, cosine schedule over the "
        "budget). "
        "Validation runs at epoch ends only; the time is `elapsed` in metrics.csv at the first "
        "epoch at or above 87% (training time since the first step, earlier validations "
        "included, data preparation and model building excluded). Both runs validated on the "
        f"same files: {'yes' if same else 'no' if same is not None else 'n/a'} "
        "(sha256 of the file list in results.json).",
        "- Inference: the backend `Predictor` runs (`models.backends.TorchBackend`, "
        "`runtime.onnx_backend.OnnxBackend`) on random uint8 crops of the model's size: "
        "preprocess + forward + decode; no file decoding or face detection (see "
        "benchmarks/predict_latency.py). Median of repeated calls after 3 warm-up calls.",
    ]
    return "\n".join(lines) + "\n"


def text_table(rows: list[dict]) -> str:
    out = []
    for line in rows:
        out.append(
            f"{line['section'][:22]:22s} {line['system'][:48]:48s} {line['text']}"
            f"  [load {line['load_start'][0]:.2f}, others {line['others_cores']:.2f} cores, "
            f"{line['peak_rss_mb']:,.0f} MB]"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small budgets, few iterations")
    parser.add_argument("--out", type=Path, help="default: runs/benchmarks/<time>[-quick]")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: rewrite the results.md beside an earlier results.json",
    )
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        args.render.with_name("results.md").write_text(markdown(report))
        print(f"wrote {args.render.with_name('results.md')}")
        return
    mode = "quick" if args.quick else "full"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or REPO / "runs" / "benchmarks" / f"{stamp}-{mode}").resolve()
    for folder in ("steps", "logs", "runs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    shared_weights = REPO.parent / "shared" / "torch"  # the team's offline ImageNet weights
    if "TORCH_HOME" not in env and shared_weights.is_dir():
        env["TORCH_HOME"] = str(shared_weights)

    started, date = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M %Z")
    commit = code_version()  # before the run: the code measured, even if it changes meanwhile
    rows, machine = [], None
    with tempfile.TemporaryDirectory(prefix="utkface-bench-cache-") as cache:
        steps = plan(mode, out, Path(cache), args.only or SECTIONS)
        for index, step in enumerate(steps, 1):
            print(f"[{index}/{len(steps)}] {step.name} ...", end=" ", flush=True)
            data = run_step(step, out, args.threads, env)
            machine = machine or data["machine"]
            rows += data["rows"]
            last = data["rows"][-1]
            print(f"{last['text']} ({last['wall_s']:.0f} s, {last['peak_rss_mb']:,.0f} MB)")
    derived = derive(rows)
    command = "python -m benchmarks.run" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    report = {
        "run": {
            "date": date,
            "mode": mode,
            "command": command,
            "minutes": (time.perf_counter() - started) / 60,
            "sizes": MODES[mode],
            "host": platform.node(),
            "commit": commit,
            "torch_home": env.get("TORCH_HOME"),
        },
        "machine": machine or {},
        "derived": derived,
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    if machine:
        (out / "results.md").write_text(markdown(report))
    print()
    print(text_table(rows))
    print(f"\n{report['run']['minutes']:.1f} min; wrote {out / 'results.json'}")
    print(f"and {out / 'results.md'}" if machine else "(no step succeeded: no Markdown)")


if __name__ == "__main__":
    main()
