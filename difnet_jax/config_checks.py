"""Checks a run's config before any work starts; every error names the key at fault."""

from __future__ import annotations

import os

import ml_collections

from difnet_jax import optimizer
from difnet_jax.backbone_weights import files
from difnet_jax.constants import COMPUTE_DTYPES, EVAL_MODES
from difnet_jax.data import normalization
from difnet_jax.models import FAMILIES
from difnet_jax.models.resize import LOGITS_UPSAMPLING
from difnet_jax.models.resnet import LAYOUTS, STAGE_SIZES
from difnet_jax.user_errors import ConfigError, positive_int, require  # noqa: F401  (ConfigError re-exported)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first key whose value cannot work.

    The keys every model shares are checked here; a family's own keys
    (`config.model.<name>.*`) by its entry in `difnet_jax.models.FAMILIES`.
    """
    model, data, train = config.model, config.data, config.train
    require(model.name in FAMILIES, "model.name", model.name, f"one of {tuple(FAMILIES)}")
    require(model.depth in STAGE_SIZES, "model.depth", model.depth, f"one of {tuple(STAGE_SIZES)}")
    require(positive_int(model.width), "model.width", model.width, "a positive integer")
    require(all(positive_int(r) for r in model.aspp_rates) and len(model.aspp_rates) > 0,
             "model.aspp_rates", tuple(model.aspp_rates), "a non-empty sequence of positive integers")
    require(model.dtype in COMPUTE_DTYPES, "model.dtype", model.dtype, f"one of {tuple(COMPUTE_DTYPES)}")
    require(model.get("resnet_layout", "torchvision") in LAYOUTS, "model.resnet_layout", model.get("resnet_layout"),
            f"one of {LAYOUTS}")
    require(model.get("logits_upsampling", "align_corners") in LOGITS_UPSAMPLING, "model.logits_upsampling",
            model.get("logits_upsampling"), f"one of {tuple(LOGITS_UPSAMPLING)}")
    if not isinstance(model.get(model.name), ml_collections.ConfigDict):
        raise ConfigError(f"config.model.{model.name} is missing: the keys of the {model.name!r} family live there "
                          "(pick a variant of that family rather than overriding model.name)")
    FAMILIES[model.name].check(model)
    _check_backbone_init(model)

    require(isinstance(data.name, str) and bool(data.name), "data.name", data.name, "a TFDS dataset name")
    _check_crop_alignment(data.crop_size, model.name, FAMILIES[model.name].train_output_stride(model))
    require(positive_int(data.eval_size), "data.eval_size", data.eval_size, "a positive integer")
    require(data.get("eval_mode", "pad") in EVAL_MODES, "data.eval_mode", data.get("eval_mode"), f"one of {EVAL_MODES}")
    require(positive_int(data.get("eval_stride", 1)), "data.eval_stride", data.get("eval_stride"),
            "a positive integer (the sliding windows' stride in pixels)")
    low, high = tuple(data.scale_range)
    require(0 < low < high, "data.scale_range", tuple(data.scale_range), "(low, high) with 0 < low < high")
    step = data.get("scale_step", 0.0)
    require(isinstance(step, (int, float)) and not isinstance(step, bool) and 0 <= step <= high - low,
            "data.scale_step", step, f"0 (any scale in scale_range) or a step in (0, {high - low:g}] between scales")
    require(isinstance(data.num_workers, int) and data.num_workers >= 0, "data.num_workers", data.num_workers,
             "an integer >= 0")
    read_threads = data.get("read_threads", 2)
    require(isinstance(read_threads, int) and not isinstance(read_threads, bool) and read_threads >= 1,
            "data.read_threads", read_threads, "an integer >= 1")
    input_normalization = data.get("normalization", "imagenet")
    normalization.check(input_normalization)
    if model.backbone_init:  # torchvision's weights read RGB normalised by ImageNet's mean and std
        require(input_normalization == "imagenet", "data.normalization", input_normalization,
                f"'imagenet' with model.backbone_init={model.backbone_init!r} (the input the weights were trained on)")

    for key in ("batch_size", "eval_batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints"):
        require(positive_int(train[key]), f"train.{key}", train[key], "a positive integer")
    require(train.optimizer in ("sgd", "adamw"), "train.optimizer", train.optimizer, "'sgd' or 'adamw'")
    require(train.lr > 0, "train.lr", train.lr, "a positive number")
    require(train.lr_power >= 0, "train.lr_power", train.lr_power, "a number >= 0")
    require(0 <= train.momentum < 1, "train.momentum", train.momentum, "a number in [0, 1)")
    require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "a number >= 0")
    require(train.weight_decay_on in optimizer.WEIGHT_DECAY_ON, "train.weight_decay_on", train.weight_decay_on,
             f"one of {optimizer.WEIGHT_DECAY_ON}")
    for key in ("pretrained_lr_scale", "new_lr_scale"):
        require(train[key] >= 0, f"train.{key}", train[key], "a number >= 0")
    require(isinstance(train.skip_nonfinite, bool), "train.skip_nonfinite", train.skip_nonfinite, "True or False")
    require(isinstance(train.seed, int), "train.seed", train.seed, "an integer")


def _check_backbone_init(model: ml_collections.ConfigDict) -> None:
    for key in ("verify_backbone_init", "frozen_backbone_bn"):
        require(isinstance(model[key], bool), f"model.{key}", model[key], "True or False")
    path = model.backbone_init
    if not path:
        require(not model.frozen_backbone_bn, "model.frozen_backbone_bn", True,
                 "False when training from scratch (no model.backbone_init)")
        return
    layout = model.get("resnet_layout", "torchvision")
    require(layout == "torchvision", "model.resnet_layout", layout,
            f"'torchvision' with model.backbone_init={path!r} (the layout torchvision's weights were trained in)")
    if not os.path.isfile(path) and not model.get("backbone_pretraining", ""):  # `pretrained`: made when missing
        raise ConfigError(
            f"config.model.backbone_init={path!r}: no such file. Fetch torchvision's ImageNet ResNet-{model.depth} "
            "and convert it (README, 'Pretrained backbones'): python -m experiments.convert_weights "
            f"--input=resnet{model.depth}-*.pth --output={path}"
        )
    require(path.lower().endswith(files.SUFFIXES), "model.backbone_init", path,
             f"a file ending in one of {files.SUFFIXES}")


def _check_crop_alignment(crop: int, family: str, stride: int) -> None:
    """Crops of stride * k + 1 pixels (k >= 1): the grid's first and last cells sit on the crop's corners.

    Each family says the stride it trains at (`Family.train_output_stride`); the error names the
    nearest valid sizes.
    """
    if positive_int(crop) and crop > stride and crop % stride == 1:
        return
    below = ((crop - 1) // stride) * stride + 1 if isinstance(crop, int) else 0
    nearest = [size for size in (below, below + stride) if size > stride] or [stride + 1]
    require(False, "data.crop_size", crop, f"{stride}k+1 pixels for {family}, which trains at output stride {stride}: "
            f"{' or '.join(str(size) for size in nearest)}")
