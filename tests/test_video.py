"""Video: the tracker and its smoothing on hand-made boxes and outputs; a generated clip of real
UTKFace crops moving across a noisy background run through `Predictor.predict_video` and
`utkface predict clip.mp4` (one track per face, smoothed age steadier than the raw one, rows,
track summaries, annotated copy); damaged, truncated, faceless and huge inputs."""

from __future__ import annotations

import csv
import json
import math
import sys
import time

import numpy as np
import pytest
from PIL import Image
from tiny_checkpoints import tiny_checkpoint

from utkface.apps.cli import main
from utkface.runtime.images import square_resize
from utkface.runtime.tracking import SessionStore, Tracker

av = pytest.importorskip("av", reason="the video extra is not installed (pip install av)")
pytest.importorskip("dlib", reason="the detect extra is not installed (faces are found by dlib)")

from benchmarks.clips import moving_faces, real_crops, write_clip  # noqa: E402
from utkface.runtime.predict import Predictor  # noqa: E402
from utkface.runtime.video import VideoError, read_frames  # noqa: E402

FRAMES = 100
SIZE = (320, 240)  # two lanes of ~106 px faces: dlib finds faces from ~80 px without upsampling


# ---- tracker and smoothing, no model -----------------------------------------------------------


def _distribution(age: float, spread: float = 3.0) -> np.ndarray:
    probs = np.exp(-0.5 * ((np.arange(117) - age) / spread) ** 2)
    return probs / probs.sum()


def test_tracker_follows_moving_boxes_and_starts_a_new_track_after_an_absence():
    tracker = Tracker(max_missed_s=0.5)
    ids = []
    for step in range(10):  # two boxes moving 6 px per frame in opposite directions
        t = step / 25
        ids.append(
            tracker.match(
                t, [(10 + 6 * step, 10, 110, 110), (300 - 6 * step, 150, 400 - 6 * step, 250)]
            )
        )
    assert all(frame == [1, 2] for frame in ids)
    # the first face leaves; the second goes on; after 0.5 s a box where the first was is new
    for step in range(10, 30):
        assert tracker.match(step / 25, [(300 - 6 * step, 150, 400 - 6 * step, 250)]) == [2]
    assert tracker.match(30 / 25, [(70, 10, 170, 110), (120, 150, 220, 250)]) == [3, 2]
    # between detections the boxes are extrapolated at the tracks' velocity
    boxes = dict(tracker.predict(31 / 25))
    assert boxes[3] == (70, 10, 170, 110)  # a new track has no velocity yet
    assert boxes[2] == pytest.approx((114, 150, 214, 250), abs=0.5)  # 6 px per frame


def test_smoothing_is_a_mean_first_then_an_exponential_average_in_seconds():
    tracker = Tracker(tau_s=1.0)
    (track,) = tracker.match(0.0, [(0, 0, 100, 100)])
    ages = [20.0, 30.0, 40.0]
    for i, age in enumerate(ages):  # 0.01 s apart: weight 1/n wins, a plain mean
        estimate = tracker.observe(
            track, i * 0.01, (0, 0, 100, 100), {"age_probs": _distribution(age), "gender_prob": 0.9}
        )
    assert estimate.age == pytest.approx(30.0, abs=0.01) and estimate.observations == 3
    assert estimate.gender_prob == pytest.approx(0.9)  # the mean of equal logits
    assert estimate.age_low < 30 < estimate.age_high  # quantiles of the averaged distribution
    # 2 s later the weight is 1 - exp(-2) = 0.865 (> 1/4): exponential, by time, not frames
    estimate = tracker.observe(
        track, 2.02, (0, 0, 100, 100), {"age_probs": _distribution(60.0), "gender_prob": 0.9}
    )
    assert estimate.age == pytest.approx(30 + (1 - math.exp(-2)) * 30, abs=0.05)
    # a model without a distribution averages its ages
    (other,) = tracker.match(2.02, [(300, 0, 400, 100)])
    tracker.observe(other, 0.0, (300, 0, 400, 100), {"age": 10.0})
    assert tracker.observe(other, 0.0, (300, 0, 400, 100), {"age": 20.0}).age == 15.0


def test_tracks_are_bounded():
    tracker = Tracker(max_tracks=2)
    tracker.match(0.0, [(0, 0, 50, 50)])
    tracker.match(0.1, [(100, 0, 150, 50)])  # track 1 is missing from here on
    assert tracker.match(0.2, [(100, 0, 150, 50), (200, 0, 250, 50)]) == [2, 3]
    assert sorted(tracker.tracks) == [2, 3]  # the missing track made room


def test_session_store_is_bounded_in_number_and_idle_time(monkeypatch):
    store = SessionStore(list, max_sessions=2, idle_s=10)
    first = store.get("a")
    assert store.get("a") is first
    store.get("b"), store.get("c")
    assert len(store) == 2 and store.get("a") is not first  # "a" was the least recently used
    now = time.monotonic()
    monkeypatch.setattr("utkface.runtime.tracking.clock.monotonic", lambda: now + 11)
    store.get("d")
    assert len(store) == 1  # the others were idle too long


# ---- a generated clip through the model --------------------------------------------------------


@pytest.fixture(scope="module")
def crops(real_data) -> np.ndarray:
    return real_crops(12, real_data)  # (12, 200, 200, 3)


@pytest.fixture(scope="module")
def checkpoint(crops, tmp_path_factory) -> str:
    images = np.stack([square_resize(Image.fromarray(crop), 64) for crop in crops])
    # heads x3: the age jumps by a few years from frame to frame, as a weak model's does
    path = tmp_path_factory.mktemp("video") / "tiny.pt"
    return str(tiny_checkpoint(path, images, size=64, head_scale=3.0))


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def clip(crops, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "two faces.mp4"
    # Lossless: x264's lossy output differs from run to run, and with it the ages the tests
    # check; a lossless clip decodes to the same pixels every time.
    write_clip(path, moving_faces(crops[[3, 8]], size=SIZE, frames=FRAMES), fps=25, crf=0)
    return path


def test_each_face_keeps_one_track_and_its_smoothed_age_is_steady(clip, predictor):
    results = list(predictor.predict_video(clip))
    assert [r.frame for r in results] == list(range(FRAMES))
    assert results[-1].time == pytest.approx((FRAMES - 1) / 25, abs=1e-3)
    tracks: dict[int, list] = {}
    for result in results:
        for face in result.faces:
            tracks.setdefault(face.track, []).append((face.face.age, face.smoothed.age))
    assert sorted(tracks) == [1, 2] and all(len(v) >= FRAMES - 2 for v in tracks.values())
    for track, pairs in tracks.items():
        raw, smooth = np.array(pairs).T
        raw_jitter, smooth_jitter = np.diff(raw).std(), np.diff(smooth).std()
        print(
            f"track {track}: raw {raw.mean():.2f} +- {raw.std():.2f} (jitter {raw_jitter:.2f}), "
            f"smoothed {smooth.mean():.2f} +- {smooth.std():.2f} (jitter {smooth_jitter:.2f})"
        )
        assert raw_jitter > 1.5  # the model's own age does jump from frame to frame
        assert smooth_jitter <= raw_jitter / 3  # frame-to-frame changes
        assert smooth.std() <= raw.std() / 3  # and the spread over the clip
        assert abs(smooth.mean() - raw.mean()) <= 1.0


def test_every_third_frame_detected_and_tracked_between(clip, predictor):
    results = list(predictor.predict_video(clip, every=3, max_frames=30))
    assert len(results) == 30 and [r.detected for r in results[:4]] == [True, False, False, True]
    assert {face.track for r in results for face in r.faces} == {1, 2}
    assert all(len(r.faces) == 2 for r in results)
    between = [face for r in results if not r.detected for face in r.faces]
    assert between and not any(face.detected for face in between)


def test_frames_api_huge_frames_and_no_faces(crops, predictor):
    big = [
        np.kron(f, np.ones((6, 6, 1), np.uint8))
        for f in moving_faces(crops[[3]], size=(640, 360), frames=2)
    ]
    assert big[0].shape == (2160, 3840, 3)  # shrunk before detection, boxes mapped back
    results = list(predictor.predict_video(big))
    assert [len(r.faces) for r in results] == [1, 1]
    left, top, right, bottom = results[0].faces[0].face.box
    assert right - left > 400 and bottom <= 2160
    empty = [np.full((240, 320, 3), 128, np.uint8)] * 3
    assert [r.faces for r in predictor.predict_video(empty)] == [[], [], []]


def test_cli_rows_tracks_and_annotated_copy(clip, checkpoint, tmp_path, capsys):
    out, seen = tmp_path / "rows.csv", tmp_path / "seen"
    argv = ["predict", str(clip), "--checkpoint", checkpoint, "--out", str(out)]
    assert main([*argv, "--annotate", str(seen), "--max-frames", "20", "--every", "2"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and {r["track"] for r in rows} == {"1", "2"}
    first = rows[0]
    assert first["time"] == "0.0" and first["frame"] == "0" and first["detected"] == "True"
    assert first["age"] == first["smoothed_age"]  # one observation: nothing to average yet
    assert rows[-1]["age"] != rows[-1]["smoothed_age"]
    tracks = list(csv.DictReader(out.with_suffix(".tracks.csv").open()))
    assert [(t["track"], t["frames"]) for t in tracks] == [("1", "20"), ("2", "20")]
    assert "track 1: 0.0-0.8 s, 20 frames" in capsys.readouterr().out
    frames = list(read_frames(seen / "two faces.mp4"))
    assert len(frames) == 20 and frames[0].image.shape == (240, 320, 3)


def test_damaged_video_gives_rows_up_to_the_damage_and_an_error(clip, checkpoint, tmp_path, capsys):
    frames = [frame.image for frame in read_frames(clip)]
    lossy = tmp_path / "lossy.mp4"  # the clip is lossless: 4,000 bytes are part of one frame
    write_clip(lossy, frames)
    data = lossy.read_bytes()
    cut = tmp_path / "cut.mkv"
    write_clip(cut, frames[:40])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 6 // 10])  # a truncated download
    with pytest.raises(VideoError, match="cut.mkv: ends after frame"):
        for _ in read_frames(cut):
            pass
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 3] + bytes(4000) + data[len(data) // 3 + 4000 :])
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("not a video")
    out = tmp_path / "rows.jsonl"
    argv = [str(cut), str(broken), str(notvideo), "--checkpoint", checkpoint]
    assert main(["predict", *argv, "--out", str(out)]) == 1
    rows = [json.loads(line) for line in out.open()]
    errors = [row for row in rows if row.get("error")]
    assert [row["source"] for row in errors] == [str(cut), str(broken), str(notvideo)]
    assert "not a readable video" in errors[2]["error"]
    frames_before = [row["frame"] for row in rows if row["source"] == str(cut) and "frame" in row]
    last = max(frames_before)  # results up to the damage, and the error says where it was
    assert 3 <= last < 39 and f"cut.mkv: ends after frame {last} " in errors[0]["error"]
    assert "notes.mp4: error: " in capsys.readouterr().err


def test_missing_pyav_names_the_extra(monkeypatch, clip):
    from utkface.runtime.video import VideoUnavailable

    monkeypatch.setitem(sys.modules, "av", None)  # import now raises ImportError
    with pytest.raises(VideoUnavailable, match=r"utkface\[video\]"):
        next(read_frames(clip))


def test_cli_refuses_videos_mixed_with_images(checkpoint, capsys):
    assert main(["predict", "clip.mp4", "photo.jpg", "--checkpoint", checkpoint]) == 2
    assert "either videos or images" in capsys.readouterr().err
