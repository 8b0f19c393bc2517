"""Batched training augmentation on uint8 images, before normalisation.

    augment = Augment(photo=0.3)
    images = augment(images, generator)   # (B, S, S, 3) uint8 -> (B, S, S, 3) uint8

Every image gets its own horizontal flip, zoom, shift and rotation (one affine grid for the
batch) and a mild brightness / contrast / saturation jitter. With probability `photo`, an image
also gets one photo condition, drawn uniformly from `PHOTO_CONDITIONS`: JPEG artefacts, blur,
sensor noise, a low-resolution camera, grayscale, under- or over-exposure, a stronger tilt, or a
crop shifted and scaled more than usual. The arithmetic runs in float on the 0..255 scale and the
result is rounded and clamped back to uint8, so every output is a valid image and the model's
`Preprocess` normalises training images exactly as it does served ones.

The photo conditions are UTKFace-C's (`corruptions.py`), made batched here, on the training
size, and drawn from ranges around the benchmark's fixed strengths, so training never sees the
benchmark's exact images.
Everything random comes from `generator`: a fixed seed gives the same batch.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PHOTO_CONDITIONS = (
    "jpeg",
    "blur",
    "noise",
    "low_res",
    "grayscale",
    "exposure",
    "tilt",
    "reframe",
)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
GAMMA = 2.2  # exposure is changed in linear light: decode the sRGB-like curve, scale, encode


@dataclass(frozen=True)
class Augment:
    flip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (0.9, 1.1)  # zoom range (>1 zooms in)
    shift: float = 0.06  # max shift, as a fraction of the image side
    rotate: float = 8.0  # max rotation in degrees
    brightness: float = 0.2  # max change, as a fraction of the 0..255 range
    contrast: float = 0.2
    saturation: float = 0.2
    photo: float = 0.0  # probability that an image gets one of `conditions`
    conditions: tuple[str, ...] = PHOTO_CONDITIONS  # the photo conditions drawn from
    jpeg_quality: tuple[int, int] = (10, 50)
    blur_sigma: tuple[float, float] = (0.4, 2.0)  # pixels of the training image
    noise_sigma: tuple[float, float] = (3.0, 20.0)  # grey levels
    low_res: tuple[int, int] = (20, 56)  # side in pixels the image is shrunk to and back
    exposure_stops: tuple[float, float] = (-2.5, 1.8)  # EV; gain 2**stops in linear light
    tilt: float = 25.0  # max rotation in degrees for the "tilt" condition
    reframe_shift: float = 0.16  # max shift of the "reframe" condition
    reframe_scale: tuple[float, float] = (0.82, 1.2)  # zoom range of the "reframe" condition

    def __post_init__(self):
        unknown = [name for name in self.conditions if name not in PHOTO_CONDITIONS]
        if unknown or not self.conditions:
            raise ValueError(
                f"unknown photo conditions {unknown or '(none)'}; "
                f"choose from {', '.join(PHOTO_CONDITIONS)}"
            )

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """images: (B, S, S, 3) uint8 -> (B, S, S, 3) uint8, augmented."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            shape = tuple(images.shape)
            raise ValueError(f"expected (B, S, S, 3) uint8 images, got {images.dtype} {shape}")
        batch = images.shape[0]
        device = images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator).mul_(high - low).add_(low).to(device)

        # Drawn for every image, used or not, so each setting consumes the same random stream.
        photo = uniform(0, 1) < self.photo
        pick = torch.randint(len(self.conditions), (batch,), generator=generator)
        codes = torch.tensor([PHOTO_CONDITIONS.index(name) for name in self.conditions])
        condition = torch.where(photo.cpu(), codes[pick], -1)  # (B,) PHOTO_CONDITIONS index

        def chosen(name: str) -> torch.Tensor:
            return (condition == PHOTO_CONDITIONS.index(name)).to(device)

        x = images.permute(0, 3, 1, 2).float()  # (B, 3, S, S) on 0..255
        x = self._geometry(x, uniform, chosen("tilt"), chosen("reframe"))
        x = self._colour(x, uniform)
        x = self._photo(x, condition, generator)
        x = x.clamp_(0, 255).round_().to(torch.uint8)
        return x.permute(0, 2, 3, 1).contiguous()

    def _geometry(self, x, uniform, tilt, reframe) -> torch.Tensor:
        zoom = torch.where(reframe, uniform(*self.reframe_scale), uniform(*self.scale))
        degrees = torch.where(tilt, torch.full_like(zoom, self.tilt), self.rotate)
        angle = uniform(-1, 1) * degrees * (math.pi / 180)
        flip = torch.where(uniform(0, 1) < self.flip, -1.0, 1.0)
        reach = torch.where(reframe, self.reframe_shift, self.shift) * 2  # grid units: 2 = side
        shift_x, shift_y = uniform(-1, 1) * reach, uniform(-1, 1) * reach
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, shift_x], dim=1),
                torch.stack([sin * flip, cos, shift_y], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, "bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x, uniform) -> torch.Tensor:
        brightness = uniform(-self.brightness, self.brightness).view(-1, 1, 1, 1) * 255
        contrast = uniform(1 - self.contrast, 1 + self.contrast).view(-1, 1, 1, 1)
        saturation = uniform(1 - self.saturation, 1 + self.saturation).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
        grey = _luma(x)
        return (x - grey) * saturation + grey

    def _photo(self, x, condition: torch.Tensor, generator) -> torch.Tensor:
        """The pixel conditions, each on the images that drew it (tilt and reframe are in
        `_geometry`). `condition` (B,) is on the CPU; `x` (B, 3, S, S) on 0..255."""

        def rows(name: str) -> torch.Tensor:
            return torch.nonzero(condition == PHOTO_CONDITIONS.index(name)).flatten()

        def draw(count: int, low: float, high: float) -> torch.Tensor:
            return torch.rand(count, generator=generator) * (high - low) + low

        side = x.shape[-1]
        if len(index := rows("blur")):
            x[index] = _gaussian_blur(x[index], draw(len(index), *self.blur_sigma))
        if len(index := rows("noise")):
            sigma = draw(len(index), *self.noise_sigma).to(x.device).view(-1, 1, 1, 1)
            noise = torch.randn(x[index].shape, generator=generator).to(x.device)
            x[index] = x[index] + noise * sigma
        if len(index := rows("low_res")):
            small = int(draw(1, *self.low_res).round().clamp(max=side))  # one side per batch
            shrunk = F.interpolate(x[index], size=small, mode="bilinear", antialias=True)
            x[index] = F.interpolate(shrunk, size=side, mode="bilinear", align_corners=False)
        if len(index := rows("grayscale")):
            x[index] = _luma(x[index]).expand(-1, 3, -1, -1)
        if len(index := rows("exposure")):
            gain = 2.0 ** draw(len(index), *self.exposure_stops).to(x.device).view(-1, 1, 1, 1)
            linear = (x[index].clamp(0, 255) / 255) ** GAMMA * gain
            x[index] = linear.clamp(0, 1) ** (1 / GAMMA) * 255
        if len(index := rows("jpeg")):  # last: a JPEG is what a camera or an upload stores
            quality = draw(len(index), *self.jpeg_quality).round().int().tolist()
            pixels = x[index].clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
            for row, q, image in zip(index.tolist(), quality, pixels.numpy()):
                x[row] = torch.from_numpy(_jpeg(image, q)).permute(2, 0, 1).to(x.device)
        return x


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 through a JPEG file of `quality` (PIL's libjpeg, 4:2:0) and back."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.array(Image.open(buffer).convert("RGB"))  # writable, for torch.from_numpy


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) grey."""
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one `sigma` (pixels) per image: (N, 3, H, W) -> same."""
    count, channels, height, width = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(x.dtype).view(-1, 1)) ** 2)  # (N, K)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    kernel = kernel.to(x.device)
    flat = F.pad(x.reshape(1, count * channels, height, width), [radius] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=count * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=count * channels)
    return flat.view(count, channels, height, width)
