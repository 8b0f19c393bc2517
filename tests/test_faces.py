"""Face detection and UTKFace's crop recipe, for each detector (YuNet, built in; dlib, when the
extra is installed): chip geometry, the missing-extra error, faces found where real UTKFace
crops were pasted on a larger canvas, UTKFace crops re-made from their own landmarks and from
turned, pasted copies, the auto (already aligned?) decision, the 5-point templates and box
framings against a fresh measurement, and detection from several threads."""

from __future__ import annotations

import importlib.util
import io
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from benchmarks import in_the_wild
from utkface.runtime import faces, landmarks, yunet
from utkface.runtime.sources import iter_members

needs_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None,
    reason="the detect extra (dlib) is not installed: pip install 'utkface[detect]'",
)
DETECTORS = ["yunet", pytest.param("dlib", marks=needs_dlib)]


@pytest.fixture(scope="module")
def crops(real_data) -> list[np.ndarray]:
    """43 real 200x200 UTKFace crops spread over the archive (every 500th file)."""
    members = [m for i, m in enumerate(iter_members(real_data)) if m.data and i % 500 == 0]
    return [np.asarray(Image.open(io.BytesIO(m.data)).convert("RGB")) for m in members]


def background(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour noise: a photo-like background with no face in it."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 20, width // 20, 3))
    return Image.fromarray(noise.astype(np.uint8)).resize((width, height), Image.BICUBIC)


def composite(crops, sides, places, size=(900, 600)) -> tuple[Image.Image, list[tuple]]:
    canvas = background(*size)
    pasted = []
    for crop, side, (left, top) in zip(crops, sides, places):
        canvas.paste(Image.fromarray(crop).resize((side, side), Image.BILINEAR), (left, top))
        pasted.append((left, top, left + side, top + side))
    return canvas, pasted


@pytest.mark.parametrize("detector", faces.DETECTORS)
def test_utkface_crop_is_a_scaled_shifted_square(detector):
    scale, shift = faces.FRAMING[detector]
    left, top, right, bottom = faces.utkface_crop((100, 50, 200, 170), detector)  # 120 tall
    assert right - left == pytest.approx(120 * scale)
    assert bottom - top == pytest.approx(120 * scale)
    assert (left + right) / 2 == pytest.approx(150 + 120 * shift[0])
    assert (top + bottom) / 2 == pytest.approx(110 + 120 * shift[1])


def test_chip_corners_turn_about_the_centre():
    chip = landmarks.Chip((100.0, 50.0, 200.0, 150.0), angle=np.pi / 2)
    # A quarter turn: the chip's top-left corner is the square's top-right one.
    assert chip.corners()[0] == pytest.approx([200.0, 50.0])
    assert chip.bounds() == pytest.approx((100.0, 50.0, 200.0, 150.0))
    low, high = 50 - 50 * 2**0.5, 50 + 50 * 2**0.5  # an eighth turn: the diagonal stands up
    turned = landmarks.Chip((0.0, 0.0, 100.0, 100.0), angle=np.pi / 4).bounds()
    assert turned == pytest.approx((low, low, high, high))
    assert faces.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert faces.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0


def test_crop_face_pads_outside_black_and_resizes():
    image = Image.new("RGB", (100, 80), (200, 100, 50))
    chip = landmarks.Chip((-50.0, 0.0, 50.0, 100.0), angle=0.0)  # left half outside the photo
    for crop in (faces.crop_face(image, chip, 32), faces.crop_face(image, chip.rect, 32)):
        assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
        assert crop[:, :14].max() == 0 and (crop[:10, 18:] == (200, 100, 50)).all()


def test_missing_dlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    monkeypatch.setattr(faces, "_idle", faces.queue.SimpleQueue())
    with pytest.raises(faces.DetectorUnavailable, match=r"utkface\[detect\]"):
        faces.require_detector("dlib")
    with pytest.raises(ImportError, match="dlib"):
        faces.detect_faces(Image.new("RGB", (50, 50)), detector="dlib")
    faces.require_detector("yunet")  # the built-in one needs no extra
    assert faces.detect_faces(Image.new("RGB", (50, 50))) == []
    with pytest.raises(faces.OptionError, match="yunet, dlib"):
        faces.detect_faces(Image.new("RGB", (50, 50)), detector="haar")


@pytest.mark.parametrize("detector", DETECTORS)
def test_composite_faces_found_where_pasted(crops, detector):
    sides = (90, 130, 170, 220)
    canvas, pasted = composite(crops[:4], sides, [(30, 60), (200, 300), (420, 40), (640, 330)])
    found = faces.detect_faces(canvas, detector=detector)
    assert len(found) == 4
    for face, square in zip(found, pasted):  # both left to right
        centre = ((face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2)
        assert square[0] < centre[0] < square[2] and square[1] < centre[1] < square[3]
        assert faces.box_iou(face.crop, square) > 0.6  # the crop re-frames the pasted crop
        assert face.score > 0


@pytest.mark.parametrize("detector", DETECTORS)
def test_looks_aligned_on_real_crops_and_not_on_photos(crops, detector):
    decisions = [faces.looks_aligned(Image.fromarray(c), detector)[0] for c in crops[:20]]
    assert sum(decisions) >= 18
    photo, _ = composite(crops[:2], (120, 150), [(50, 50), (400, 200)])
    aligned, found = faces.looks_aligned(photo, detector)
    assert not aligned and len(found) == 2
    square_photo, _ = composite(crops[:1], (150,), [(300, 300)], size=(640, 640))
    assert not faces.looks_aligned(square_photo, detector)[0]
    assert faces.looks_aligned(background(120, 120), detector)[0]  # small, no face: a crop
    assert not faces.looks_aligned(background(800, 800), detector)[0]  # large, no face: a photo


@needs_dlib
def test_recipe_re_makes_utkface_crops_from_their_own_landmarks(crops):
    differences = []
    for crop in crops[:20]:
        found = faces.detect_faces(Image.fromarray(crop), upsample=0, retries=(), detector="dlib")
        if found:
            again = landmarks.extract_chip(crop, found[0].chip)
            differences.append(np.abs(again.astype(np.int16) - crop).mean())
    assert len(differences) >= 18
    assert np.median(differences) < 6  # grey levels (0..255)


@needs_dlib
def test_turned_pasted_faces_are_found_and_cropped_back(real_data):
    """The in-the-wild benchmark in small: 12 test-split crops pasted at up to 30 degrees."""
    crops, _ = in_the_wild.split_crops(real_data, 12)
    rng = np.random.default_rng(0)
    found, differences = 0, []
    for crop in crops:
        state = rng.bit_generator.state
        rng.integers(90, 321)
        angle = float(rng.uniform(-30, 30))  # the tilt wild_photo is about to draw
        rng.bit_generator.state = state
        photo, where = in_the_wild.wild_photo(crop, rng)
        face, again = in_the_wild.recrop(photo, where)
        if face is None:
            continue
        found += 1
        differences.append(np.abs(again.astype(np.int16) - crop).mean())
        upright = faces.detect_faces(Image.fromarray(crop), upsample=0, retries=(), detector="dlib")
        own = np.degrees(upright[0].chip.angle) if upright else 0.0
        # The chip turns the face back by the angle it was pasted at (PIL turns counter-clockwise).
        assert np.degrees(face.chip.angle) == pytest.approx(own - angle, abs=3)
    assert found >= 11
    assert np.mean(differences) < 8


@pytest.mark.parametrize("detector", DETECTORS)
def test_framing_constants_agree_with_a_fresh_measurement(crops, detector):
    scale, (shift_x, shift_y) = faces.FRAMING[detector]
    measured = faces.measure_framing(crops[:40], seed=1, detector=detector)
    assert measured["found"] >= 0.9
    assert measured["scale"] == pytest.approx(scale, abs=0.06)
    assert measured["shift_x"] == pytest.approx(shift_x, abs=0.04)
    assert measured["shift_y"] == pytest.approx(shift_y, abs=0.04)


@pytest.mark.parametrize(
    "detector, template",
    [
        ("yunet", yunet.TEMPLATE),
        pytest.param("dlib", landmarks.FIVE_POINT_TEMPLATE, marks=needs_dlib),
    ],
)
def test_five_point_templates_agree_with_a_fresh_measurement(crops, detector, template):
    measured = faces.measure_template(crops[:40], detector)
    assert measured == pytest.approx(np.asarray(template), abs=4)


@pytest.mark.parametrize("detector", DETECTORS)
def test_detection_from_many_threads_matches_serial(crops, detector):
    images = [Image.fromarray(crop) for crop in crops[:24]]
    serial = [faces.detect_faces(image, detector=detector) for image in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(
            pool.map(lambda image: faces.detect_faces(image, detector=detector), images)
        )
    assert threaded == serial
