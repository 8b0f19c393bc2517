"""Batched training augmentation on normalized float images, one `grid_sample` per batch.

Every sample gets its own horizontal flip, zoom and shift (one affine grid), then a mild
brightness / contrast / saturation jitter; there is no per-sample Python in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    flip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (0.9, 1.1)  # zoom range (>1 zooms in)
    shift: float = 0.06  # max shift, as a fraction of the image side
    rotate: float = 8.0  # max rotation in degrees
    brightness: float = 0.2  # max relative change
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (B, 3, S, S) normalized float -> same shape, augmented."""
        batch = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator).mul_(high - low).add_(low).to(x.device)

        zoom = uniform(*self.scale)
        angle = uniform(-self.rotate, self.rotate) * (torch.pi / 180)
        flip = torch.where(uniform(0, 1) < self.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, uniform(-self.shift, self.shift) * 2], dim=1),
                torch.stack([sin * flip, cos, uniform(-self.shift, self.shift) * 2], dim=1),
            ],
            dim=1,
        )  # (B, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

        brightness = uniform(-self.brightness, self.brightness).view(-1, 1, 1, 1)
        contrast = uniform(1 - self.contrast, 1 + self.contrast).view(-1, 1, 1, 1)
        saturation = uniform(1 - self.saturation, 1 + self.saturation).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness * 4  # ~4 std units = the 0..1 range
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey) * saturation + grey
        return x.contiguous(memory_format=torch.channels_last)
