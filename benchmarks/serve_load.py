"""Requests per second and latency of the web demo on loopback, and its 503s past the bound.

    python -m benchmarks.serve_load [--checkpoint MODEL] [--backends onnx,torch]
        [--image PHOTO | --photo] [--faces auto|detect|aligned] [--detector NAME]
        [--clients 1,8,32] [--requests 300] [--seconds 30] [--queue 64] [--overload-queue 4]
        [--workers 1] [--concurrency 1]

Issue 21's target (16 clients each sending a whole photo, 0 errors) is
`--photo --clients 16 --faces detect`; the same with crops is `--clients 16 --faces aligned`.

For each backend, starts `utkface serve` as a child process on 127.0.0.1 (a free port), once
with room for every client (`--queue 64`: 65 requests per worker at `--concurrency 1`) and once
with a bound below the number of clients (`--overload-queue 4`; `--overload-queue -1` skips
that run), and POSTs the image to /api/predict from `--clients` concurrent clients (coroutines
of one httpx client in this process) until `--requests` answers or `--seconds` have passed,
whichever comes first. Prints a Markdown table: requests/s of 200 answers, their p50/p99
latency, and counts of 200s, deliberate 503s (the bound) and errors (anything else: other
statuses, exceptions), and the faces found per 200 answer. The child is stopped at the
end, whatever happens. Only loopback traffic. Without `--checkpoint` the server runs the
released model (its ONNX export; its PyTorch weights for `torch`). The image is a real UTKFace
crop from the shared archive, `--photo` a 900x600 photo with 4 of them pasted in, or `--image`.
`--workers`, `--concurrency` and `--detector` are passed on to `utkface serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.inputs import composite, utkface_crops

HOST = "127.0.0.1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="model file (default: the released model)")
    parser.add_argument("--backends", default="onnx", help="comma-separated: onnx, torch")
    picture = parser.add_mutually_exclusive_group()
    picture.add_argument("--image", help="photo to send (default: a real UTKFace crop)")
    picture.add_argument("--photo", action="store_true", help="a 900x600 photo with 4 crops")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, per run")
    parser.add_argument("--requests", type=int, default=300, help="answers per run at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per run at most")
    parser.add_argument("--queue", type=int, default=64, help="server queue for the normal runs")
    parser.add_argument(
        "--overload-queue", type=int, default=4, help="server queue of the bound run (-1: none)"
    )
    parser.add_argument("--overload-clients", type=int, help="clients of the bound run (max)")
    parser.add_argument("--faces", default="auto", choices=("auto", "detect", "aligned"))
    parser.add_argument("--detector", help="serve's --detector (default: serve's own)")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--concurrency", type=int, help="serve's --concurrency (default: its own)")
    args = parser.parse_args(argv)
    clients = [int(count) for count in args.clients.split(",")]
    overload_clients = args.overload_clients or max(clients)
    payload, content_type = _payload(args.image, args.photo)
    served = ["--faces", args.faces, "--workers", str(args.workers)]
    for name in ("checkpoint", "detector", "concurrency"):
        if getattr(args, name) is not None:
            served += [f"--{name}", str(getattr(args, name))]

    with tempfile.TemporaryDirectory() as folder:
        print(
            f"model {args.checkpoint or 'released'}, {len(payload) / 1e3:.0f} kB {content_type}"
            f"{' (900x600, 4 faces)' if args.photo else ''}, serve {' '.join(served)}, "
            f"{os.cpu_count()} cores, load average {_load()} at start"
        )
        print()
        print(
            "| backend | clients | server bound (running + queue) | answers | 200 | 503 | errors "
            "| faces per 200 | requests/s (200s) | p50 ms | p99 ms |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        total_errors = 0
        for backend in args.backends.split(","):
            runs = [(args.queue, count) for count in clients]
            if args.overload_queue >= 0:
                runs.append((args.overload_queue, overload_clients))
            for queue in dict.fromkeys(queue for queue, _ in runs):
                options = ["--backend", backend, "--queue", str(queue), *served]
                with _server(options, Path(folder)) as url:
                    for _, count in (run for run in runs if run[0] == queue):
                        load = _load_run(url, payload, content_type, count, args)
                        row = asyncio.run(load)
                        total_errors += row["errors"]
                        bound = args.workers * ((args.concurrency or 1) + queue)
                        print(_row(backend, count, bound, row), flush=True)
        print()
        print(f"load average {_load()} at end; errors {total_errors} (503s are deliberate)")


class _server:
    """`utkface serve` in a child process on a free loopback port; the base URL while open."""

    def __init__(self, options: list[str], folder: Path):
        self.options, self.folder = options, folder

    def __enter__(self) -> str:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "utkface", "serve", "--host", HOST, "--port", str(port)]
        command += self.options
        self.log = open(self.folder / f"server-{port}.log", "w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.__exit__()
                raise SystemExit(f"the server stopped: {self._log_tail()}")
            try:
                httpx.get(f"{url}/api/info", timeout=2).raise_for_status()
                return url
            except httpx.HTTPError:
                time.sleep(0.25)  # the child is importing and loading the model
        self.__exit__()
        raise SystemExit(f"the server did not start in 180 s: {self._log_tail()}")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:]


async def _load_run(url: str, payload: bytes, content_type: str, clients: int, args) -> dict:
    """`clients` coroutines POST until `args.requests` answers or `args.seconds`; counts and
    latencies."""
    requests, seconds = args.requests, args.seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Content-Type": content_type}
    outcomes: Counter = Counter()
    latencies: list[float] = []  # of 200 answers, seconds
    faces: list[int] = []  # faces found, per 200 answer
    sent = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for _ in range(3):  # warm up: the first requests pay for lazy initialisation
            (await client.post("/api/predict", content=payload, headers=headers)).raise_for_status()
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                try:
                    response = await client.post("/api/predict", content=payload, headers=headers)
                    outcome = response.status_code
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                if outcome == 200:
                    latencies.append(time.perf_counter() - start)
                    faces.append(len(response.json()["faces"]))
                outcomes[outcome] += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    errors = sum(count for outcome, count in outcomes.items() if outcome not in (200, 503))
    return {
        "answers": sum(outcomes.values()),
        "ok": outcomes[200],
        "busy": outcomes[503],
        "errors": errors,
        "outcomes": dict(outcomes),
        "faces": np.mean(faces) if faces else float("nan"),
        "rate": outcomes[200] / elapsed,
        "p50": np.percentile(latencies, 50) * 1e3 if latencies else float("nan"),
        "p99": np.percentile(latencies, 99) * 1e3 if latencies else float("nan"),
    }


def _row(backend: str, clients: int, bound: int, run: dict) -> str:
    error_text = str(run["errors"]) + (f" {run['outcomes']}" if run["errors"] else "")
    return (
        f"| {backend} | {clients} | {bound} | {run['answers']} | {run['ok']} | {run['busy']} "
        f"| {error_text} | {run['faces']:.2f} | {run['rate']:.1f} | {run['p50']:.0f} "
        f"| {run['p99']:.0f} |"
    )


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _payload(image: str | None, photo: bool) -> tuple[bytes, str]:
    if image:
        suffix = Path(image).suffix.lower().lstrip(".")
        kind = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp"}
        return Path(image).read_bytes(), f"image/{kind.get(suffix, 'jpeg')}"
    crops = [data for _, data in utkface_crops(4 if photo else 1)]
    if not photo:
        return crops[0], "image/jpeg"
    buffer = io.BytesIO()
    composite([Image.open(io.BytesIO(data)) for data in crops]).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"


if __name__ == "__main__":
    main()
