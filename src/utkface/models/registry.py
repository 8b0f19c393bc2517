"""Networks, chosen by name, and the decoding of their raw outputs into predictions.

- `mobilenet_v2` (default) and other torchvision backbones: one shared backbone with one head per
  task. Age is a distribution over 0..116, gender one logit of P(female), race five logits.
- `mobilefacenet`, `hse_mobilenet_v1`: the same heads on backbones pretrained on faces
  (`face_backbones`), each with its own input normalization and framing.
- `seed_gender` / `seed_age`: the seed project's two Keras CNNs, layer for layer (200 px input,
  'valid' 3x3 convolutions, MaxPool(3, stride 2), Dropout 0.2, Dense 512).

Forward passes return dicts of raw outputs (shapes in docs/ARCHITECTURE.md); `decode_outputs`
turns them into ages, intervals and probabilities (the keys of `runtime.model_io.OUTPUT_NAMES`;
ONNX exports trace it into their graph). Nothing here imports training code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn

from utkface.models.face_backbones import (
    CAFFE_MEAN,
    CAFFE_STD,
    FACE_WEIGHTS,
    FaceWeights,
    PretrainedWeightsError,
    face_backbone,
)
from utkface.models.preprocess import Preprocess
from utkface.runtime.errors import OptionError
from utkface.runtime.model_io import IMAGENET_MEAN, IMAGENET_STD, INTERVAL
from utkface.runtime.names import NUM_AGES, RACES

TASKS = ("age", "gender", "race")
# name -> attribute holding the ImageNet classifier, which is replaced by our heads
BACKBONES = {
    "mobilenet_v2": "classifier",
    "mobilenet_v3_small": "classifier",
    "mobilenet_v3_large": "classifier",
    "efficientnet_b0": "classifier",
    "resnet18": "fc",
    "resnet50": "fc",
}
TASK_OUTPUTS = {"age": NUM_AGES, "gender": 1, "race": len(RACES)}
# MobileFaceNet was trained on ArcFace's 112 px framing; the fraction of a UTKFace crop's side
# that it sees (the centre), see docs/ARCHITECTURE.md
MOBILEFACENET_CROP = 1.0


class MultiTaskNet(nn.Module):
    """A backbone (torchvision's or a face-pretrained one), global-average pooled, with one
    linear head per task."""

    def __init__(self, backbone: str, tasks: Sequence[str], pretrained: bool, dropout: float = 0.2):
        super().__init__()
        if backbone in FACE_WEIGHTS:
            self.backbone = face_backbone(backbone, pretrained)
        else:
            self.backbone = _torchvision_backbone(backbone, pretrained)
        features = _feature_width(self.backbone)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict(
            {task: nn.Linear(features, TASK_OUTPUTS[task]) for task in tasks}
        )
        if hasattr(self.backbone, "init_heads"):  # a backbone that came with heads of its own
            self.backbone.init_heads(self.heads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(x))  # (B, F)
        raw = {task: head(features) for task, head in self.heads.items()}
        if "gender" in raw:
            raw["gender"] = raw["gender"].squeeze(1)  # (B,) logit of P(female)
        return raw


class SeedCNN(nn.Module):
    """The seed's Keras CNN: [Conv3x3 valid + ReLU + MaxPool(3, 2)] per width, Flatten,
    Dropout 0.2, Dense 512 + ReLU, Dense 1 (a sigmoid logit for gender, linear for age)."""

    def __init__(self, widths: Sequence[int], output: str, size: int = 200):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = 3, size
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)]
            channels, side = width, (side - 2 - 3) // 2 + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(channels * side * side, 512),
            nn.ReLU(inplace=True),
            nn.Linear(512, 1),
        )
        self.output = output

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.output: self.head(self.features(x)).squeeze(1)}


@dataclass(frozen=True)
class ModelEntry:
    """Everything specific to one model name, in one place: training, checkpoints and prediction
    ask here rather than testing names."""

    build: Callable[..., nn.Module]  # (tasks, pretrained, **options) -> the network
    tasks: tuple[str, ...] | None = None  # the fixed tasks of a one-task model; None = any
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalization (0..1 scale)
    std: tuple[float, float, float] = IMAGENET_STD
    options: tuple[str, ...] = ("dropout",)  # TrainConfig fields passed on to `build`
    crop: float = 1.0  # the centre fraction of the input's side that the network sees
    weights: FaceWeights | None = None  # where `pretrained` weights come from, if not torchvision

    def preprocess(self, size: int) -> Preprocess:
        return Preprocess(size, self.mean, self.std, self.crop)


def _seed_cnn(widths: Sequence[int], output: str) -> Callable[..., nn.Module]:
    return lambda tasks, pretrained: SeedCNN(widths, output=output)


MODELS: dict[str, ModelEntry] = {
    **{name: ModelEntry(partial(MultiTaskNet, name)) for name in BACKBONES},
    "mobilefacenet": ModelEntry(
        partial(MultiTaskNet, "mobilefacenet"),
        crop=MOBILEFACENET_CROP,
        weights=FACE_WEIGHTS["mobilefacenet"],
    ),
    # Caffe-style input: RGB 0..255 minus the mean, not divided
    "hse_mobilenet_v1": ModelEntry(
        partial(MultiTaskNet, "hse_mobilenet_v1"),
        mean=CAFFE_MEAN,
        std=CAFFE_STD,
        weights=FACE_WEIGHTS["hse_mobilenet_v1"],
    ),
    # The seed scaled pixels to 0..1 and had no options.
    "seed_gender": ModelEntry(
        _seed_cnn((36, 64, 128, 256, 512), "gender"), ("gender",), (0.0,) * 3, (1.0,) * 3, ()
    ),
    "seed_age": ModelEntry(
        _seed_cnn((128, 128, 256, 512), "age_value"), ("age",), (0.0,) * 3, (1.0,) * 3, ()
    ),
}
MODEL_NAMES = tuple(MODELS)  # the backbones, the face backbones, then the seed's two CNNs


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise OptionError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODELS[name]


def build_model(
    name: str = "mobilenet_v2",
    tasks: Sequence[str] = ("age", "gender"),
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a model by name. `tasks` applies to backbone models; seed models have one task."""
    entry = model_entry(name)
    if entry.tasks is None:
        unknown = [task for task in tasks if task not in TASKS]
        if unknown or not tasks:
            raise OptionError(
                f"unknown or empty tasks {list(tasks)}; choose from {', '.join(TASKS)}"
            )
    return entry.build(tasks, pretrained, **kwargs)


def model_tasks(name: str, tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks a model of this name actually predicts."""
    return model_entry(name).tasks or tuple(tasks)


def decode_age(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 117) age distributions -> expected age and the `INTERVAL` percentiles, each (B,);
    `runtime.model_io.decode_age` is the same in numpy, for predictions combined after the
    model ran (tests check they agree)."""
    ages = torch.arange(probs.shape[1], device=probs.device, dtype=probs.dtype)
    low, high = (age_quantile(probs, q) for q in INTERVAL)
    return probs @ ages, low, high


@torch.no_grad()
def decode_outputs(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw outputs -> predictions: `age`, `age_low`, `age_high`, `age_probs` (the (B, 117)
    distribution itself, which video tracking averages), `gender_prob`, `race_prob`."""
    out: dict[str, torch.Tensor] = {}
    if "age" in raw:
        probs = raw["age"].float().softmax(dim=1)  # (B, 117)
        out["age"], out["age_low"], out["age_high"] = decode_age(probs)
        out["age_probs"] = probs
    if "age_value" in raw:
        out["age"] = raw["age_value"].float()
    if "gender" in raw:
        out["gender_prob"] = raw["gender"].float().sigmoid()
    if "race" in raw:
        out["race_prob"] = raw["race"].float().softmax(dim=1)
    return out


def age_quantile(probs: torch.Tensor, q: float) -> torch.Tensor:
    """Smallest age k with P(age <= k) >= q, per row of a (B, 117) distribution."""
    cdf = probs.cumsum(dim=1)
    return (cdf < q - 1e-6).sum(dim=1).clamp(max=probs.shape[1] - 1).to(probs.dtype)


def _torchvision_backbone(name: str, pretrained: bool) -> nn.Module:
    weights = _pick_weights(name) if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as error:  # download or file errors come in many types
        raise PretrainedWeightsError(
            f"could not load ImageNet weights for {name} ({type(error).__name__}: {error}). "
            f"Allow the download, or set TORCH_HOME to a folder holding "
            f"hub/checkpoints/{weights.url.rsplit('/', 1)[-1] if weights else '?'}, "
            "or train from scratch with --no-pretrained."
        ) from error
    setattr(model, BACKBONES[name], nn.Identity())
    return model


def _pick_weights(name: str):
    """ImageNet weights for `name`: a version already in torch's hub cache if there is one
    (so offline machines work), else the torchvision default, which is downloaded."""
    enum = torchvision.models.get_model_weights(name)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in enum:
        if (cache / weights.url.rsplit("/", 1)[-1]).is_file():
            return weights
    return enum.DEFAULT


def _feature_width(backbone: nn.Module) -> int:
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        width = backbone(torch.zeros(1, 3, 64, 64)).shape[1]
    backbone.train(was_training)
    return int(width)
