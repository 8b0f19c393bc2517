"""What a model takes in and gives out, in numpy: the input spec and the decoded predictions.

Every backend (ONNX Runtime here, PyTorch in `models/`) maps uint8 `(B, S, S, 3)` RGB crops to a
dict of float32 predictions with the keys of `OUTPUT_NAMES` that the model has:

- `age` `(B,)`: expected age in years; `age_low`/`age_high` `(B,)`: the `INTERVAL` percentiles
  of the age distribution; `age_probs` `(B, 117)`: the distribution itself (distribution
  models only; a regressor gives `age` alone);
- `gender_prob` `(B,)`: P(female); `race_prob` `(B, 5)`: P(White, Black, Asian, Indian, Others).

The torch side computes them with `models.registry.decode_outputs` (traced into the ONNX graph);
`decode_age` is the same decoding of a distribution in numpy, for the tracker's averaged
distributions and for flip test-time augmentation (`average_views`), which combine predictions
after the model has run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUTPUT_NAMES = ("age", "age_low", "age_high", "gender_prob", "race_prob", "age_probs")
INTERVAL = (0.1, 0.9)  # the age interval is the 10th..90th percentile of the age distribution
SMALLEST_PROB = 1e-30  # a probability rounded to 0 in float32, for its logarithm
# float32 tells P(female) apart from 1 only down to 1 - 2**-24 = logit 16.6: a logit recovered
# from a larger P(female) is this, so a saturated view counts as this confident, not infinitely
GENDER_LOGIT_LIMIT = float(np.log(2.0**24 - 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalization of ImageNet-pretrained backbones
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The model's input: square side in pixels, the per-channel normalization (0..1 scale)
    applied to uint8 RGB, and the centre fraction of the side the network sees (all inside the
    ONNX graph; `models.preprocess.Preprocess` in torch)."""

    size: int = 128  # square input side in pixels; images are centre-cropped and resized to it
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean, on the 0..1 scale
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel std, on the 0..1 scale
    crop: float = 1.0  # the network sees the central round(crop * size) pixels of each side

    def to_dict(self) -> dict:
        values = {"size": self.size, "mean": list(self.mean), "std": list(self.std)}
        if self.crop != 1.0:  # files written before the crop existed, and without one, match
            values["crop"] = self.crop
        return values

    @classmethod
    def from_dict(cls, values: dict):
        return cls(
            size=int(values["size"]),
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
            crop=float(values.get("crop", 1.0)),
        )

    @property
    def window(self) -> tuple[int, int]:
        """(first pixel, side) of the central square the network sees."""
        side = max(1, round(self.crop * self.size))
        return (self.size - side) // 2, side


def decode_age(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(B, 117)` age distributions -> expected age and the `INTERVAL` percentiles, each `(B,)`
    (as `models.registry.decode_age` in torch)."""
    probs = np.asarray(probs)
    ages = np.arange(probs.shape[1], dtype=probs.dtype)
    low, high = (age_quantile(probs, q) for q in INTERVAL)
    return probs @ ages, low, high


def age_quantile(probs: np.ndarray, q: float) -> np.ndarray:
    """Smallest age k with P(age <= k) >= q, per row of a `(B, 117)` distribution."""
    below = (np.cumsum(probs, axis=1) < q - 1e-6).sum(axis=1)
    return np.minimum(below, probs.shape[1] - 1).astype(probs.dtype)


def average_views(views: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Predictions for several views of the same faces (a crop and its mirror image: flip
    test-time augmentation) combined as averaging the model's raw outputs would combine them:
    a distribution by the mean of its log-probabilities (the logits up to a constant), P(female)
    by the mean logit, a regressed age by its mean; then decoded again like one prediction."""
    first = views[0]
    out: dict[str, np.ndarray] = {}
    if "age_probs" in first:
        probs = _softmax(np.mean([_log(view["age_probs"]) for view in views], axis=0))
        out["age"], out["age_low"], out["age_high"] = decode_age(probs)
        out["age_probs"] = probs
    elif "age" in first:
        out["age"] = np.mean([view["age"] for view in views], axis=0)
    if "gender_prob" in first:
        logit = np.mean([gender_logit(view["gender_prob"]) for view in views], axis=0)
        out["gender_prob"] = 1 / (1 + np.exp(-logit))
    if "race_prob" in first:
        out["race_prob"] = _softmax(np.mean([_log(view["race_prob"]) for view in views], axis=0))
    return {key: value.astype(np.float32) for key, value in out.items()}


def gender_logit(gender_prob: np.ndarray) -> np.ndarray:
    """log(P / (1 - P)) of P(female), within +-`GENDER_LOGIT_LIMIT` (float64)."""
    p = np.asarray(gender_prob, np.float64)
    return np.clip(_log(p) - _log(1 - p), -GENDER_LOGIT_LIMIT, GENDER_LOGIT_LIMIT)


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, np.float64), SMALLEST_PROB))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
