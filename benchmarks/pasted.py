"""The face detectors on pasted photos: found, cropped like the crop, and scored like it.

    python -m benchmarks.pasted [--split test] [--count 300] [--detectors yunet dlib]
    python -m benchmarks.pasted --split val --threshold 0.5 --retries 20   # choosing settings
    python -m benchmarks.pasted --measure          # re-measure yunet.TEMPLATE and its framing

Takes `--count` UTKFace crops of `--split` (every 7th file of it, seed 0's split) and pastes
each on a background of smooth colour noise at a random size (90-320 px), place and turn (up
to 30 degrees), seeded (`in_the_wild.wild_photo`). For each detector installed it runs the
path of `utkface predict --faces detect` on each photo (`faces.detect_faces` +
`faces.crop_face`) and prints:

- found: photos where a face is found at the pasted place (`in_the_wild.recrop`);
- crop IoU: IoU of the box around the face's UTKFace chip with the box around the pasted crop;
  crop diff: mean absolute difference of the 200 px chip from the crop itself (grey levels);
- the released model (ONNX) on the found face's crop against the same model on the crop itself
  (`--faces aligned`), over the faces found: age MAE of each, mean |age difference| between
  them, gender accuracy of each and how often the two agree;
- ms per photo: median time of detection and crop (one thread; run under the exclusive lock).

A last row, `true`, cuts each crop where it was pasted: what the pasting itself (resizing,
turning, cutting again) costs the model, the best any detector could do.

Choose the default detector, `yunet.SCORE_THRESHOLD` and `faces.RETRIES` on `--split val`;
report the test split once. `--measure` re-measures `yunet.TEMPLATE` (1,000 train-split crops,
every 17th) and `faces.FRAMING["yunet"]` (500 of them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import numpy as np
from PIL import Image

from benchmarks import in_the_wild
from utkface.data.dataset import default_source
from utkface.runtime import faces, yunet
from utkface.runtime.atomic import atomic_write
from utkface.runtime.images import square_resize
from utkface.runtime.landmarks import CHIP_SIZE, Chip, extract_chip

TRUE_PLACE = "true"  # the row of crops cut where the crop was pasted: what pasting alone costs


def installed_detectors() -> list[str]:
    return [d for d in faces.DETECTORS if d != "dlib" or importlib.util.find_spec("dlib")]


def true_chip(where: tuple) -> Chip:
    """The pasted crop (turned `degrees` counter-clockwise) as a chip of the photo."""
    x, y, side, degrees = where
    half = side * (CHIP_SIZE - 1) / CHIP_SIZE / 2  # corner pixel centres, as `Chip` has them
    return Chip((x - half, y - half, x + half, y + half), -np.radians(degrees))


def run_detector(detector: str, crops: np.ndarray, seed: int, size: int) -> dict:
    """Photos made from `crops` (seeded), the detector's face in each (`TRUE_PLACE`: the
    pasted crop itself, cut from the photo): per photo `found`, `iou`, `diff`, `seconds`, and
    the model-sized crops of the faces found (`photo_crops`)."""
    rng = np.random.default_rng(seed)
    rows = {"found": [], "iou": [], "diff": [], "seconds": []}
    photo_crops = []
    for crop in crops:
        photo, where = in_the_wild.wild_photo(crop, rng)
        started = time.perf_counter()
        if detector == TRUE_PLACE:
            chip = true_chip(where)
            face, chip_pixels = chip, extract_chip(np.asarray(photo), chip)
        else:
            face, chip_pixels = in_the_wild.recrop(photo, where, detector=detector)
            chip = face.chip if face is not None else None
        if face is not None:
            photo_crops.append(faces.crop_face(np.asarray(photo), chip, size))
        rows["seconds"].append(time.perf_counter() - started)
        rows["found"].append(face is not None)
        if face is not None:
            rows["iou"].append(faces.box_iou(chip.bounds(), true_chip(where).bounds()))
            rows["diff"].append(np.abs(chip_pixels.astype(np.int16) - crop).mean())
    return {key: np.asarray(value) for key, value in rows.items()} | {"photo_crops": photo_crops}


def score(backend, crops: np.ndarray, photo_crops: list, found: np.ndarray, labels) -> dict:
    """The model on the found faces' crops against the model on the crops themselves."""
    size = backend.preprocess.size
    own = np.stack([square_resize(Image.fromarray(c), size) for c in crops[found]])
    on_crop, on_photo = backend(own), backend(np.stack(photo_crops))
    age, female = labels["age"][found], labels["gender"][found] == 1
    crop_female, photo_female = on_crop["gender_prob"] >= 0.5, on_photo["gender_prob"] >= 0.5
    return {
        "crop_mae": float(np.abs(on_crop["age"] - age).mean()),
        "photo_mae": float(np.abs(on_photo["age"] - age).mean()),
        "age_diff": float(np.abs(on_photo["age"] - on_crop["age"]).mean()),
        "crop_gender_acc": float((crop_female == female).mean()),
        "photo_gender_acc": float((photo_female == female).mean()),
        "gender_agree": float((crop_female == photo_female).mean()),
    }


def measure(source) -> dict:
    """`yunet.TEMPLATE` and `faces.FRAMING["yunet"]`, measured again on train-split crops."""
    crops, _ = in_the_wild.split_crops(source, 1000, split="train", every=17)
    template = faces.measure_template(crops, detector="yunet")
    framing = faces.measure_framing(crops[:500], seed=0, detector="yunet")
    print(f"yunet.TEMPLATE from {len(crops)} train-split crops: {np.round(template, 1).tolist()}")
    print(f'faces.FRAMING["yunet"] from 500 of them: {framing}')
    return {"template": template.tolist(), "framing": framing}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="UTKFace download (default: $UTKFACE_DATA)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--detectors", nargs="+", choices=(*faces.DETECTORS, TRUE_PLACE))
    parser.add_argument("--threshold", type=float, help="YuNet's score threshold to try")
    parser.add_argument("--retries", type=float, nargs="*", help="YuNet's retry turns to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure", action="store_true", help="re-measure YuNet's template")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    source = args.data or default_source()
    if args.measure:
        return measure(source)
    if args.threshold is not None:
        yunet.SCORE_THRESHOLD = args.threshold
    if args.retries is not None:
        faces.RETRIES["yunet"] = tuple((float(a), 1.0) for a in args.retries)

    from utkface.runtime import released
    from utkface.runtime.onnx_backend import OnnxBackend

    backend = OnnxBackend(released.path(), threads=1)
    crops, labels = in_the_wild.split_crops(source, args.count, split=args.split)
    print(
        f"{len(crops)} {args.split}-split crops pasted at 90-320 px, up to 30 degrees, seed "
        f"{args.seed}; YuNet threshold {yunet.SCORE_THRESHOLD:g}, retries "
        f"{[a for a, _ in faces.RETRIES['yunet']]}; model {released.NAME} (ONNX)"
    )
    print(
        f"{'detector':8s} {'found':>7s} {'IoU':>5s} {'diff':>5s} {'MAE crop':>8s} "
        f"{'photo':>6s} {'|dage|':>6s} {'gender crop':>11s} {'photo':>6s} {'agree':>6s} "
        f"{'ms':>5s}"
    )
    results = {}
    for detector in args.detectors or [*installed_detectors(), TRUE_PLACE]:
        rows = run_detector(detector, crops, args.seed, backend.preprocess.size)
        found = rows["found"]
        result = {
            "found": int(found.sum()),
            "faces": len(crops),
            "found_share": float(found.mean()),
            "crop_iou": float(rows["iou"].mean()),
            "crop_diff": float(rows["diff"].mean()),
            "ms_per_photo": 1000 * statistics.median(rows["seconds"]),
        }
        result |= score(backend, crops, rows["photo_crops"], found, labels)
        results[detector] = result
        print(
            f"{detector:8s} {100 * result['found_share']:6.1f}% {result['crop_iou']:5.3f} "
            f"{result['crop_diff']:5.1f} {result['crop_mae']:8.2f} {result['photo_mae']:6.2f} "
            f"{result['age_diff']:6.2f} {100 * result['crop_gender_acc']:10.1f}% "
            f"{100 * result['photo_gender_acc']:5.1f}% {100 * result['gender_agree']:5.1f}% "
            f"{result['ms_per_photo']:5.0f}"
        )
    if args.json:
        atomic_write(args.json, json.dumps(vars(args) | {"results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
