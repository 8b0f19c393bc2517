"""The web demo under load: requests past the bound get 503 + Retry-After before their body is
read, requests within it all succeed, slow uploads get 408 and long waits 503, and a slot is
never leaked. The model is a backend that waits on an Event, so "busy" is a state the test holds,
not a race against the clock. Only the ASGI app is driven (httpx's ASGITransport), no socket.
"""

from __future__ import annotations

import io
import threading
import warnings

import anyio
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from utkface.apps.serve import WORKER_OPTIONS, create_app, worker_app  # noqa: E402
from utkface.apps.serve_limits import Admission  # noqa: E402
from utkface.models.preprocess import Preprocess  # noqa: E402
from utkface.runtime.predict import Predictor  # noqa: E402

JPEG = "image/jpeg"


class GatedBackend:
    """Answers age 30 and P(female) 0.25 for each crop, once `release` is set; `entered` is set
    when a forward pass has started."""

    def __init__(self):
        self.meta = {"model": {"name": "gated"}}
        self.preprocess = Preprocess(size=32)
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls = 0

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(timeout=30), "the test never released the backend"
        return {"age": np.full(len(images), 30.0), "gender_prob": np.full(len(images), 0.25)}


@pytest.fixture
def backend() -> GatedBackend:
    backend = GatedBackend()
    yield backend
    backend.release.set()  # never leave a thread waiting


@pytest.fixture(scope="module")
def photo() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (120, 90, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


def app_with(backend, **limits):
    gate = Admission(**limits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app = create_app(Predictor(backend, faces="aligned", workers=1), admission=gate)
    return app, gate


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def never_ending_body():
    """A request body whose sender stalls after the first chunk."""
    yield b"\xff\xd8\xff"
    await anyio.sleep_forever()


async def until(condition, seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


def test_past_the_bound_503_with_retry_after_and_within_it_all_succeed(backend, photo):
    app, gate = app_with(backend, concurrency=1, queue=2)

    async def scenario():
        answers = []
        async with client_for(app) as client:

            async def post():
                answers.append(await client.post("/api/predict", content=photo))

            async with anyio.create_task_group() as group:
                for _ in range(3):  # 1 running + 2 waiting = the bound
                    group.start_soon(post)
                await until(lambda: gate.admitted == 3 and backend.entered.is_set())
                # A 4th is refused at once, its body never read (the sender stalls forever).
                refused = await client.post(
                    "/api/predict", content=never_ending_body(), headers={"content-type": JPEG}
                )
                assert gate.admitted == 3 and backend.calls == 1
                backend.release.set()
            after = await client.post("/api/predict", content=photo)  # room again
        return answers, refused, after

    answers, refused, after = anyio.run(scenario)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "busy" and "1 running, 2 waiting" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    for answer in (*answers, after):
        (face,) = answer.json()["faces"]
        assert face["age"] == 30.0 and face["female_probability"] == 0.25
    assert after.status_code == 200 and gate.admitted == 0 and backend.calls == 4


def test_a_long_wait_for_a_slot_is_503(backend, photo):
    app, gate = app_with(backend, concurrency=1, queue=1, queue_timeout=0.3)

    async def scenario():
        async with client_for(app) as client:
            first = []
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: _append(first, client.post("/api/predict", content=photo)))
                await until(backend.entered.is_set)
                waited = await client.post("/api/predict", content=photo)  # waits 0.3 s
                backend.release.set()
        return first[0], waited

    first, waited = anyio.run(scenario)
    assert waited.status_code == 503 and waited.json()["error"] == "queue_timeout", waited.text
    assert "0.3 s" in waited.json()["detail"] and int(waited.headers["retry-after"]) >= 1
    assert first.status_code == 200 and backend.calls == 1 and gate.admitted == 0


def test_a_slow_upload_is_408_and_frees_its_place(backend, photo):
    backend.release.set()
    app, gate = app_with(backend, concurrency=1, queue=0, upload_timeout=0.3)

    async def scenario():
        async with client_for(app) as client:
            slow = await client.post(
                "/api/predict", content=never_ending_body(), headers={"content-type": JPEG}
            )
            # queue 0: had the slow upload kept its place, this would be 503
            fine = await client.post("/api/predict", content=photo)
        return slow, fine

    slow, fine = anyio.run(scenario)
    assert slow.status_code == 408 and slow.json()["error"] == "upload_timeout", slow.text
    assert "0.3 s" in slow.json()["detail"] and slow.headers["connection"] == "close"
    assert fine.status_code == 200 and gate.admitted == 0 and backend.calls == 1


async def _append(answers: list, request) -> None:
    answers.append(await request)


def test_limits_are_reported_and_checked(backend):
    app, _ = app_with(backend, concurrency=2, queue=5, upload_timeout=7, queue_timeout=3)

    async def info():
        async with client_for(app) as client:
            return (await client.get("/api/info")).json()["limits"]

    limits = anyio.run(info)
    assert limits["concurrency"] == 2 and limits["queue"] == 5
    assert (limits["upload_timeout_s"], limits["queue_timeout_s"]) == (7, 3)
    with pytest.raises(ValueError, match="concurrency"):
        Admission(concurrency=0)
    with pytest.raises(ValueError, match="positive"):
        Admission(upload_timeout=0)


def test_worker_processes_build_their_app_from_the_environment(tmp_path, monkeypatch):
    """What `serve --workers N` hands each uvicorn worker process: the same options."""
    from tiny_checkpoints import tiny_checkpoint

    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt", images, size=32)
    options = (
        f'{{"checkpoint": "{checkpoint}", "backend": "torch", "workers": 2, "faces": "aligned", '
        '"limits": {"concurrency": 3, "queue": 4}, "max_bytes": 1000}'
    )
    monkeypatch.setenv(WORKER_OPTIONS, options)
    threads = torch.get_num_threads()
    try:
        app = worker_app()  # shares the cores out: 1 torch thread per worker on 2 cores
    finally:
        torch.set_num_threads(threads)
    gate = app.state.admission
    assert (gate.concurrency, gate.queue) == (3, 4)
    assert app.state.predictor.faces == "aligned" and app.state.predictor.size == 32


def test_too_small_to_be_a_face_is_422_before_taking_a_slot(backend):
    app, gate = app_with(backend, concurrency=1, queue=0)
    buffer = io.BytesIO()
    Image.new("RGB", (30, 12), (120, 90, 60)).save(buffer, format="PNG")

    async def post():
        async with client_for(app) as client:
            return await client.post("/api/predict", content=buffer.getvalue())

    answer = anyio.run(post)
    assert answer.status_code == 422 and answer.json()["error"] == "too_small", answer.text
    assert "30x12 px" in answer.json()["detail"] and "at least 24 px" in answer.json()["detail"]
    assert backend.calls == 0 and gate.admitted == 0


def test_cli_refuses_bad_limits_before_loading_anything(capsys):
    from utkface.apps.cli import main

    assert main(["serve", "--checkpoint", "missing.pt", "--queue", "-1"]) == 2
    assert "queue >= 0, got 1, -1" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "missing.pt", "--workers", "0"]) == 2
    assert "workers must be at least 1, got 0" in capsys.readouterr().err


def test_sixteen_concurrent_requests_each_get_their_own_answer(jpeg_bytes):
    """16 clients at once, each with its own picture, on the released model (ONNX Runtime):
    every one is answered 200 with the prediction of its own picture, as if sent alone."""
    predictor = Predictor.from_pretrained(faces="aligned")
    photos = [jpeg_bytes(seed, size=96) for seed in range(16)]
    alone = [predictor.predict(photo).faces[0] for photo in photos]
    app = create_app(predictor, admission=Admission(queue=16))

    async def scenario():
        async with client_for(app) as client:
            posts = [client.post("/api/predict", content=photo) for photo in photos]
            answers = [None] * len(posts)

            async def send(index):
                answers[index] = await posts[index]

            async with anyio.create_task_group() as group:
                for index in range(len(posts)):
                    group.start_soon(send, index)
        return answers

    answers = anyio.run(scenario)
    assert [answer.status_code for answer in answers] == [200] * 16
    ages = [answer.json()["faces"][0]["age"] for answer in answers]
    assert ages == [round(face.age, 1) for face in alone]
    females = [answer.json()["faces"][0]["female_probability"] for answer in answers]
    assert females == [round(face.gender_prob, 4) for face in alone]
    assert len(set(ages)) > 8  # the pictures differ, so a mix-up would show
