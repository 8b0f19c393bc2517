"""How long `utkface prepare` takes on the UTKFace download, from scratch and from a warm cache.

    python3 benchmarks/prepare_speed.py [--data ../shared/UTKFace.tar.gz] [--size 128]

"Cold" prepares into a fresh temporary cache folder: read the archive, parse, decode every image,
split and write the cache. The archive itself may already sit in the OS page cache, as it would
after a download. "Warm" is a second `prepare` with the same inputs, which opens that cache.
The temporary cache is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from importlib import metadata
from pathlib import Path

from utkface.data.dataset import default_source, prepare


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_seconds() -> float:
    """User + system time of this process and its finished children (the decoding workers)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="default: $UTKFACE_DATA or shared")
    parser.add_argument("--size", type=int, default=128, help="cached image side in pixels")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes (all cores)")
    args = parser.parse_args()
    source = args.data or default_source()

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"data:    {source} ({source.stat().st_size / 2**20:.1f} MiB)")
    print(f"cpu:     {cpu_model()}; {os.cpu_count()} cores, {usable} usable")
    print(f"load:    {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min; others' work)")
    print(
        f"python:  {platform.python_version()}; torch {version('torch')}, "
        f"Pillow {version('Pillow')}, numpy {version('numpy')}"
    )

    with tempfile.TemporaryDirectory(prefix="utkface-bench-") as out:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        dataset = prepare(source, size=args.size, out=out, workers=args.workers)
        cold, cold_cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
        used = len(dataset.records)
        print(
            f"cold:    {cold:6.2f} s  {dataset.seen} files seen, {used} used, "
            f"{len(dataset.skipped)} skipped, {used / cold:,.0f} images/s at {args.size} px; "
            f"{cold_cpu:.1f} s of CPU time"
        )
        start = time.perf_counter()
        warm_set = prepare(source, size=args.size, out=out, workers=args.workers)
        warm = time.perf_counter() - start
        assert warm_set.cache_dir == dataset.cache_dir, "the warm run rebuilt the cache"
        print(f"warm:    {warm:6.2f} s  (cache reused: {warm_set.cache_dir.name})")


if __name__ == "__main__":
    main()
