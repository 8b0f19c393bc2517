"""Command line: `utkface <command> ...`. Parsing only; the work is done by library functions.

Each command has an `add_<command>_parser(subparsers)` that registers its arguments and sets
`func`, a function taking the parsed arguments and returning the exit code. Nothing heavy is
imported to parse the arguments: each command imports what it runs (so `utkface --help` and a
prediction start fast, and commands that need PyTorch say which extra installs it).
"""

from __future__ import annotations

import argparse
import sys

from utkface.runtime.cpu_threads import passive_openmp
from utkface.runtime.errors import TRAIN_HINT, OptionError, UtkfaceError, require
from utkface.runtime.sources import Limits


def add_prepare_parser(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="scan, validate, split and cache UTKFace")
    add_data_arguments(parser)
    parser.add_argument("--size", type=int, default=128, help="cached image side in pixels")
    parser.add_argument("--out", help="cache folder (default: $UTKFACE_CACHE or ~/.cache/utkface)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    defaults = Limits()
    parser.add_argument(
        "--max-file-mb",
        type=float,
        help=f"skip files larger than this (MB; default {defaults.member_bytes / 2**20:g})",
    )
    parser.add_argument(
        "--max-total-gb",
        type=float,
        help=f"skip the files past this much read (GB; default {defaults.total_bytes / 2**30:g})",
    )

    def run(args) -> int:
        from utkface.data.multisource import parse_sources, prepare_sources

        given = {}
        if args.max_file_mb is not None:
            given["member_bytes"] = int(args.max_file_mb * 2**20)
        if args.max_total_gb is not None:
            given["total_bytes"] = int(args.max_total_gb * 2**30)
        limits = Limits(**given)
        dataset = prepare_sources(
            parse_sources(args.data, args.labels, args.faces),
            size=args.size,
            out=args.out,
            seed=args.seed,
            workers=args.workers,
            progress=True,
            limits=limits,
        )
        print(dataset.summary())
        return 0

    parser.set_defaults(func=run)


def add_evaluate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a checkpoint: metrics, breakdowns, calibration, plots, report"
    )
    add_checkpoint_argument(parser, "from `train` (.pt) or `export --format safetensors`")
    add_data_arguments(parser)
    parser.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default=None,
        help="a split of the prepared --data, or 'all' to scan every file of --data without "
        "preparing it (default: test without --data, all with --data)",
    )
    parser.add_argument(
        "--out", help="report folder (default: beside the checkpoint; here for the released one)"
    )
    parser.add_argument("--tta", action="store_true", help="average with the mirrored image")
    parser.add_argument("--batch-size", type=int, default=256)
    add_backend_argument(parser)
    parser.add_argument(
        "--device", help="torch backend: cpu, cuda, mps (default: cuda if available)"
    )
    parser.add_argument("--cache", help="prepare cache folder (default: $UTKFACE_CACHE)")
    parser.add_argument("--split-seed", type=int, help="split seed (default: the checkpoint's)")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--corruptions",
        action="store_true",
        help="add UTKFace-C: the split under JPEG, blur, noise, low resolution, grayscale, "
        "exposure, rotation, shifted and scaled crops (decodes the files again at full size)",
    )

    def run(args) -> int:
        from utkface.data.multisource import parse_sources, unique_names
        from utkface.evaluation.evaluate import evaluate
        from utkface.evaluation.report import summary
        from utkface.runtime.released import output_path

        sources = parse_sources(args.data, args.labels, args.faces) if args.data else None
        name = args.split or ("all" if args.data else "test")
        if args.data and name == "all":
            name = "+".join(unique_names(sources))
        out = args.out or output_path(args.checkpoint, f"eval-{name}")
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
            corruptions=args.corruptions,
            backend=args.backend,
        )
        print(summary(report))
        print(f"written to {out}")
        return 0

    parser.set_defaults(func=run)


def add_export_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or safetensors, checked for parity with PyTorch",
    )
    add_checkpoint_argument(
        parser, "from `train` (.pt) or `export --format safetensors`", released="torch"
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "safetensors"),
        default="onnx",
        help="onnx: graph with preprocessing inside; safetensors: pickle-free weights + metadata",
    )
    parser.add_argument(
        "--out",
        help="output file (default: the checkpoint with .onnx or .safetensors; here for the "
        "released model)",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument("--half", action="store_true", help="safetensors: float16 weights")
    parser.add_argument(
        "--images",
        help="folder/.tar.gz/.zip of images for the parity check "
        "(default: the shared UTKFace archive, $UTKFACE_DATA)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")

    def run(args) -> int:
        export = require("utkface.models.export", TRAIN_HINT)
        if args.format == "safetensors":
            if args.opset is not None:
                raise OptionError("--opset applies to --format onnx only")
            export.export_safetensors(
                args.checkpoint,
                args.out,
                half=args.half,
                check=not args.no_check,
                images=args.images,
            )
            return 0
        if args.half:
            raise OptionError("--half applies to --format safetensors only")
        export.export_onnx(
            args.checkpoint,
            args.out,
            opset=args.opset or export.DEFAULT_OPSET,
            check=not args.no_check,
            images=args.images,
        )
        return 0

    parser.set_defaults(func=run)


def add_serve_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="web demo and JSON API for a checkpoint")
    add_checkpoint_argument(parser, "(.pt or .safetensors) or export (.onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000)
    add_backend_argument(parser)
    add_faces_argument(
        parser, "auto (default): decide per photo; detect: find faces; aligned: a crop"
    )
    add_detector_argument(parser)
    parser.add_argument("--max-mb", type=float, default=10.0, help="largest upload in MB")
    parser.add_argument("--max-megapixels", type=float, default=40.0, help="largest image")
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes, each with its own model copy"
    )
    # Limits default to serve_limits' constants (None here), so they are stated in one place.
    parser.add_argument(
        "--concurrency",
        type=int,
        help="predictions running at once in each worker (default 1: one uses every core)",
    )
    parser.add_argument(
        "--queue",
        type=int,
        help="requests that may wait in each worker beyond those running, more get 503 "
        "(default 16)",
    )
    parser.add_argument(
        "--upload-timeout", type=float, help="seconds to receive an upload, else 408 (default 30)"
    )
    parser.add_argument(
        "--queue-timeout", type=float, help="seconds to wait for a slot, else 503 (default 15)"
    )

    def run(args) -> int:
        hint = "the web demo is an optional extra: pip install 'utkface[serve]'"
        serve = require("utkface.apps.serve", hint).run
        serve(
            args.checkpoint,
            host=args.host,
            port=args.port,
            backend=args.backend,
            faces=args.faces,
            detector=args.detector,
            max_bytes=int(args.max_mb * 2**20),
            max_pixels=int(args.max_megapixels * 1e6),
            workers=args.workers,
            limits={
                name: value
                for name in ("concurrency", "queue", "upload_timeout", "queue_timeout")
                if (value := getattr(args, name)) is not None
            },
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
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights (same --model), or 'released' (fine-tune)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--balance-alpha",
        type=float,
        dest="balance_alpha",
        help="draw images with probability ~ (race x age band count)^-alpha, 0..1 (0 = off)",
    )
    parser.add_argument(
        "--mix",
        type=parse_mix,
        dest="source_mix",
        metavar="SOURCE=SHARE[,...]",
        help="share of each --data source per epoch, e.g. utkface=0.5 (sources left out share "
        "the rest by size; default: in proportion to their sizes)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda or mps")
    parser.add_argument(
        "--precision", help="fp32 (default) or bf16 (autocast the forward pass, for GPUs)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads (0 = the cores other processes leave free, looked at every 2 s)",
    )
    parser.add_argument(
        "--subset", type=float, default=1.0, help="use this share of each split (quick runs)"
    )
    parser.add_argument("--out", help="run folder (default: runs/<time>-<model>)")
    parser.add_argument("--cache", help="dataset cache folder")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument(
        "--no-test",
        dest="report_test",
        action="store_false",
        help="leave the test split unscored (tuning runs: select on val only)",
    )

    def run(args) -> int:
        training = require("utkface.training.train", TRAIN_HINT)
        load_run_config, train = training.load_run_config, training.train
        from utkface.training.config import resolve_config

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
                "init",
                "seed",
                "balance_alpha",
                "source_mix",
                "device",
                "precision",
                "threads",
            )
            config = resolve_config(args.config, **{key: getattr(args, key) for key in keys})
            out = args.out
        from utkface.data.multisource import parse_sources

        data = parse_sources(args.data, args.labels, args.faces)
        train(
            config,
            data,
            out,
            cache=args.cache,
            resume=bool(args.resume),
            subset=args.subset,
            report_test=args.report_test,
        )
        return 0

    parser.set_defaults(func=run)


def parse_mix(text: str) -> dict[str, float]:
    """`--mix utkface=0.5,fairface=0.5` -> {"utkface": 0.5, "fairface": 0.5}."""
    mix = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        try:
            mix[key.strip().lower()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not SOURCE=SHARE") from None
    return mix


def add_predict_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="age and gender of every face in photos, folders, globs, manifests or videos",
        description="Exit status: 0 all inputs read, 1 some input failed (its error is in the "
        "output), 2 the run could not start (checkpoint, option or missing extra).",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively), glob patterns such as "
        "'photos/**/*.jpg', manifests: .txt (a path per line), .csv (a path or file "
        "column), .parquet; or video files (.mp4, .mkv, .webm, .mov, .avi, ...: faces "
        "tracked over frames, extra utkface[video])",
    )
    add_checkpoint_argument(parser, "(.pt or .safetensors) or export (.onnx)")
    add_faces_argument(
        parser,
        "aligned: each input is already a UTKFace-like face crop; detect: find every face "
        "and crop it like UTKFace; auto (default): decide per image",
    )
    add_detector_argument(parser)
    parser.add_argument(
        "--out",
        help="DIR: part files written as results come (each whole when it appears); "
        "FILE.jsonl (one object per input) or FILE.csv (a row per face): the same parts, "
        "joined into FILE at the end",
    )
    parser.add_argument(
        "--format",
        dest="out_format",
        choices=("jsonl", "csv", "parquet"),
        help="part file format for --out DIR (default jsonl; parquet needs utkface[parquet])",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the inputs --out already holds (after a crash)"
    )
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="K/N",
        help="predict only share K of N (0 <= K < N) of the inputs, chosen by a hash of each "
        "path: stable when inputs are added",
    )
    parser.add_argument(
        "--part-size", type=int, default=1000, help="inputs per part file (or 60 s, if sooner)"
    )
    parser.add_argument(
        "--annotate", metavar="DIR", help="write copies with faces boxed and labelled"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="face crops per forward pass (default 16)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding and detection processes (default: one per core); "
        "with --engine ray, model actors (default: 1)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (torch backend)")
    add_backend_argument(parser)
    parser.add_argument(
        "--every", type=int, default=2, help="videos: detect faces on every N-th frame and "
        "follow them with the tracker in between (default 2; 1: detect on every frame)",
    )  # fmt: skip
    parser.add_argument("--max-frames", type=int, help="videos: stop after this many frames")
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): this machine; ray: Ray Data on a cluster, writes Parquet parts "
        "into --out DIR (needs utkface[ray])",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start a local one)")

    def run(args) -> int:
        from utkface.runtime.predict_inputs import parse_shard

        shard = parse_shard(args.shard)
        if args.engine == "ray":
            return _predict_ray(args, shard)
        from utkface.runtime.predict import Predictor
        from utkface.runtime.predict_files import describe, predict_files
        from utkface.runtime.video import is_video

        videos = [path for path in args.inputs if is_video(path)]
        if videos and len(videos) < len(args.inputs):
            raise OptionError("give either videos or images, not both; run them separately")

        def report(prediction) -> None:
            if prediction.error or not args.out:
                print(describe(prediction), file=sys.stderr if prediction.error else sys.stdout)

        predictor = Predictor.from_checkpoint(
            args.checkpoint,
            device=args.device,
            backend=args.backend,
            faces=args.faces,
            detector=args.detector,
            batch_size=args.batch_size,
            workers=args.workers,
            processes=True,
        )
        if videos:
            from utkface.apps.video_files import predict_videos

            summary = predict_videos(
                videos, predictor, out=args.out, annotate=args.annotate, every=args.every,
                max_frames=args.max_frames,
            )  # fmt: skip
            print(f"{summary}" + (f"; rows in {args.out}" if args.out else ""), file=sys.stderr)
            return 1 if summary.failed else 0
        try:
            summary = predict_files(
                args.inputs,
                predictor,
                out=args.out,
                out_format=args.out_format,
                resume=args.resume,
                shard=shard,
                part_size=args.part_size,
                annotate=args.annotate,
                report=report,
                progress=bool(args.out),
            )
        except KeyboardInterrupt:
            if args.out:
                print(
                    "the finished results are kept: the same command with --resume goes on",
                    file=sys.stderr,
                )
            raise
        print(f"{summary}" + (f"; results in {args.out}" if args.out else ""), file=sys.stderr)
        return 1 if summary.failed else 0

    parser.set_defaults(func=run)


def _predict_ray(args, shard) -> int:
    from utkface.apps.ray_predict import predict_ray

    if not args.out:
        raise OptionError("--engine ray needs --out DIR (it writes Parquet part files there)")
    unsupported = [flag for flag, value in (("--resume", args.resume), ("--annotate",
                   args.annotate), ("--format", args.out_format)) if value]  # fmt: skip
    if unsupported:
        raise OptionError(f"--engine ray does not take {', '.join(unsupported)}")
    summary = predict_ray(
        args.inputs,
        args.checkpoint,
        args.out,
        faces=args.faces,
        detector=args.detector,
        shard=shard,
        backend=args.backend,
        device=args.device,
        batch_size=args.batch_size,
        actors=args.workers or 1,
        address=args.address,
    )
    print(f"{summary}; results in {args.out}", file=sys.stderr)
    return 1 if summary.failed else 0


def add_cache_parser(subparsers) -> None:
    parser = subparsers.add_parser("cache", help="list or remove the dataset caches of `prepare`")
    parser.add_argument("action", choices=("list", "clean"), help="list them, or remove some")
    parser.add_argument("names", nargs="*", metavar="NAME", help="caches to remove (clean)")
    parser.add_argument("--all", action="store_true", help="clean: remove every cache")
    parser.add_argument("--dir", help="cache folder (default: $UTKFACE_CACHE or ~/.cache/utkface)")

    def run(args) -> int:
        from utkface.data.caches import list_caches, remove_caches

        if args.action == "list":
            if args.names or args.all:
                raise OptionError("cache list takes no names and no --all")
            caches = list_caches(args.dir)
            for cache in caches:
                print(cache.row())
            total = sum(cache.bytes for cache in caches)
            print(f"{len(caches)} caches, {total / 2**20:.1f} MB", file=sys.stderr)
            return 0
        if bool(args.names) == args.all:
            raise OptionError("cache clean needs cache names (see `utkface cache list`) or --all")
        removed = remove_caches(None if args.all else args.names, args.dir)
        for cache in removed:
            print(f"removed {cache.path} ({cache.bytes / 2**20:.1f} MB)")
        return 0

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
    add_faces_argument(
        parser,
        "photos of a labelled source: aligned = already face crops; detect = find the one "
        "face and crop it like UTKFace; auto (default) = decide per photo",
    )


def add_checkpoint_argument(parser, kinds: str, released: str | None = None) -> None:
    """--checkpoint of the commands that use a model; `main` puts the released one in its place
    when it is not given: its ONNX export, or its PyTorch weights for `released="torch"` (a
    command that needs them) and for `--backend torch`."""
    parser.add_argument(
        "--checkpoint",
        help=f"checkpoint {kinds} (default: the released model, see `utkface info`)",
    )
    parser.set_defaults(released=released)


def add_backend_argument(parser) -> None:
    """--backend: what runs the model (`runtime.backends`)."""
    parser.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        help="onnx: ONNX Runtime; torch: PyTorch, extra utkface[train] (default: onnx for an "
        ".onnx file and the released model, torch for a training checkpoint)",
    )


def add_faces_argument(parser, help_text: str) -> None:
    """--faces: how a photo becomes face crops (the modes of `predict.FACE_MODES`)."""
    parser.add_argument(
        "--faces", choices=("auto", "detect", "aligned"), default="auto", help=help_text
    )


def add_detector_argument(parser) -> None:
    """--detector: what finds faces in whole photos (`faces.DETECTORS`)."""
    parser.add_argument(
        "--detector",
        choices=("yunet", "dlib"),
        default="yunet",
        help="yunet (default): built in; dlib: HOG + 68 landmarks, extra utkface[detect]",
    )


def add_info_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="what a checkpoint is: model, input, training recipe, scores, file, terms"
    )
    add_checkpoint_argument(parser, "(.pt or .safetensors) or export (.onnx)")

    def run(args) -> int:
        from utkface.runtime.onnx_backend import is_onnx

        if is_onnx(args.checkpoint):
            from utkface.runtime.model_info import describe_onnx

            print(describe_onnx(args.checkpoint))
        else:
            checkpoints = require("utkface.models.checkpoint", TRAIN_HINT)
            print(checkpoints.describe_checkpoint(args.checkpoint))
        return 0

    parser.set_defaults(func=run)


PARSERS = [
    add_info_parser,
    add_prepare_parser,
    add_cache_parser,
    add_train_parser,
    add_evaluate_parser,
    add_export_parser,
    add_serve_parser,
    add_predict_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="utkface", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of every error, user errors too"
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in PARSERS:
        add_parser(subparsers)
    return parser


def _version() -> str:
    from utkface import __version__
    from utkface.runtime.released import describe

    return f"utkface {__version__}; {describe()}"


def main(argv: list[str] | None = None) -> int:
    """Run one command. A `UtkfaceError` (bad file, option or setting, missing extra: something
    the user can fix) is one line and exit status 2; anything else is a bug and keeps its
    traceback, as do user errors with `--debug`."""
    args = build_parser().parse_args(argv)
    if args.command != "train":
        # Before torch (and its OpenMP) is imported: idle threads sleep rather than spin, so a
        # busy neighbour costs prediction a fair share, not 5x (issue 22; the user's OMP_* kept).
        # Not for training: its many small parallel regions ran 32% slower on an idle machine
        # (137 -> 93 img/s); its threads follow the free cores instead (cpu_threads.CoreShare).
        passive_openmp()
    if getattr(args, "checkpoint", "") is None:  # a command that uses a model, none given
        from utkface.runtime import released

        backend = args.released or getattr(args, "backend", None) or "onnx"
        args.checkpoint = str(released.path(backend))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UtkfaceError as error:
        if args.debug:
            raise
        print(f"utkface {args.command}: error: {error}", file=sys.stderr)
        return 2
