"""Checks a run's config before any work starts; every error names the key at fault."""

from __future__ import annotations

import os

import ml_collections

from difnet_jax import diffusion, optimizer, weight_files
from difnet_jax.config_errors import ConfigError, positive_int, require  # noqa: F401  (ConfigError re-exported)
from difnet_jax.models import BRANCHES, DTYPES, MODEL_NAMES
from difnet_jax.models.difnet import ALL_WALKS
from difnet_jax.models.resnet import STAGE_SIZES

_require = require
_positive_int = positive_int


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key whose value cannot work."""
    model, data, train = config.model, config.data, config.train
    _require(model.name in MODEL_NAMES, "model.name", model.name, f"one of {MODEL_NAMES}")
    _require(model.depth in STAGE_SIZES, "model.depth", model.depth, f"one of {tuple(STAGE_SIZES)}")
    _require(_positive_int(model.width), "model.width", model.width, "a positive integer")
    walks = tuple(model.walks)
    _require(
        bool(walks) and all(w in ALL_WALKS for w in walks) and len(set(walks)) == len(walks),
        "model.walks", walks, f"distinct values from {ALL_WALKS}",
    )
    _require(all(_positive_int(r) for r in model.aspp_rates) and len(model.aspp_rates) > 0,
             "model.aspp_rates", tuple(model.aspp_rates), "a non-empty sequence of positive integers")
    _require(_positive_int(model.psi_channels), "model.psi_channels", model.psi_channels, "a positive integer")
    _require(model.diffusion_backend in diffusion.BACKENDS, "model.diffusion_backend", model.diffusion_backend,
             f"one of {diffusion.BACKENDS}")
    _require(model.dtype in DTYPES, "model.dtype", model.dtype, f"one of {tuple(DTYPES)}")
    _check_backbone_init(model)

    _require(isinstance(data.name, str) and bool(data.name), "data.name", data.name, "a TFDS dataset name")
    _require(_positive_int(data.crop_size) and data.crop_size >= 9, "data.crop_size", data.crop_size,
             "an integer >= 9 (8k+1 aligns the output-stride-8 grid)")
    _require(_positive_int(data.eval_size), "data.eval_size", data.eval_size, "a positive integer")
    low, high = tuple(data.scale_range)
    _require(0 < low < high, "data.scale_range", tuple(data.scale_range), "(low, high) with 0 < low < high")
    _require(isinstance(data.num_workers, int) and data.num_workers >= 0, "data.num_workers", data.num_workers,
             "an integer >= 0")

    for key in ("batch_size", "eval_batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints"):
        _require(_positive_int(train[key]), f"train.{key}", train[key], "a positive integer")
    _require(train.optimizer in ("sgd", "adamw"), "train.optimizer", train.optimizer, "'sgd' or 'adamw'")
    _require(train.lr > 0, "train.lr", train.lr, "a positive number")
    _require(train.lr_power >= 0, "train.lr_power", train.lr_power, "a number >= 0")
    _require(0 <= train.momentum < 1, "train.momentum", train.momentum, "a number in [0, 1)")
    _require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "a number >= 0")
    _require(train.weight_decay_on in optimizer.WEIGHT_DECAY_ON, "train.weight_decay_on", train.weight_decay_on,
             f"one of {optimizer.WEIGHT_DECAY_ON}")
    for key in ("pretrained_lr_scale", "new_lr_scale"):
        _require(train[key] >= 0, f"train.{key}", train[key], "a number >= 0")
    _require(isinstance(train.skip_nonfinite, bool), "train.skip_nonfinite", train.skip_nonfinite, "True or False")
    _require(isinstance(train.seed, int), "train.seed", train.seed, "an integer")


def _check_backbone_init(model: ml_collections.ConfigDict) -> None:
    _require(model.backbone_init_branches in BRANCHES, "model.backbone_init_branches", model.backbone_init_branches,
             f"one of {tuple(BRANCHES)}")
    for key in ("verify_backbone_init", "frozen_backbone_bn"):
        _require(isinstance(model[key], bool), f"model.{key}", model[key], "True or False")
    path = model.backbone_init
    if not path:
        _require(not model.frozen_backbone_bn, "model.frozen_backbone_bn", True,
                 "False when training from scratch (no model.backbone_init)")
        return
    if not os.path.isfile(path):
        raise ConfigError(
            f"config.model.backbone_init={path!r}: no such file. Fetch torchvision's ImageNet ResNet-{model.depth} "
            "and convert it (README, 'Pretrained backbones'): python -m experiments.convert_weights "
            f"--input=resnet{model.depth}-*.pth --output={path}"
        )
    _require(path.lower().endswith(weight_files.SUFFIXES), "model.backbone_init", path,
             f"a file ending in one of {weight_files.SUFFIXES}")
