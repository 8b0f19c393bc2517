"""UTKFace-C's photo conditions: each one changes a picture the way its name says, by the
documented amount, reproducibly; and the table's arithmetic, with a stand-in model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from utkface.data import corruptions
from utkface.data.corruptions import CORRUPTIONS, FullCrops, corrupt, corrupted_batch, robustness

SIDE = 200


def picture(seed: int = 0) -> Image.Image:
    """A smooth 200 px colour picture (bicubic noise), with detail at several scales."""
    coarse = np.random.default_rng(seed).integers(0, 256, (25, 25, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((SIDE, SIDE), Image.Resampling.BICUBIC)


def spot(size: int = 20) -> Image.Image:
    """Black with a white square of `size` px in the centre."""
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    low = (SIDE - size) // 2
    pixels[low : low + size, low : low + size] = 255
    return Image.fromarray(pixels)


def detail(image: Image.Image) -> float:
    x = np.asarray(image, dtype=np.float64)
    return float(np.square(np.diff(x, axis=0)).mean() + np.square(np.diff(x, axis=1)).mean())


def bright_centre_and_side(image: Image.Image) -> tuple[np.ndarray, float]:
    ys, xs = np.nonzero(np.asarray(image)[..., 0] > 127)
    return np.array([xs.mean(), ys.mean()]), float(np.sqrt(len(xs)))


def apply(name: str, image: Image.Image, seed: int = 0) -> Image.Image:
    return corrupt(image, name, np.random.default_rng(seed))


def test_every_condition_keeps_the_size_and_is_reproducible():
    image = picture()
    for name in CORRUPTIONS:
        once, again = apply(name, image, 3), apply(name, image, 3)
        assert once.size == image.size and once.mode == "RGB"
        assert np.array_equal(np.asarray(once), np.asarray(again))
        assert not np.array_equal(np.asarray(once), np.asarray(image)), name
    with pytest.raises(ValueError, match="choose from"):
        apply("sepia", image)


def test_pixel_conditions_do_what_they_say():
    image = picture()
    grey = np.asarray(apply("grayscale", image)).astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert detail(apply("blur", image)) < 0.7 * detail(image)  # a smooth picture to start with
    assert detail(apply("low_res32", image)) < 0.5 * detail(image)
    difference = np.asarray(apply("noise", image), float) - np.asarray(image, float)
    assert 10.5 < difference.std() < 12.5  # sigma 12, a little clipped at 0 and 255
    jpeg = np.asarray(apply("jpeg20", image))
    for quality, same in ((20, True), (50, False)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        assert np.array_equal(jpeg, np.asarray(Image.open(buffer))) == same


def test_exposure_is_in_linear_light():
    flat = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    # -2 stops: 128 * 0.25 ** (1 / 2.2) = 68.2; +1.5 stops: 128 * 2.83 ** (1 / 2.2) = 205.0.
    assert (np.asarray(apply("dark", flat)) == 68).all()
    assert (np.asarray(apply("bright", flat)) == 205).all()
    assert (np.asarray(apply("bright", Image.new("RGB", (4, 4), (230,) * 3))) == 255).all()


def test_geometric_conditions_move_by_the_documented_amounts():
    centre, side = bright_centre_and_side(spot(40))
    big_centre, big_side = bright_centre_and_side(spot(80))
    for seed in range(5):
        moved, moved_side = bright_centre_and_side(apply("shift", spot(40), seed))
        assert 0.10 * SIDE - 1 <= np.linalg.norm(moved - centre) <= 0.15 * SIDE + 1
        assert moved_side == pytest.approx(side, abs=1.5)
        scaled_centre, scaled_side = bright_centre_and_side(apply("scale", spot(80), seed))
        ratio = big_side / scaled_side  # the window grew by this factor (+-1 px of 80)
        assert 0.84 <= ratio <= 0.91 or 1.09 <= ratio <= 1.17
        assert scaled_centre == pytest.approx(big_centre, abs=1.5)
        turned = np.asarray(apply("rotate", Image.new("RGB", (SIDE, SIDE), "white"), seed))
        assert turned[0, 0].max() == 0 and turned[SIDE // 2, SIDE // 2].min() == 255


def test_robustness_table_arithmetic_with_a_stand_in_model():
    colour = (200, 100, 50)
    crops = FullCrops(
        images=[Image.new("RGB", (SIDE, SIDE), colour)] * 3,
        labels={"age": np.zeros(3, int), "gender": np.ones(3, int)},
        files=["a", "b", "c"],
    )

    def predict(images: np.ndarray) -> dict:
        # "age" = mean pixel value; "female" whenever the image has colour.
        x = images.astype(float)
        coloured = (x.max(axis=-1) - x.min(axis=-1)).mean(axis=(1, 2)) > 1
        return {"age": x.mean(axis=(1, 2, 3)), "gender_prob": coloured.astype(float)}

    result = robustness(predict, crops, size=32, names=["dark", "grayscale"])
    clean, dark, grey = result["rows"]
    assert clean["condition"] == "clean" and clean["age_mae"] == pytest.approx(350 / 3, abs=0.01)
    darkened = [round(255 * ((v / 255) ** 2.2 * 0.25) ** (1 / 2.2)) for v in colour]
    assert dark["age_mae"] == pytest.approx(np.mean(darkened), abs=0.01)
    assert dark["age_mae_increase"] == pytest.approx(dark["age_mae"] - clean["age_mae"])
    assert grey["gender_acc"] == 0.0 and dark["gender_acc"] == clean["gender_acc"] == 1.0
    assert result["mean_gender_acc_change"] == pytest.approx(-0.5)
    assert result["n"] == 3 and corrupted_batch(crops, None, 32).shape == (3, 32, 32, 3)


def test_full_crops_follow_the_split(tmp_path):
    from utkface.data.dataset import split_of

    names = [f"{20 + i}_{i % 2}_0_2017011617452{i:04d}.jpg.chip.jpg" for i in range(40)]
    for name in names:
        picture().resize((40, 40)).save(tmp_path / name)
    (tmp_path / "no_label.jpg").write_bytes((tmp_path / names[0]).read_bytes())
    crops = corruptions.load_full_crops(tmp_path, "val")
    assert sorted(crops.files) == sorted(n for n in names if split_of(n) == "val")
    assert len(corruptions.load_full_crops(tmp_path, None).files) == 40  # bad name left out
    assert crops.images[0].size == (40, 40)  # full resolution, not resized
