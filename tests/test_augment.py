"""Training augmentation on uint8 images: valid pixels out, reproducible, and every photo
condition changes an image the way its name says."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from utkface.training.augment import PHOTO_CONDITIONS, Augment

# No flip, zoom, shift, rotation or colour jitter: only the photo condition under test acts.
STILL = dict(
    flip=0.0, scale=(1.0, 1.0), shift=0.0, rotate=0.0, brightness=0, contrast=0, saturation=0
)


def batch(count: int = 8, size: int = 48) -> torch.Tensor:
    """(count, size, size, 3) uint8 smooth colour pictures, different per image."""
    coarse = torch.randint(0, 256, (count, 3, 6, 6), generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(coarse.float(), size=size, mode="bicubic")
    return smooth.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def only(condition: str, **settings) -> Augment:
    return Augment(**{**STILL, "photo": 1.0, "conditions": (condition,), **settings})


def detail(images: torch.Tensor) -> float:
    """High-frequency energy: mean squared difference between neighbouring pixels."""
    x = images.float()
    return float((x[:, 1:] - x[:, :-1]).pow(2).mean() + (x[:, :, 1:] - x[:, :, :-1]).pow(2).mean())


def run(augment: Augment, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return augment(images, torch.Generator().manual_seed(seed))


def test_output_is_uint8_in_shape_and_reproducible():
    images = batch()
    augment = Augment(photo=0.5)
    first, again, other = run(augment, images), run(augment, images), run(augment, images, 1)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, images)


def test_still_augment_returns_the_images_unchanged():
    images = batch()
    assert torch.equal(run(Augment(**STILL), images), images)


def test_values_saturate_instead_of_wrapping():
    # +1.8 stops of exposure on grey 200 is 2x the white point in linear light: 255, not a
    # wrapped-around dark value.
    images = torch.full((2, 16, 16, 3), 200, dtype=torch.uint8)
    bright = run(only("exposure", exposure_stops=(1.8, 1.8)), images)
    assert (bright == 255).all()
    # -2 stops: a quarter of the light, 128 * 0.25 ** (1 / 2.2) = 68.2 grey levels.
    dark = run(only("exposure", exposure_stops=(-2.0, -2.0)), torch.full_like(images, 128))
    assert (dark == 68).all()


def test_grayscale_gives_equal_channels_with_the_luma():
    images = batch()
    grey = run(only("grayscale"), images).int()
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    luma = (images.float() * torch.tensor([0.299, 0.587, 0.114])).sum(-1).round()
    assert (grey[..., 0] - luma).abs().max() <= 1


def test_blur_and_low_resolution_remove_detail_noise_adds_it():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), np.uint8))
    images = run(only("blur", blur_sigma=(1.0, 1.0)), images)  # a smooth start for noise
    blurred = run(only("blur", blur_sigma=(1.5, 1.5)), images)
    small = run(only("low_res", low_res=(12, 12)), images)
    noisy = run(only("noise", noise_sigma=(10.0, 10.0)), images)
    assert detail(blurred) < 0.5 * detail(images)
    assert detail(small) < 0.5 * detail(images)
    assert 8 < float((noisy.float() - images.float()).std()) < 12  # sigma 10, a little clipped
    assert detail(noisy) > 2 * detail(images)


def test_jpeg_is_a_real_jpeg_round_trip():
    images = batch(2)
    out = run(only("jpeg", jpeg_quality=(15, 15)), images)
    for image, got in zip(images.numpy(), out.numpy()):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=15)
        assert (got == np.asarray(Image.open(buffer))).all()
    assert not torch.equal(out, images)


@pytest.mark.parametrize("condition", ["tilt", "reframe"])
def test_geometry_conditions_move_pixels_only_for_chosen_images(condition):
    images = batch(16)
    chosen = Augment(**{**STILL, "photo": 0.5, "conditions": (condition,)})
    out = run(chosen, images)
    changed = [not torch.equal(a, b) for a, b in zip(out, images)]
    assert 3 <= sum(changed) <= 13  # about half of 16


def test_photo_zero_draws_no_condition_and_unknown_names_fail():
    images = batch()
    plain = Augment(photo=0.0)
    assert torch.equal(run(plain, images), run(Augment(photo=0.0, conditions=("jpeg",)), images))
    with pytest.raises(ValueError, match="choose from"):
        Augment(conditions=("sepia",))
    assert len(PHOTO_CONDITIONS) == 8


def test_default_generator_is_used_when_none_is_given():
    """Training may seed torch's default generator per step instead of passing one."""
    images = batch()
    augment = Augment(photo=1.0)
    torch.manual_seed(3)
    first = augment(images)
    torch.manual_seed(3)
    assert torch.equal(augment(images), first)
    assert not torch.equal(augment(images), first)  # the stream moved on
