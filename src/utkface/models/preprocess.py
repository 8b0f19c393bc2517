"""The eval preprocessing preset: uint8 RGB batch -> normalized float NCHW.

A checkpoint stores its `Preprocess`; training validation, evaluation, prediction and ONNX
export all apply exactly that object, so training and serving cannot drift apart. Its fields
(size, mean, std, crop) are the runtime's `model_io.InputSpec`, which an ONNX export carries too.
"""

from __future__ import annotations

import numpy as np
import torch

from utkface.runtime.model_io import InputSpec


class Preprocess(InputSpec):
    """`InputSpec(size, mean, std, crop)` that normalizes a torch batch (traced into ONNX
    exports)."""

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 -> (B, 3, C, C) float32, channels-last in memory; C = S unless
        `crop` < 1 keeps the central C = round(crop * S) pixels of each side."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected (B, H, W, 3) uint8 images, got shape {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != (self.size, self.size):
            raise ValueError(
                f"expected {self.size}x{self.size} images, got {images.shape[1]}x{images.shape[2]}"
            )
        x = images.permute(0, 3, 1, 2).float()  # a channels-last view, no copy
        if self.crop != 1.0:
            first, side = self.window
            x = x[:, :, first : first + side, first : first + side]
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1) * 255.0
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
