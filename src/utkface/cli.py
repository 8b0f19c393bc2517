"""Command line: `utkface <command> ...`. Parsing only; the work is done by library functions.

Each command has an `add_<command>_parser(subparsers)` that registers its arguments and sets
`func`, a function taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import sys


def add_prepare_parser(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="scan, validate, split and cache UTKFace")
    add_data_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="cached image side in pixels")
    parser.add_argument("--out", help="cache folder (default: $UTKFACE_CACHE or ~/.cache/utkface)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")

    def run(args) -> int:
        from utkface.multisource import parse_sources, prepare_sources

        dataset = prepare_sources(
            parse_sources(args.data, args.labels, args.faces),
            size=args.size,
            out=args.out,
            seed=args.seed,
            workers=args.workers,
            progress=True,
        )
        print(dataset.summary())
        return 0

    parser.set_defaults(func=run)


def add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a checkpoint: metrics, breakdowns, calibration, plots, report"
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file from `train`")
    add_data_arguments(parser)
    parser.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default=None,
        help="a split of the prepared --data, or 'all' to scan every file of --data without "
        "preparing it (default: test without --data, all with --data)",
    )
    parser.add_argument("--out", help="report folder (default: beside the checkpoint)")
    parser.add_argument("--tta", action="store_true", help="average with the mirrored image")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", help="cpu, cuda, mps (default: cuda if available)")
    parser.add_argument("--cache", help="prepare cache folder (default: $UTKFACE_CACHE)")
    parser.add_argument("--split-seed", type=int, help="split seed (default: the checkpoint's)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")

    def run(args) -> int:
        from pathlib import Path

        from utkface.evaluate import evaluate
        from utkface.multisource import parse_sources, unique_names
        from utkface.report import summary

        sources = parse_sources(args.data, args.labels, args.faces) if args.data else None
        name = args.split or ("all" if args.data else "test")
        if args.data and name == "all":
            name = "+".join(unique_names(sources))
        out = args.out or Path(args.checkpoint).parent / f"eval-{name}"
        report = evaluate(
            args.checkpoint,
            data=sources,
            split=args.split,
            out=out,
            tta=args.tta,
            batch_size=args.batch_size,
            device=args.device,
            cache=args.cache,
            split_seed=args.split_seed,
            workers=args.workers,
            make_plots=not args.no_plots,
            progress=True,
        )
        print(summary(report))
        print(f"written to {out}")
        return 0

    parser.set_defaults(func=run)


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX, checked for parity with PyTorch"
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint file from `train`")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    parser.add_argument("--out", help="output file (default: the checkpoint with .onnx)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--images",
        help="folder/.tar.gz/.zip of images for the parity check "
        "(default: the shared UTKFace archive, $UTKFACE_DATA)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")

    def run(args) -> int:
        from utkface.export import DEFAULT_OPSET, export_onnx

        export_onnx(
            args.checkpoint,
            args.out,
            opset=args.opset or DEFAULT_OPSET,
            check=not args.no_check,
            images=args.images,
        )
        return 0

    parser.set_defaults(func=run)


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="web demo and JSON API for a checkpoint")
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) or export (.onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--backend", choices=("torch", "onnx"), help="default: onnx for an .onnx file, else torch"
    )
    parser.add_argument("--faces", choices=("auto", "detect", "aligned"), default="auto")
    parser.add_argument("--max-mb", type=float, default=10.0, help="largest upload in MB")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image")

    def run(args) -> int:
        from utkface.serve import run as serve

        backend = args.backend or ("onnx" if args.checkpoint.endswith(".onnx") else "torch")
        serve(
            args.checkpoint,
            host=args.host,
            port=args.port,
            backend=backend,
            faces=args.faces,
            max_bytes=int(args.max_mb * 2**20),
            max_pixels=int(args.max_megapixels * 1e6),
        )
        return 0

    parser.set_defaults(func=run)


def add_train_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model (prepares the data when needed)")
    add_data_arguments(parser)
    parser.add_argument("--config", help="YAML/TOML file of training settings")
    parser.add_argument(
        "--model", help="mobilenet_v2 (default), other backbones, seed, seed_gender, seed_age"
    )
    parser.add_argument("--tasks", type=lambda s: tuple(s.split(",")), help="e.g. age,gender,race")
    parser.add_argument("--epochs", type=int)
    parser.add_argument(
        "--time-budget",
        type=float,
        dest="time_budget",
        help="minutes for the whole run; the schedule is fitted to it",
    )
    parser.add_argument("--size", type=int, help="input side in pixels")
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--balance-alpha",
        type=float,
        dest="balance_alpha",
        help="draw images with probability ~ (race x age band count)^-alpha, 0..1 (0 = off)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or mps")
    parser.add_argument("--threads", type=int, help="CPU threads (0 = all cores)")
    parser.add_argument(
        "--subset", type=float, default=1.0, help="use this share of each split (quick runs)"
    )
    parser.add_argument("--out", help="run folder (default: runs/<time>-<model>)")
    parser.add_argument("--cache", help="dataset cache folder")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")

    def run(args) -> int:
        from utkface.config import resolve_config
        from utkface.train import load_run_config, train

        if args.resume:
            config, out = load_run_config(args.resume), args.resume
        else:
            keys = (
                "model",
                "tasks",
                "epochs",
                "time_budget",
                "size",
                "batch_size",
                "lr",
                "pretrained",
                "seed",
                "balance_alpha",
                "device",
                "threads",
            )
            config = resolve_config(args.config, **{key: getattr(args, key) for key in keys})
            out = args.out
        from utkface.multisource import parse_sources

        data = parse_sources(args.data, args.labels, args.faces)
        train(config, data, out, cache=args.cache, resume=bool(args.resume), subset=args.subset)
        return 0

    parser.set_defaults(func=run)


def add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="age and gender of every face in photos, folders or globs",
        description="Exit status: 0 all inputs read, 1 some input failed (its error is in the "
        "output), 2 the run could not start (checkpoint, option or missing extra).",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders "
        "(searched recursively) or glob patterns such as 'photos/**/*.jpg'",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt) or export (.onnx)")
    parser.add_argument(
        "--faces",
        choices=("auto", "detect", "aligned"),
        default="auto",
        help="aligned: each input is already a UTKFace-like face crop; detect: find every face "
        "and crop it like UTKFace; auto (default): decide per image",
    )
    parser.add_argument(
        "--out",
        help="FILE.jsonl (one object per input) or FILE.csv (a row per face); written atomically",
    )
    parser.add_argument(
        "--annotate", metavar="DIR", help="write copies with faces boxed and labelled"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="face crops per forward pass")
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: up to 4)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (torch backend)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")

    def run(args) -> int:
        from utkface.predict import Predictor
        from utkface.predict_files import describe, predict_files

        def report(prediction) -> None:
            if prediction.error or not args.out:
                print(describe(prediction), file=sys.stderr if prediction.error else sys.stdout)

        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            backend=args.backend,
            faces=args.faces,
            batch_size=args.batch_size,
            workers=args.workers,
        )
        summary = predict_files(
            args.inputs, predictor, out=args.out, annotate=args.annotate, report=report
        )
        print(f"{summary}" + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
        return 1 if summary.failed else 0

    parser.set_defaults(func=run)


def add_data_arguments(parser) -> None:
    """--data (repeatable), --labels and --faces: the sources of prepare, train and evaluate."""
    parser.add_argument(
        "--data",
        action="append",
        metavar="SOURCE",
        help="UTKFace folder, .tar.gz or .zip (default: $UTKFACE_DATA), or PHOTOS::LABELS.csv "
        "for photos labelled by a CSV (file, age, gender[, race]); repeat for several sources",
    )
    parser.add_argument(
        "--labels", help="labels CSV of the one --data (same as --data PHOTOS::LABELS.csv)"
    )
    parser.add_argument(
        "--faces",
        choices=("auto", "detect", "aligned"),
        default="auto",
        help="photos of a labelled source: aligned = already face crops; detect = find the one "
        "face and crop it like UTKFace; auto (default) = decide per photo",
    )


PARSERS = [
    add_prepare_parser,
    add_train_parser,
    add_evaluate_parser,
    add_export_parser,
    add_serve_parser,
    add_predict_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utkface", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in PARSERS:
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as error:
        # Problems with what the user gave us: one clear line, no traceback.
        print(f"utkface {args.command}: error: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input or setup can cause: bad files, settings, missing extras (their
    ImportError names the extra to install), a failed export parity check."""
    from utkface.checkpoint import CheckpointError
    from utkface.evaluate import EvaluationError
    from utkface.export import ParityError
    from utkface.images import ImageError
    from utkface.models import PretrainedWeightsError
    from utkface.sources import SourceError

    return (
        CheckpointError,
        EvaluationError,
        ImageError,
        ParityError,
        PretrainedWeightsError,
        SourceError,
        FileNotFoundError,
        ImportError,
        ValueError,  # includes ConfigError: a bad option, named with its valid choices
    )
