"""Configs: every variant on every dataset parses, checks and builds; bad args, keys and values fail clearly;
the old flat DifNet keys keep working on the command line and in saved config.json files."""

import importlib
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from difnet_jax import config_compat, train, trained_run
from difnet_jax.config_checks import ConfigError, check_config
from difnet_jax.models import FAMILIES, build_model
from experiments.configs import common
from experiments.configs.variants import VARIANTS
from experiments.configs.voc import get_config
from tests.helpers import tiny_config, write_affinity_stats

DATASET_FILES = ("voc", "context", "ade20k", "person_part", "cityscapes")
DATASET_NAMES = {"voc": "voc_aug", "context": "pascal_context", "ade20k": "ade20k", "person_part": "person_part",
                 "cityscapes": "cityscapes"}


def _dataset_config(file, arg):
    return importlib.import_module(f"experiments.configs.{file}").get_config(arg)


@pytest.mark.parametrize("file", DATASET_FILES)
def test_every_variant_on_every_dataset_checks(file):
    for variant in VARIANTS:
        for arg in (variant, f"{variant},synthetic", f"{variant},imagenet", f"{variant},synthetic,imagenet",
                    f"{variant},synthetic,pretrained"):
            config = _dataset_config(file, arg)
            if "imagenet" in arg:
                config.model.backbone_init = ""  # torchvision's weights file is not there in tests
            if "pretrained" in arg:  # the synthetic backbone, made by the run when missing, in torchvision's layout
                assert config.model.backbone_pretraining and config.model.backbone_init
                assert config.model.resnet_layout == "torchvision" and config.data.normalization == "imagenet"
            check_config(config)  # an affinity head's statistics are counted by the run (stored with the dataset)
            if variant.endswith("_affinity"):
                own = config.model.deeplabv3plus
                assert own.affinity_stats == "" and own.affinity_stats_dataset == config.data.name
            family = VARIANTS[variant][0]
            assert config.model.name == family and family in config.model
            expected = "synthetic_shapes" if "synthetic" in arg else DATASET_NAMES[file]
            assert config.data.name == expected


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_at_a_small_size(variant, tmp_path):
    """Shapes only (jax.eval_shape); every dataset file gives the variant the same model config."""
    models = [_dataset_config(file, f"{variant},synthetic").model for file in DATASET_FILES]
    assert all(m.to_dict() == models[0].to_dict() for m in models)
    config = models[0]
    config.width = 4
    if variant.endswith("_affinity"):  # the head's bias reads statistics: a file of its own, not the dataset's
        write_affinity_stats(config, str(tmp_path))
    model = build_model(config, 7)
    x = jnp.zeros((1, 41, 41, 3))
    # One trace: init's own forward pass is the eval-mode output
    (logits, _), _ = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))
    assert logits.shape == (1, 41, 41, 7)


def test_paper_defaults():
    config = get_config("difnet50")
    assert (config.train.batch_size, config.data.crop_size, config.train.lr) == (16, 321, 2.5e-3)
    assert (config.train.momentum, config.train.weight_decay, config.train.lr_power) == (0.9, 5e-4, 0.9)
    assert config.train.num_steps == 200 * 10582 // 16
    assert (config.data.eval_mode, config.data.eval_size) == ("pad", 505)
    assert get_config("difnet50_no24").model.difnet.walks == (1, 3, 5)
    assert get_config("difnet50_noaspp").model.difnet.aspp is False
    assert _dataset_config("context", "difnet50").train.num_steps == 200 * 4998 // 16
    assert _dataset_config("context", "difnet50,imagenet").train.num_steps == 30 * 4998 // 16
    city = _dataset_config("cityscapes", "difnet50")
    assert (city.data.crop_size, city.train.batch_size, city.data.eval_mode, city.data.eval_stride) == (
        769, 12, "sliding", 513)
    assert _dataset_config("ade20k", "simdeeplab50").data.eval_mode == "sliding"


def test_synthetic_keeps_the_main_jobs_settings():
    """The README's main job: these values produced its measured figures."""
    config = get_config("difnet18,synthetic")
    assert (config.data.crop_size, config.data.eval_size, config.model.width) == (81, 97, 16)
    assert (config.train.optimizer, config.train.lr, config.train.num_steps, config.train.batch_size) == (
        "adamw", 1.5e-3, 1000, 16)
    assert tuple(config.model.aspp_rates) == (1, 2, 3, 4)


@pytest.mark.parametrize("arg,names", [
    ("difnet19", "difnet18"), ("resnet50", "simdeeplab101"), ("difnet18,synthetc", "synthetic, imagenet"), ("", "")])
def test_bad_config_arg_names_the_known_ones(arg, names):
    with pytest.raises(ValueError, match="config arg") as error:
        get_config(arg)
    assert names in str(error.value)


@pytest.mark.parametrize("key,value", [
    ("model.name", "difnett"), ("model.depth", 42), ("model.difnet.walks", (1, 1)), ("model.difnet.walks", (0, 6)),
    ("model.dtype", "float16"), ("model.difnet.diffusion_backend", "magic"), ("data.crop_size", 4),
    ("data.scale_range", (1.5, 0.5)), ("train.batch_size", 0), ("train.lr", -1.0), ("train.momentum", 1.0),
    ("train.optimizer", "adam"), ("data.eval_mode", "tiles"), ("data.eval_stride", 0), ("data.read_threads", 0),
])
def test_bad_values_name_the_key(key, value):
    config = get_config("difnet18,synthetic")
    *parents, name = key.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    section[name] = value
    with pytest.raises(ConfigError, match=f"config.{key}="):
        check_config(config)


def test_a_family_without_its_keys_is_named():
    config = get_config("simdeeplab18,synthetic")
    with config.unlocked():
        config.model.name = "difnet"
    with pytest.raises(ConfigError, match="config.model.difnet is missing"):
        check_config(config)


def test_every_family_has_variants():
    assert {family for family, _ in VARIANTS.values()} == set(FAMILIES)
    assert common.MODIFIERS == ("synthetic", "imagenet", "pretrained")


def test_old_flat_flags_are_rewritten():
    argv = ["prog", "--config.model.walks=(1,3,5)", "--config.model.diffusion_backend", "dense",
            "--config.model.width=8", "--config.model.aspp=False"]
    assert config_compat.rewrite_argv(argv) == [
        "prog", "--config.model.difnet.walks=(1,3,5)", "--config.model.difnet.diffusion_backend", "dense",
        "--config.model.width=8", "--config.model.difnet.aspp=False"]


def _old_style_json(config) -> dict:
    """config.json as runs wrote it before the family table: DifNet's keys flat in `model`."""
    saved = json.loads(config.to_json_best_effort())
    saved["model"].update(saved["model"].pop("difnet"))
    return saved


def test_old_config_json_loads_and_trains(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.model.difnet.walks = (1, 3, 5)
    (tmp_path / "config.json").write_text(json.dumps(_old_style_json(config)))
    loaded = trained_run.load_config(str(tmp_path))
    assert tuple(loaded.model.difnet.walks) == (1, 3, 5) and "walks" not in loaded.model
    check_config(loaded)
    trainer = train.Trainer(loaded, num_classes=21)
    state = trainer.init(jax.random.PRNGKey(0))
    batch = {"image": jnp.zeros((4, 33, 33, 3)), "label": jnp.zeros((4, 33, 33), jnp.int32)}
    state, step_metrics = trainer.train_step(state, trainer.global_batch(jax.device_get(batch)))
    assert jnp.isfinite(step_metrics["loss"]) and set(state.params) >= {"psi1", "psi3", "psi5"}
    # A Sim-DeepLab config.json carried DifNet's keys unused: they are dropped.
    sim = _old_style_json(_with_difnet_keys(tiny_config(tiny_data_dir, "simdeeplab18,synthetic")))
    upgraded = config_compat.upgrade_saved(sim)
    assert "walks" not in upgraded["model"] and "difnet" not in upgraded["model"]


def _with_difnet_keys(config):
    with config.unlocked():
        config.model.difnet = FAMILIES["difnet"].defaults()
    return config


def _run_voc(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.voc", *flags], capture_output=True, text=True,
                          timeout=300)


def test_entry_point_refuses_unknown_key_and_bad_value(tmp_path):
    config = "--config=experiments/configs/voc.py:difnet18,synthetic"
    result = _run_voc(config, f"--workdir={tmp_path}", "--config.model.depthh=18")
    assert result.returncode != 0 and "depthh" in result.stderr
    result = _run_voc(config, f"--workdir={tmp_path}", "--config.model.depth=19")
    assert result.returncode != 0 and "config.model.depth=19 is invalid" in result.stderr
    # An old flat key reaches the family's sub-dict (the bad value is then named there).
    result = _run_voc(config, f"--workdir={tmp_path}", "--config.model.walks=(0,6)")
    assert result.returncode != 0 and "config.model.difnet.walks=(0, 6) is invalid" in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before any work


def test_pdn_and_deeplabv3plus_fine_tune_with_their_papers_recipes():
    """PDN (papers/003 Sec. 5.1-5.2) and DeepLabv3+ as its reference implementation (Dilated Affinity Sec. 4.1)."""
    pdn_keys = lambda c: (c.train.num_steps, c.train.batch_size, c.data.crop_size, c.train.lr,  # noqa: E731
                          c.train.new_lr_scale, c.train.lr_power)
    assert pdn_keys(_dataset_config("ade20k", "pdn101_24nb_2m,imagenet")) == (200_000, 16, 321, 2.5e-4, 10.0, 0.9)
    # Person-Part: the paper gives no iteration count; ADE20K's 158 epochs
    assert pdn_keys(_dataset_config("person_part", "pdn101_24nb_1m,imagenet")) == (16_982, 16, 321, 2.5e-4, 10.0, 0.9)
    voc = get_config("deeplabv3plus101_affinity,imagenet")
    own = voc.model.deeplabv3plus
    assert (voc.train.num_steps, voc.train.batch_size, voc.data.crop_size, voc.data.eval_size) == (30_000, 16, 513, 513)
    assert (voc.train.lr, voc.train.new_lr_scale, voc.train.weight_decay, voc.train.weight_decay_on) == (
        7e-3, 1.0, 1e-4, "kernels")
    assert (tuple(voc.data.scale_range), voc.data.scale_step) == ((0.5, 2.0), 0.25)
    assert (tuple(own.multi_grid), own.backbone_bn_decay, own.bn_decay, own.aspp_dropout) == ((1, 2, 4), 0.95,
                                                                                              0.9997, 0.1)
    assert (own.aspp_separable, own.decoder_separable, own.affinity_reduction, own.affinity_beta) == (
        False, False, "mean_over_pairs", 1.2)
    assert (own.propagation_lambda, own.propagation_mu, own.propagation_iterations) == (6.0, 7.0, 10)
    assert tuple(get_config("deeplabv3plus18").model.deeplabv3plus.multi_grid) == (1, 2)
    city = _dataset_config("cityscapes", "deeplabv3plus101_affinity,imagenet")
    assert (city.train.num_steps, city.train.batch_size, city.data.crop_size) == (90_000, 12, 769)
    assert get_config("difnet50").data.scale_step == 0.0  # DifNet's continuous [0.5, 1.5)


def test_the_affinity_statistics_follow_the_data_overrides(tmp_path):
    config = get_config("deeplabv3plus18_affinity,synthetic")
    config.data.data_dir = str(tmp_path)  # as --config.data.data_dir=... does
    own = config.model.deeplabv3plus
    assert (own.affinity_stats_dataset, own.affinity_stats_data_dir) == ("synthetic_shapes", str(tmp_path))
    saved = json.loads(config.to_json_best_effort())["model"]["deeplabv3plus"]
    assert saved["affinity_stats_data_dir"] == str(tmp_path)


def test_synthetic_fine_tuning_is_one_adamw_recipe_for_every_family_and_real_data_keeps_the_papers():
    """AdamW's step does not scale with the gradient: the families' SGD rates (DeepLabv3+ 7e-3 on every layer,
    PDN 2.5e-4) would move their backbones 28x apart under `synthetic`; every family gets one recipe there."""
    for variant in ("simdeeplab18", "difnet18", "pdn18_24nb_1m", "deeplabv3plus18", "deeplabv3plus18_affinity"):
        for modifiers in ("synthetic,pretrained", "synthetic,imagenet"):
            train = get_config(f"{variant},{modifiers}").train
            assert (train.optimizer, train.lr, train.new_lr_scale) == ("adamw", 2.5e-4, 10.0), (variant, modifiers)
    real = {v: get_config(f"{v},imagenet").train for v in ("pdn18_24nb_1m", "deeplabv3plus18")}
    assert (real["pdn18_24nb_1m"].lr, real["pdn18_24nb_1m"].new_lr_scale) == (2.5e-4, 10.0)  # PDN Sec. 5.1
    assert (real["deeplabv3plus18"].lr, real["deeplabv3plus18"].new_lr_scale) == (7e-3, 1.0)  # deeplab train.py
    assert get_config("deeplabv3plus18,synthetic,pretrained").train.weight_decay == 1e-4  # other keys stay
