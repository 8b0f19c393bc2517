"""The eval preprocessing preset: uint8 RGB batch -> normalized float NCHW.

A checkpoint stores its `Preprocess`; training validation, evaluation, prediction and ONNX
export all apply exactly that object, so training and serving cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    size: int = 128  # square input side in pixels; images are centre-cropped and resized to it
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean, on the 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel std, on the 0..1 scale

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, channels-last in memory."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 images, got shape {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != (self.size, self.size):
            raise ValueError(
                f"expected {self.size}x{self.size} images, got {images.shape[1]}x{images.shape[2]}"
            )
        x = images.permute(0, 3, 1, 2).float()  # a channels-last view, no copy
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        return cls(size=int(values["size"]), mean=tuple(values["mean"]), std=tuple(values["std"]))
