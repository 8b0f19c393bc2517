"""Training configuration: one typed dataclass of defaults, then a YAML/TOML file, then flags.

Unknown keys are errors, bad choices fail at once naming the valid ones, and the resolved
config is printed at start and written into the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utkface.models.registry import MODEL_NAMES, TASKS
from utkface.runtime.errors import OptionError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")


class ConfigError(OptionError):
    """A bad setting; the message names the valid choices."""


SEED_PRESET_NAMES = ("seed",) + tuple(name for name in MODEL_NAMES if name.startswith("seed_"))


@dataclass
class TrainConfig:
    model: str = (
        "mobilenet_v2"  # a backbone name, or `seed` (both seed CNNs), `seed_gender`, `seed_age`
    )
    tasks: tuple[str, ...] = ("age", "gender", "race")  # heads of the multi-task model
    pretrained: bool = True  # start from ImageNet weights (torchvision's weights API)
    # start from a checkpoint's weights instead (a .pt/.safetensors path, or "released": the
    # model shipped in the package), the same network; the schedule starts afresh
    init: str | None = None
    size: int = 112  # input side in pixels (tuned on val: 96-128 score alike per CPU minute)
    epochs: int = 14  # full passes over train (ignored when time_budget is set)
    time_budget: float | None = None  # minutes for the whole run; sets the schedule's length
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate of AdamW
    weight_decay: float = 0.02
    warmup: float = 0.05  # share of steps with a linear learning-rate warm-up
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    dropout: float = 0.2  # before the heads
    augment: bool = True  # flip, zoom/shift/rotate, colour jitter
    # share of images given a photo condition (augment.py); 0 = off. 0.5 (on val, 13 epochs):
    # UTKFace-C mean MAE increase +0.24 years against +0.89 at 0, clean MAE +0.05 years
    photo_augment: float = 0.5
    loss_weights: dict[str, float] = field(
        default_factory=lambda: {"age": 1.0, "gender": 4.0, "race": 0.5}
    )  # age is in years (~5), gender and race in nats (~0.2): weights balance them
    age_sigma: float = 2.0  # width in years of the Gaussian label distribution
    age_l1_weight: float = 0.25  # weight of |E[age] - age| inside the age loss
    ema_decay: float = 0.998  # weight average per step, scored on val with the weights; 0 = off
    balance_alpha: float = 0.0  # draw images with P ~ (race x age band count)^-alpha; 0 = off
    # share of each source's draws per epoch (`--mix utkface=0.5`), keys as the metric columns
    # name sources (`multisource.column_names`); sources left out share the rest by size;
    # {} = in proportion to their sizes (one shuffle of all)
    source_mix: dict[str, float] = field(default_factory=dict)
    seed: int = 0  # data split, initialisation, shuffling and augmentation
    device: str = "auto"  # auto = cuda if available, else mps, else cpu
    precision: str = "fp32"  # training forward pass: fp32, or bf16 autocast (for GPUs)
    threads: int = 0  # CPU threads for torch; 0 = the cores other processes leave free
    eval_batch_size: int = 256

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        if self.model not in MODEL_NAMES + ("seed",):
            raise ConfigError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES + ('seed',))}"
            )
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ConfigError(f"unknown tasks {bad or '(none)'}; choose from {', '.join(TASKS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        for name in ("size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.model in SEED_PRESET_NAMES and self.size != SEED_PRESET["size"]:
            # The seed CNNs' dense layer is sized for their 200 px input; fail before training.
            raise ConfigError(
                f"model {self.model!r} takes {SEED_PRESET['size']} px input (the seed's "
                f"architecture), got size {self.size}"
            )
        if not 0.0 <= self.photo_augment <= 1.0:
            raise ConfigError(f"photo_augment must be in [0, 1], got {self.photo_augment}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.balance_alpha <= 1.0:
            raise ConfigError(f"balance_alpha must be in [0, 1], got {self.balance_alpha}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError(f"time_budget must be positive minutes, got {self.time_budget}")
        if any(not 0.0 <= share <= 1.0 for share in self.source_mix.values()):
            raise ConfigError(f"source_mix shares must lie in [0, 1], got {self.source_mix}")
        bad = [k for k in self.loss_weights if k not in TASKS]
        if bad:
            raise ConfigError(f"unknown loss_weights keys {bad}; choose from {', '.join(TASKS)}")

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["tasks"] = list(self.tasks)
        return values


# The seed project's settings: its own input size and optimizer, no pretraining or augmentation.
SEED_PRESET = {
    "size": 200,
    "pretrained": False,
    "augment": False,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup": 0.0,
    "min_lr_ratio": 1.0,  # Keras Adam: a constant learning rate
    "dropout": 0.2,
    "batch_size": 32,
    "ema_decay": 0.0,  # the seed kept its trained weights
}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML file of TrainConfig keys."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: config must be .yaml, .yml, .toml or .json")
    import yaml

    try:
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib  # Python 3.11+

            values = tomllib.loads(text)
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            values = yaml.safe_load(text) or {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from error
    except (ValueError, yaml.YAMLError) as error:  # TOML and JSON decode errors are ValueErrors
        raise ConfigError(f"{path}: not a valid config file ({error})") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return values


def resolve_config(file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the seed preset (for seed models), then `file`, then `overrides`
    (None values are ignored, so unset command-line flags keep the file's values)."""
    values: dict[str, Any] = {}
    if file:
        values.update(load_config_file(file))
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
    if values.get("model") in SEED_PRESET_NAMES:
        values = {**SEED_PRESET, **values}
    return TrainConfig(**values)
