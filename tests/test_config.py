"""The typed config: YAML + `section.key=value` overrides, strict about unknown keys and types."""

import dataclasses

import pytest

from pipeline.config import dump_config, load_config, replace
from pipeline.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_overrides_win_over_the_yaml_file_which_wins_over_defaults(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.02\n  momentum: 0.8\n")
    config = load_config(path, ["optim.lr=0.5"])
    assert config.optim.lr == 0.5
    assert config.optim.momentum == 0.8
    assert config.optim.weight_decay == 1e-4  # the default


def test_scientific_notation_without_a_dot_is_a_number_in_files_and_overrides(tmp_path):
    path = write(tmp_path, "optim:\n  weight_decay: 5e-4\n")
    config = load_config(path, ["optim.lr=1e-3"])
    assert config.optim.weight_decay == pytest.approx(5e-4)
    assert config.optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrate=0.1", "unknown config key optim.lrate"),
        ("optimizer.lr=0.1", "unknown config section 'optimizer'"),
        ("data.backend=tfrecord", "data.backend: 'tfrecord' is not one of folder, wds, dali"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("data.num_workers=2.5", "data.num_workers: expected an integer"),
        ("train.compile=maybe", "train.compile: expected true or false"),
        ("optim.lr", "is not section.key=value"),
        ("data.val_crop=300", "data.val_crop 300 is larger than data.val_resize 256"),
        ("train.seed=-1", "train.seed must be >= 0"),
        ("train.eval_every=0", "train.eval_every must be >= 1"),
        ("train.log_every=0", "train.log_every must be >= 1"),
        ("train.max_steps=-5", "train.max_steps must be >= 0"),
    ],
)
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_or_malformed_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "optim: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_config_is_frozen_and_replace_returns_a_validated_copy():
    config = load_config(None, [])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0
    changed = replace(config, "optim", lr=0.1)
    assert changed.optim.lr == 0.1 and config.optim.lr == 0.01
    with pytest.raises(ConfigError):
        replace(config, "optim", lr=-1.0)


def test_a_dumped_config_loads_back_to_the_same_config(tmp_path):
    config = load_config(
        None, ["data.backend=folder", "model.width_mult=0.5", "optim.betas=[0.8, 0.9]"]
    )
    assert load_config(write(tmp_path, dump_config(config))) == config


def test_every_shipped_recipe_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        load_config(path)  # raises ConfigError on any unknown key or bad value
