"""Command line: `utkface <command> ...`. Parsing only; the work is done by library functions.

Each command has an `add_<command>_parser(subparsers)` that registers its arguments and sets
`func`, a function taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import sys


def add_prepare_parser(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="scan, validate, split and cache UTKFace")
    parser.add_argument("--data", help="UTKFace folder, .tar.gz or .zip (default: $UTKFACE_DATA)")
    parser.add_argument("--size", type=int, default=128, help="cached image side in pixels")
    parser.add_argument("--out", help="cache folder (default: $UTKFACE_CACHE or ~/.cache/utkface)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes")

    def run(args) -> int:
        from utkface.data import prepare
        from utkface.sources import SourceError

        try:
            dataset = prepare(
                args.data,
                size=args.size,
                out=args.out,
                seed=args.seed,
                workers=args.workers,
                progress=True,
            )
        except SourceError as error:  # a missing or unreadable --data: say so, no traceback
            print(f"utkface prepare: {error}", file=sys.stderr)
            return 2
        print(dataset.summary())
        return 0

    parser.set_defaults(func=run)


PARSERS = [add_prepare_parser]


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
