"""Configs: every variant parses and checks; bad args, keys and values fail with clear messages."""

import subprocess
import sys

import pytest

from difnet_jax.config_checks import ConfigError, check_config
from experiments.configs.voc import VARIANTS, get_config


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_are_valid(variant):
    for arg in (variant, f"{variant},synthetic"):
        config = get_config(arg)
        check_config(config)
        assert config.model.name in ("difnet", "simdeeplab")


def test_paper_defaults():
    config = get_config("difnet50")
    assert (config.train.batch_size, config.data.crop_size, config.train.lr) == (16, 321, 2.5e-3)
    assert (config.train.momentum, config.train.weight_decay, config.train.lr_power) == (0.9, 5e-4, 0.9)
    assert config.train.num_steps == 200 * 10582 // 16
    assert get_config("difnet50_no24").model.walks == (1, 3, 5)
    assert get_config("difnet50_noaspp").model.aspp is False


@pytest.mark.parametrize("arg", ["difnet19", "resnet50", "difnet18,synthetc", ""])
def test_bad_config_arg(arg):
    with pytest.raises(ValueError, match="config arg"):
        get_config(arg)


@pytest.mark.parametrize("key,value", [
    ("model.name", "difnett"), ("model.depth", 42), ("model.walks", (1, 1)), ("model.walks", (0, 6)),
    ("model.dtype", "float16"), ("model.diffusion_backend", "magic"), ("data.crop_size", 4),
    ("data.scale_range", (1.5, 0.5)), ("train.batch_size", 0), ("train.lr", -1.0), ("train.momentum", 1.0),
    ("train.optimizer", "adam"),
])
def test_bad_values_name_the_key(key, value):
    config = get_config("difnet18,synthetic")
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=f"config.{key}="):
        check_config(config)


def _run_voc(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.voc", *flags], capture_output=True, text=True,
                          timeout=300)


def test_entry_point_refuses_unknown_key_and_bad_value(tmp_path):
    config = "--config=experiments/configs/voc.py:difnet18,synthetic"
    result = _run_voc(config, f"--workdir={tmp_path}", "--config.model.depthh=18")
    assert result.returncode != 0 and "depthh" in result.stderr
    result = _run_voc(config, f"--workdir={tmp_path}", "--config.model.depth=19")
    assert result.returncode != 0 and "config.model.depth=19 is invalid" in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before any work
