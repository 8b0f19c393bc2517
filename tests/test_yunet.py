"""The built-in YuNet detector: its decoding on a raw output made by hand and on a real pasted
crop, non-maximum suppression, the file's SHA-256 check, the similarity that maps its 5 points
onto UTKFace's framing, and a whole photo predicted without dlib."""

from __future__ import annotations

import io
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from utkface.runtime import faces, landmarks, yunet
from utkface.runtime.errors import CheckpointError
from utkface.runtime.sources import iter_members


def blank_outputs() -> dict[str, np.ndarray]:
    """YuNet's raw outputs with every cell scoring 0 and every offset 0."""
    outputs = {}
    for stride in yunet.STRIDES:
        cells = (yunet.SIDE // stride) ** 2
        for kind, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
            outputs[f"{kind}_{stride}"] = np.zeros((1, cells, width), np.float32)
    return outputs


def test_decode_places_a_cell_by_its_stride_grid_and_offsets():
    outputs = blank_outputs()
    cell = 3 * 40 + 5  # stride 16: a 40 x 40 grid, row 3, column 5
    outputs["cls_16"][0, cell] = 0.81
    outputs["obj_16"][0, cell] = 1.0
    outputs["bbox_16"][0, cell] = (0.5, 0.25, np.log(4.0), np.log(6.0))
    outputs["kps_16"][0, cell] = np.arange(10) / 10
    outputs["cls_8"][0, 7] = outputs["obj_8"][0, 7] = 0.5  # score 0.5: below the threshold
    boxes, scores, points = yunet.decode(outputs, threshold=0.6)
    assert scores == pytest.approx([0.9])  # sqrt(cls * obj)
    centre = ((5 + 0.5) * 16, (3 + 0.25) * 16)  # (88, 52); 64 x 96 px
    assert boxes[0] == pytest.approx(
        (centre[0] - 32, centre[1] - 48, centre[0] + 32, centre[1] + 48)
    )
    offsets = (np.arange(10) / 10).reshape(5, 2)
    assert points[0] == pytest.approx((np.array([5, 3]) + offsets) * 16)


def test_nms_keeps_the_surest_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.7, 0.9, 0.8, 0.95])
    # IoU(3, 1) = 81 / 109 > 0.3: 1 goes; 0 overlaps 3 (0.9): goes too; 2 stands alone.
    assert yunet.nms(boxes, scores, 0.3).tolist() == [3, 2]


@pytest.fixture(scope="module")
def crop(real_data) -> np.ndarray:
    member = next(m for m in iter_members(real_data) if m.data)
    return np.asarray(Image.open(io.BytesIO(member.data)).convert("RGB"))


def test_a_pasted_crop_is_found_where_it_was_pasted_with_its_landmarks_in_order(crop):
    photo = Image.new("RGB", (900, 600), (90, 120, 150))
    photo.paste(Image.fromarray(crop).resize((180, 180)), (500, 250))
    boxes, scores, points = yunet.detect(np.asarray(photo))
    assert len(boxes) == 1 and scores[0] > 0.6
    left, top, right, bottom = boxes[0]
    assert 500 - 20 < left < right < 680 + 20 and 250 - 30 < top < bottom < 430 + 20
    right_eye, left_eye, nose, mouth_right, mouth_left = points[0]
    assert right_eye[0] < nose[0] < left_eye[0]  # the subject's right eye: the image's left
    assert mouth_right[0] < nose[0] < mouth_left[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_right[1], mouth_left[1])
    # The chip of these points re-frames the pasted square.
    (face,) = faces.detect_faces(photo, detector="yunet")
    assert faces.box_iou(face.crop, (500, 250, 680, 430)) > 0.7


def test_a_changed_file_is_refused(tmp_path):
    changed = tmp_path / yunet.FILE
    shutil.copyfile(yunet.path(), changed)
    assert yunet.load(changed) is not None  # the shipped bytes load
    data = bytearray(changed.read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{yunet.FILE}: SHA-256 .* does not match"):
        yunet.load(changed)


def test_the_similarity_puts_the_template_points_where_they_belong():
    template = np.asarray(yunet.TEMPLATE)
    turn = np.radians(25.0)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    points = 1.7 * template @ rotation.T + (300.0, 120.0)
    scale, found, shift = landmarks.similarity(template, points)
    assert scale == pytest.approx(1.7) and found == pytest.approx(rotation)
    assert shift == pytest.approx((300.0, 120.0))
    chip = landmarks.chip_of([tuple(p) for p in points], yunet.TEMPLATE)
    assert chip.angle == pytest.approx(turn)
    # A chip's pixel (u, v) lies at centre + R(angle) (u - 99.5, v - 99.5) * side / 199.
    left, top, right, bottom = chip.rect
    step, middle = (right - left) / 199, (landmarks.CHIP_SIZE - 1) / 2
    centre = np.array([(left + right) / 2, (top + bottom) / 2])
    placed = centre + (template - middle) @ (rotation * step).T
    assert placed == pytest.approx(points)
    # The pixels follow: a dot drawn at each point lands on the template in the cut chip.
    photo = np.zeros((500, 700, 3), np.uint8)
    for x, y in points.round().astype(int):
        photo[y - 2 : y + 3, x - 2 : x + 3] = 255
    cut = landmarks.extract_chip(photo, chip)
    for x, y in template.round().astype(int):
        assert cut[y, x].min() > 100


def test_a_whole_photo_is_predicted_without_dlib(crop, monkeypatch):
    from utkface.runtime.predict import Predictor

    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    photo = Image.new("RGB", (800, 600), (90, 120, 150))
    photo.paste(Image.fromarray(crop).resize((160, 160)), (100, 300))
    predictor = Predictor.from_pretrained(workers=1)  # faces auto, detector yunet
    (result,) = predictor.predict([photo])
    assert result.error is None and result.mode == "detect" and len(result.faces) == 1
    (face,) = result.faces
    assert (
        100 < (face.box[0] + face.box[2]) / 2 < 260 and 300 < (face.box[1] + face.box[3]) / 2 < 460
    )
    assert 0 <= face.age <= 116 and 0 < face.score <= 1
    # ...and a crop is still taken as one (auto), its face found by YuNet too
    assert predictor.predict(Image.fromarray(crop)).mode == "aligned"
