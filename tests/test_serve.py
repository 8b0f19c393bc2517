"""The web demo: JSON API through FastAPI's test client (good image, multi-face composite of real
UTKFace crops, corrupt, oversized and wrong-type uploads), and the page driven end to end in
headless Chromium against a server on 127.0.0.1 (skipped, with the reason, without a browser).
"""

from __future__ import annotations

import io
import itertools
import os
import shutil
import socket
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("dlib", reason="the detect extra is not installed (faces are found by dlib)")

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx works the same here
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient  # noqa: E402
from tiny_checkpoints import tiny_checkpoint  # noqa: E402

from utkface.apps import serve as serve_module  # noqa: E402
from utkface.apps.serve import create_app  # noqa: E402
from utkface.runtime.images import load_rgb  # noqa: E402
from utkface.runtime.predict import Predictor  # noqa: E402
from utkface.runtime.sources import iter_members  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,1000",
)
BOX_COLOURS = [(0xFF, 0x3B, 0x30), (0x34, 0xC7, 0x59), (0x0A, 0x84, 0xFF)]  # the page's first


@pytest.fixture(scope="module")
def real_crops(real_data) -> list[bytes]:
    """Twelve real 200x200 UTKFace JPEGs, spread over the archive's first 1200 files."""
    members = (m for m in iter_members(real_data) if m.data and m.name.endswith(".jpg"))
    return [m.data for m in itertools.islice(members, 1, 1200, 100)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, real_crops) -> Path:
    # A trained model for the screenshot: UTKFACE_DEMO_CHECKPOINT=runs/quickstart/best.pt
    # (only with `-k chromium`: the other tests here assume the tiny model).
    if os.environ.get("UTKFACE_DEMO_CHECKPOINT"):
        return Path(os.environ["UTKFACE_DEMO_CHECKPOINT"])
    images = np.stack([load_rgb(data, 64) for data in real_crops])
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt", images, size=64)


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(predictor))


def composite(crops: list[bytes], size=(960, 480), side=200) -> tuple[bytes, list[tuple]]:
    """JPEG of real crops pasted side by side on a smooth canvas, and where each went."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack(
        [120 + 40 * x / width, 130 + 30 * y / height, 140 - 20 * x / width], axis=-1
    )
    canvas = Image.fromarray(background.astype(np.uint8))
    gap = (width - len(crops) * side) // (len(crops) + 1)
    placed = []
    for index, data in enumerate(crops):
        left, top = gap + index * (side + gap), (height - side) // 2 + (index % 2) * 40 - 20
        canvas.paste(Image.open(io.BytesIO(data)).convert("RGB"), (left, top))
        placed.append((left, top, left + side, top + side))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), placed


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == code and body["detail"], body


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<input id="file" type="file"' in page.text and "<canvas" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    info = client.get("/api/info").json()
    limits = info["limits"]
    assert (limits["max_bytes"], limits["max_pixels"]) == (10 * 2**20, 40_000_000)
    assert (limits["concurrency"], limits["queue"]) == (1, 16)
    assert info["backend"] == "torch" and info["model"]["name"] == "mobilenet_v2"
    assert "image/jpeg" in info["accepted_types"]


def test_good_image_raw_body_and_form_agree_with_predictor(
    client, predictor, real_crops, monkeypatch
):
    # The time reported is the server's clock around the work: a fake one, 12.5 ms a look.
    ticks = itertools.count()
    fake_time = SimpleNamespace(perf_counter=lambda: next(ticks) * 0.0125, monotonic=time.monotonic)
    monkeypatch.setattr(serve_module, "time", fake_time)
    raw = client.post("/api/predict", content=real_crops[0], headers={"content-type": "image/jpeg"})
    form = client.post("/api/predict", files={"file": ("face.jpg", real_crops[0], "image/jpeg")})
    assert raw.status_code == form.status_code == 200, raw.text
    body = raw.json()
    assert body["faces"] == form.json()["faces"]
    assert body["image"] == {"width": 200, "height": 200, "format": "JPEG"}
    assert body["mode"] == "aligned" and body["backend"] == "torch" and body["elapsed_ms"] == 12.5
    (face,) = body["faces"]
    direct = predictor.predict(real_crops[0]).faces[0]
    assert face["box"] == [0, 0, 200, 200]
    assert face["age"] == pytest.approx(direct.age, abs=0.05)
    assert face["age_interval"] == [round(direct.age_low), round(direct.age_high)]
    assert face["age_interval"][0] <= face["age_interval"][1]
    assert face["gender"] == direct.gender
    assert face["female_probability"] == pytest.approx(direct.gender_prob, abs=1e-4)
    confidence = max(direct.gender_prob, 1 - direct.gender_prob)  # of the gender it names
    assert face["gender_probability"] == pytest.approx(confidence, abs=1e-4)


def test_multi_face_composite_finds_each_pasted_face(client, real_crops):
    photo, placed = composite(real_crops[:3])
    response = client.post("/api/predict", content=photo, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "detect" and body["image"]["width"] == 960
    assert len(body["faces"]) == len(placed)
    for face, (left, top, right, bottom) in zip(body["faces"], placed):  # left to right
        x0, y0, x1, y1 = face["box"]
        assert left <= (x0 + x1) / 2 <= right and top <= (y0 + y1) / 2 <= bottom
        assert face["gender"] in ("male", "female") and face["detector_score"] > 0
        assert face["age_interval"][0] <= face["age_interval"][1]


def test_photo_without_a_face_is_not_an_error(client):
    flat = encode(Image.new("RGB", (900, 600), (90, 140, 200)), "PNG")
    response = client.post("/api/predict", content=flat, headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.json()["faces"] == []


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda crop: crop[: len(crop) // 3], "corrupt_image"),  # truncated JPEG
        (lambda crop: b"\xff\xd8\xff" + bytes(range(256)) * 8, "not_an_image"),
        (lambda crop: b"", "empty"),
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_upload_is_400(client, real_crops, make, code):
    data = make(real_crops[0])
    response = client.post("/api/predict", content=data, headers={"content-type": "image/jpeg"})
    assert_error(response, 400, code)


def test_oversized_uploads_are_413(predictor, real_crops):
    small = TestClient(create_app(predictor, max_bytes=50_000, max_pixels=1_000_000))
    big = real_crops[0] + bytes(60_000)  # a valid JPEG start, then too many bytes
    assert_error(
        small.post("/api/predict", content=big, headers={"content-type": "image/jpeg"}),
        413,
        "too_large",
    )
    form = small.post("/api/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    assert_error(form, 413, "too_large")

    def chunks():  # no Content-Length: the streamed body is counted
        for _ in range(20):
            yield bytes(10_000)

    streamed = small.post("/api/predict", content=chunks(), headers={"content-type": "image/jpeg"})
    assert_error(streamed, 413, "too_large")
    # few bytes, too many pixels: refused from the header, before decoding
    wide = encode(Image.new("RGB", (2000, 1000)), "PNG")
    assert len(wide) < 50_000
    response = small.post("/api/predict", content=wide, headers={"content-type": "image/png"})
    assert_error(response, 413, "too_many_pixels")
    assert "2000x1000" in response.json()["detail"]


def test_wrong_types_are_415(client, real_crops):
    def post(data: bytes, content_type: str):
        return client.post("/api/predict", content=data, headers={"content-type": content_type})

    assert_error(post(b"hello", "text/plain"), 415, "unsupported_type")
    gif = encode(Image.new("RGB", (64, 64)), "GIF")
    assert_error(post(gif, "image/gif"), 415, "unsupported_type")
    assert_error(post(gif, "application/octet-stream"), 415, "unsupported_type")
    png = encode(Image.open(io.BytesIO(real_crops[0])), "PNG")
    mismatch = post(png, "image/jpeg")  # the bytes decide, not the label
    assert_error(mismatch, 415, "unsupported_type")
    assert "PNG" in mismatch.json()["detail"]
    assert post(png, "image/png").status_code == 200
    assert post(real_crops[0], "application/octet-stream").status_code == 200
    form = client.post("/api/predict", files={"file": ("notes.txt", b"hi", "text/plain")})
    assert_error(form, 415, "unsupported_type")
    missing = client.post("/api/predict", files={"photo": ("face.jpg", real_crops[0])})
    assert_error(missing, 400, "no_file")


def test_onnx_backend_app_matches_torch(tmp_path, checkpoint, client, real_crops):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from utkface.models.export import export_onnx

    model = export_onnx(checkpoint, tmp_path / "tiny.onnx", check=False, verbose=False)
    onnx_client = TestClient(create_app(model, backend="onnx"))
    photo, _ = composite(real_crops[3:6])
    for data in (real_crops[1], photo):
        want = client.post("/api/predict", content=data).json()
        got = onnx_client.post("/api/predict", content=data).json()
        assert got["backend"] == "onnx" and len(got["faces"]) == len(want["faces"]) > 0
        for a, b in zip(got["faces"], want["faces"]):
            assert a["box"] == b["box"] and a["gender"] == b["gender"]
            assert a["age"] == pytest.approx(b["age"], abs=0.1)
            assert a["female_probability"] == pytest.approx(b["female_probability"], abs=1e-3)


# ---- the page in a real browser ------------------------------------------------------------


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver) to run the page test"
        )
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    return chromium, driver


@pytest.fixture
def live_server(predictor):
    """The app under uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(predictor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_page_in_headless_chromium(live_server, real_crops, tmp_path):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo, placed = composite(real_crops[6:9])
    upload = tmp_path / "three faces.jpg"
    upload.write_bytes(photo)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.get(live_server)
        assert "Age and gender" in browser.title + browser.page_source
        browser.find_element(By.ID, "file").send_keys(str(upload))
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 120).until(
            lambda _: status.get_attribute("data-state") in ("done", "error")
        )
        assert status.get_attribute("data-state") == "done", status.text
        assert status.get_attribute("data-faces") == "3" and "3 faces found" in status.text
        items = browser.find_elements(By.CSS_SELECTOR, "#faces li.face")
        assert len(items) == 3
        for item in items:
            assert "age " in item.text and ("male" in item.text or "female" in item.text)
        canvas = browser.find_element(By.ID, "canvas")
        assert canvas.is_displayed() and canvas.size["width"] > 400
        # Each box's left edge is drawn on the canvas in that face's colour.
        boxes = browser.execute_script("return window.lastResult.faces.map(f => f.box)")
        edge_colours = browser.execute_script(
            """const c = document.getElementById('canvas'), ctx = c.getContext('2d');
            const s = c.width / 960;
            return arguments[0].map(([x0, y0, x1, y1]) => Array.from(ctx.getImageData(
                Math.round(x0 * s), Math.round((y0 + y1) / 2 * s), 1, 1).data.slice(0, 3)));""",
            boxes,
        )
        for (r, g, b), want in zip(edge_colours, BOX_COLOURS):
            assert max(abs(r - want[0]), abs(g - want[1]), abs(b - want[2])) < 40, (r, g, b)
        shot = Path(os.environ.get("UTKFACE_SCREENSHOT", tmp_path / "serve-demo.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.quit()
