"""The camera mode of the web page: `POST /api/track` through FastAPI's test client (faces keep
their tracks over a session's frames, sessions are separate and bounded, bad sessions are 400),
and the page in headless Chromium with a fake camera fed by a generated clip (boxes and ages
drawn over the video, the page's own count of frames a second shown; a denied permission gives
a clear message). The browser helpers and the `live_server` fixture (which serves this module's
`predictor`) come from test_serve.py."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("dlib", reason="the detect extra is not installed (faces are found by dlib)")
pytest.importorskip("av", reason="the video extra is not installed (the fake camera's clip)")

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx works the same here
    warnings.simplefilter("ignore", DeprecationWarning)
    from fastapi.testclient import TestClient  # noqa: E402
from test_serve import CHROMIUM_FLAGS, _browser_or_skip, live_server  # noqa: E402, F401
from tiny_checkpoints import tiny_checkpoint  # noqa: E402

from benchmarks.clips import moving_faces, real_crops, write_clip  # noqa: E402
from utkface.apps.serve import create_app  # noqa: E402
from utkface.runtime.images import square_resize  # noqa: E402
from utkface.runtime.predict import Predictor  # noqa: E402

SESSION = "test-session-1"


@pytest.fixture(scope="module")
def crops(real_data) -> np.ndarray:
    return real_crops(12, real_data)


@pytest.fixture(scope="module")
def predictor(crops, tmp_path_factory) -> Predictor:
    # A trained model for the screenshot: UTKFACE_DEMO_CHECKPOINT=runs/x/best.pt
    if os.environ.get("UTKFACE_DEMO_CHECKPOINT"):
        return Predictor.from_checkpoint(os.environ["UTKFACE_DEMO_CHECKPOINT"])
    images = np.stack([square_resize(Image.fromarray(crop), 64) for crop in crops])
    path = tiny_checkpoint(tmp_path_factory.mktemp("camera") / "tiny.pt", images, size=64)
    return Predictor.from_checkpoint(path)


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_track_api_keeps_tracks_per_session(predictor, crops):
    client = TestClient(create_app(predictor))
    frames = list(moving_faces(crops[[3, 8]], size=(320, 240), frames=30))[::3]  # ~8 fps

    def send(frame, session=SESSION, t=0.0):
        response = client.post(
            f"/api/track?session={session}&t={t}",
            content=jpeg(frame),
            headers={"Content-Type": "image/jpeg"},
        )
        assert response.status_code == 200, response.text
        return response.json()

    # frames ~0.12 s apart on the camera's clock, however slowly the server answers
    answers = [send(frame, t=0.12 * index) for index, frame in enumerate(frames)]
    assert all(len(answer["faces"]) == 2 for answer in answers)
    assert {face["track"] for answer in answers for face in answer["faces"]} == {1, 2}
    last = answers[-1]["faces"][0]
    assert {"box", "age", "age_interval", "gender", "track", "frame"} <= set(last)
    assert last["age"] != last["frame"]["age"]  # the smoothed estimate is not this frame's
    assert [face["track"] for face in send(frames[0], "another-session")["faces"]] == [1, 2]
    assert len(client.app.state.camera_sessions) == 2
    bad = client.post("/api/track?session=x", content=jpeg(frames[0]))
    assert bad.status_code == 400 and bad.json()["error"] == "bad_session"


def test_camera_page_in_headless_chromium_with_a_fake_camera(live_server, crops, tmp_path):  # noqa: F811
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    clip = tmp_path / "camera.y4m"  # Chromium's fake camera plays .y4m (raw yuv420p) in a loop
    write_clip(clip, moving_faces(crops[[3, 8]], size=(640, 480), frames=100), fps=25)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    flags = (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--use-fake-ui-for-media-stream",  # grant the camera without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
        "--autoplay-policy=no-user-gesture-required",
    )
    for flag in flags:
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        browser.get(live_server)
        status = browser.find_element(By.ID, "camera-status")
        # A refused permission is a clear message, not a broken page.
        browser.execute_script(
            "navigator.mediaDevices.getUserMedia = () => Promise.reject("
            "new DOMException('denied', 'NotAllowedError'));"
        )
        browser.find_element(By.ID, "camera-start").click()
        WebDriverWait(browser, 10).until(lambda _: status.get_attribute("data-state") == "error")
        assert "permission was denied" in status.text
        browser.refresh()
        status = browser.find_element(By.ID, "camera-status")
        browser.find_element(By.ID, "camera-start").click()
        WebDriverWait(browser, 120).until(
            lambda _: (
                browser.execute_script("return window.camera.frames") >= 8
                or status.get_attribute("data-state") == "error"
            )
        )
        assert status.get_attribute("data-state") == "running", status.text
        # The last answer and the overlay as drawn from it, read in one go (no redraw between).
        result, edges, said = browser.execute_script(
            """const c = document.getElementById('camera-overlay'), ctx = c.getContext('2d');
            const r = window.camera.lastResult, s = c.width / r.image.width;
            return [r, r.faces.map(f => Array.from(ctx.getImageData(
                Math.round(f.box[0] * s), Math.round((f.box[1] + f.box[3]) / 2 * s), 1, 1
            ).data)), document.getElementById('camera-status').textContent];"""
        )
        assert len(result["faces"]) == 2, result
        for face in result["faces"]:
            assert face["track"] >= 1 and 0 <= face["age"] <= 116 and face["gender"]
            assert f"#{face['track']} " in said  # the status line names each track
        # The rate shown is the page's count of answers over their last 3 s (their times on its
        # clock), and the time the server says it took; read in one go, as the page wrote them.
        answered, fps, shown, elapsed_ms = browser.execute_script(
            """const r = document.getElementById('camera-rate');
            return [window.camera.answered, r.dataset.fps, r.textContent,
                    window.camera.lastResult.elapsed_ms];"""
        )
        span = (answered[-1] - answered[0]) / 1000
        rate = (len(answered) - 1) / span if span > 0 else 0.0
        assert float(fps) == pytest.approx(rate, abs=0.006), (answered, fps)
        count, ms = shown.split(" frames/s analysed, ")
        assert float(count) == pytest.approx(rate, abs=0.051)
        assert ms == f"{int(elapsed_ms + 0.5)} ms each"  # Math.round
        assert browser.find_element(By.ID, "camera-rate").is_displayed()
        # Each box's left edge is drawn on the overlay (opaque pixels over the video).
        assert all(alpha > 200 for *_, alpha in edges), edges  # opaque box pixels
        shot = Path(os.environ.get("UTKFACE_SCREENSHOT", tmp_path / "camera-demo.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        video = browser.find_element(By.ID, "camera-view")
        browser.execute_script("arguments[0].scrollIntoView()", video)
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.quit()
