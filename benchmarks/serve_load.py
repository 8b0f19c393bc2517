"""Requests per second the web demo sustains on loopback, with no errors.

    python -m benchmarks.serve_load [--checkpoint CKPT] [--backend onnx] [--image PHOTO]
                                    [--clients 4] [--requests 200] [--seconds 20]

Starts `serve.create_app` under uvicorn on 127.0.0.1 (a free port) in this process, then
`--clients` threads POST the image to /api/predict until `--requests` answers or `--seconds`
have passed, whichever comes first. Prints requests/s, latency percentiles and the error count
(any non-200 answer or exception is an error). Only loopback traffic. Without `--checkpoint`
the default model (random-init mobilenet_v2, 128 px) is used; without `--image`, a real
UTKFace crop from the shared archive.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn

from benchmarks.common import random_checkpoint
from utkface.serve import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint (default: random-init default model)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--image", help="photo to send (default: a real UTKFace crop)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=200, help="stop after this many")
    parser.add_argument("--seconds", type=float, default=20.0, help="or after this long")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or random_checkpoint(Path(folder) / "default.pt")
        app = create_app(checkpoint, backend=args.backend)
    payload, content_type = _payload(args.image)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    url = f"http://127.0.0.1:{port}/api/predict"
    headers = {"Content-Type": content_type}
    with httpx.Client() as client:  # warm up: first requests pay for lazy initialisation
        for _ in range(3):
            client.post(url, content=payload, headers=headers).raise_for_status()

    counter = itertools.count()
    latencies: list[float] = []
    outcomes: Counter = Counter()
    lock = threading.Lock()
    deadline = time.perf_counter() + args.seconds

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while next(counter) < args.requests and time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    outcome = client.post(url, content=payload, headers=headers).status_code
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                with lock:
                    latencies.append(time.perf_counter() - start)
                    outcomes[outcome] += 1

    started = time.perf_counter()
    clients = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for client_thread in clients:
        client_thread.start()
    for client_thread in clients:
        client_thread.join()
    elapsed = time.perf_counter() - started
    server.should_exit = True
    thread.join(timeout=10)

    errors = sum(count for outcome, count in outcomes.items() if outcome != 200)
    print(
        f"backend {args.backend}, {args.clients} clients, {len(payload) / 1e3:.0f} kB "
        f"{content_type}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{len(latencies)} requests in {elapsed:.1f} s: {len(latencies) / elapsed:.1f} requests/s, "
        f"latency median {statistics.median(latencies) * 1e3:.0f} ms, "
        f"p90 {np.percentile(latencies, 90) * 1e3:.0f} ms, errors {errors} {dict(outcomes)}"
    )


def _payload(image: str | None) -> tuple[bytes, str]:
    if image:
        suffix = Path(image).suffix.lower().lstrip(".")
        kind = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp", "bmp": "bmp"}
        return Path(image).read_bytes(), f"image/{kind.get(suffix, 'jpeg')}"
    from utkface.data import default_source
    from utkface.sources import iter_members

    for member in iter_members(default_source()):
        if member.data and member.name.endswith(".jpg"):
            return member.data, "image/jpeg"
    raise SystemExit("no image in the default data; pass --image")


if __name__ == "__main__":
    main()
