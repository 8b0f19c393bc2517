"""Training configuration: defaults, YAML/TOML files, command-line overrides, clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from utkface.apps.cli import main
from utkface.models.registry import MODEL_NAMES
from utkface.training.config import SEED_PRESET, ConfigError, TrainConfig, resolve_config


def test_defaults():
    config = resolve_config()
    assert config == TrainConfig()
    assert config.model == "mobilenet_v2" and config.tasks == ("age", "gender", "race")
    assert config.pretrained is True and config.time_budget is None
    assert config.loss_weights == {"age": 1.0, "gender": 4.0, "race": 0.5}
    # Mutable defaults are not shared between instances.
    TrainConfig().loss_weights["age"] = 9.0
    assert TrainConfig().loss_weights["age"] == 1.0


def test_to_dict_round_trips():
    config = resolve_config(model="resnet18", tasks=("age",), time_budget=3.5)
    values = config.to_dict()
    assert values["tasks"] == ["age"]
    assert TrainConfig(**values) == config


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".toml"])
def test_file_overrides_defaults(tmp_path, suffix):
    text = {
        ".yaml": "size: 96\nepochs: 3\ntasks: [age, gender]\n"
        "loss_weights: {age: 2.0, gender: 1.0}\n",
        ".toml": 'size = 96\nepochs = 3\ntasks = ["age", "gender"]\n'
        "[loss_weights]\nage = 2.0\ngender = 1.0\n",
    }[".toml" if suffix == ".toml" else ".yaml"]
    path = tmp_path / f"train{suffix}"
    path.write_text(text)
    config = resolve_config(path)
    assert (config.size, config.epochs, config.tasks) == (96, 3, ("age", "gender"))
    assert config.loss_weights == {"age": 2.0, "gender": 1.0}
    assert config.lr == TrainConfig().lr  # untouched keys keep their defaults


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert resolve_config(path) == TrainConfig()


def test_command_line_overrides_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("size: 96\nepochs: 3\nlr: 0.01\n")
    config = resolve_config(path, size=64, epochs=None, lr=None, pretrained=False)
    # None means "flag not given": the file's value stays.
    assert (config.size, config.epochs, config.lr, config.pretrained) == (64, 3, 0.01, False)


def test_unknown_keys_name_the_valid_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("size: 96\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config(path)
    message = str(caught.value)
    assert "learning_rate" in message
    for field in dataclasses.fields(TrainConfig):
        assert field.name in message
    with pytest.raises(ConfigError, match="bogus.*valid keys: .*batch_size"):
        resolve_config(bogus=1)


def test_bad_model_and_device_name_the_choices():
    with pytest.raises(ConfigError) as caught:
        resolve_config(model="vgg99")
    assert "vgg99" in str(caught.value)
    for name in MODEL_NAMES + ("seed",):
        assert name in str(caught.value)
    with pytest.raises(ConfigError, match="'tpu'.*auto, cpu, cuda, mps"):
        resolve_config(device="tpu")
    with pytest.raises(ConfigError, match="age, gender, race"):
        resolve_config(tasks=("age", "height"))
    with pytest.raises(ConfigError, match="choose from age, gender, race"):
        resolve_config(loss_weights={"height": 1.0})


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"size": 0}, "size"),
        ({"batch_size": 0}, "batch_size"),
        ({"time_budget": 0}, "time"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"photo_augment": 1.5}, "photo_augment"),
        ({"photo_augment": -0.1}, "photo_augment"),
    ],
)
def test_bad_numbers_fail_at_once(overrides, name):
    with pytest.raises(ConfigError, match=name):
        resolve_config(**overrides)


def test_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of fp32, bf16"):
        resolve_config(precision="fp16")


def test_bad_config_file_type(tmp_path):
    path = tmp_path / "train.ini"
    path.write_text("size=3")
    with pytest.raises(ConfigError, match="yaml.*toml"):
        resolve_config(path)
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(path)


@pytest.mark.parametrize("model", ["seed", "seed_gender", "seed_age"])
def test_seed_preset_applies_to_seed_models(model):
    config = resolve_config(model=model)
    for key, value in SEED_PRESET.items():
        assert getattr(config, key) == value, key
    assert config.size == 200 and config.pretrained is False and config.augment is False


def test_seed_preset_yields_to_file_and_flags(tmp_path):
    path = tmp_path / "seed.toml"
    path.write_text('model = "seed"\nbatch_size = 8\nepochs = 2\n')
    config = resolve_config(path, lr=0.01)
    assert (config.batch_size, config.epochs, config.lr) == (8, 2, 0.01)
    assert config.size == 200 and config.augment is False  # the rest of the preset stays


def test_seed_preset_not_applied_to_other_models():
    config = resolve_config(model="resnet18")
    assert config.size == TrainConfig().size and config.pretrained is True


def test_seed_models_need_their_input_size():
    # The seed CNNs' dense layer is sized for 200 px: another size must fail at once.
    with pytest.raises(ConfigError, match="200"):
        resolve_config(model="seed", size=64)


def test_cli_reports_a_bad_option_in_one_line(capsys):
    assert main(["train", "--model", "vgg99", "--data", "nowhere.tar.gz"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("utkface train: error: unknown model 'vgg99'")
    assert "mobilenet_v2" in error and "Traceback" not in error
