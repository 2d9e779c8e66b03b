"""How `--config=experiments/configs/<dataset>.py:VARIANT[,MODIFIER...]` becomes a config.

Each dataset file (voc, context, ade20k, person_part, cityscapes) describes its dataset as a
`Dataset` and calls `get_config(arg, DATASET)`. VARIANT is any model of the shared table
(`variants.VARIANTS`); the modifiers:
  synthetic  the embedded synthetic_shapes dataset at CPU size (any variant, any dataset file:
             the dataset file then only names the run's origin)
  imagenet   fine-tune from torchvision's ImageNet ResNet, read from weights/resnet{depth}.npz
             (README "Pretrained backbones"; any other file: --config.model.backbone_init=FILE);
             the backbones at lr x1, the new layers x10, no weight decay on BatchNorm, biases and
             the mu/beta logits, and the dataset's fine-tuning schedule
  pretrained with synthetic only: as imagenet, from the synthetic "ImageNet" instead, a ResNet of the
             run's depth and width pretrained on synthetic_classes (difnet_jax/backbone_weights/pretraining.py) and
             cached (pretraining.default_weights_path); the first run that needs it makes it
Under synthetic, imagenet and pretrained keep synthetic's AdamW: in 1,000 steps it fine-tunes further than SGD
(pretrained, one seed: Sim-DeepLab-18 0.784 vs 0.696 mIoU, DeepLabv3+-18 0.533 vs 0.400, at the rates before the next
rule). The families' fine-tuning rates are SGD rates (DeepLab-v2 and PDN 2.5e-4 with new layers x10, DeepLabv3+ 7e-3
on every layer; Sim-DeepLab and DifNet fell back on synthetic's 1.5e-3, x10) and do not carry over to AdamW, whose
step is about lr per parameter whatever the gradient's scale: with them, DeepLabv3+ moved its pretrained backbone 28x
further per step than PDN (held-out mIoU after 250 steps 0.20 against PDN's 0.68). So under synthetic every family
fine-tunes with one AdamW recipe, `SYNTHETIC_FINE_TUNING` (DeepLab-v2's, the paper rates of Sim-DeepLab's and PDN's
own DeepLab baseline: backbone 2.5e-4, new layers x10); the families' other fine-tuning keys (weight decay, scales)
stay.

Without modifiers the settings are DifNet's from-scratch protocol (Sec. 5.1): batch 16, SGD
with momentum 0.9, lr 2.5e-3 with poly decay 0.9, weight decay 5e-4, 200 epochs; crop, eval
canvas and evaluation mode from the dataset. The DifNet and Sim-DeepLab variants run the DifNet
authors' ResNet layout and BGR Caffe-mean input (`variants.AUTHORS_NETWORK`), also under
`synthetic`; under `imagenet` torchvision's layout and ImageNet normalisation, as its weights.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections

from difnet_jax.backbone_weights import pretraining
from difnet_jax.user_errors import ConfigError
from experiments.configs import variants

MODIFIERS = ("synthetic", "imagenet", "pretrained")
# synthetic + imagenet / pretrained: every family's AdamW fine-tuning rates (module docstring)
SYNTHETIC_FINE_TUNING = {"train.lr": 2.5e-4, "train.new_lr_scale": 10.0}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's paper settings.

    eval_mode: "pad" (every image padded to eval_size x eval_size, the DifNet protocol),
    "whole" (each batch padded to its largest image) or "sliding" (windows of crop_size,
    `eval_stride` apart, probabilities averaged where they overlap).
    imagenet_overrides: family -> keys of `config` set under `imagenet` (e.g. DeepLabv3+'s
    own schedule on this dataset), dotted ("train.num_steps").
    """

    name: str
    train_images: int
    crop_size: int = 321
    eval_size: int = 505
    eval_mode: str = "pad"
    eval_stride: int = 0  # sliding windows' stride; 0 = two thirds of crop_size
    batch_size: int = 16
    epochs: int = 200  # from scratch
    imagenet_epochs: int = 30
    eval_batch_size: int = 8
    imagenet_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def parse_arg(arg: str) -> tuple[str, list[str]]:
    """(variant, modifiers); ConfigError naming the closest and the known variants or modifiers."""
    tokens = [t.strip() for t in arg.split(",") if t.strip()]
    if not tokens or tokens[0] not in variants.VARIANTS:
        what = f"{tokens[0]!r} is not a model variant{_did_you_mean(tokens[0], variants.VARIANTS)}" if tokens \
            else "the first item must be a model variant"
        raise ConfigError(f"config arg {arg!r}: {what}; the variants: {', '.join(variants.VARIANTS)}")
    unknown = [t for t in tokens[1:] if t not in MODIFIERS]
    if unknown:
        hints = "".join(_did_you_mean(t, MODIFIERS) for t in unknown)
        raise ConfigError(f"config arg {arg!r}: unknown modifier(s) {unknown}{hints}; known: {', '.join(MODIFIERS)}")
    return tokens[0], tokens[1:]


def _did_you_mean(word: str, known) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _steps(epochs: int, images: int, batch_size: int) -> int:
    return epochs * images // batch_size


def get_config(arg: str, dataset: Dataset) -> ml_collections.ConfigDict:
    variant, modifiers = parse_arg(arg)
    config = ml_collections.ConfigDict()
    config.arg = arg
    config.model = model = variants.model_config(variant)

    config.data = data = ml_collections.ConfigDict()
    data.name = dataset.name
    data.data_dir = ""  # TFDS data_dir; "" = TFDS's default (~/tensorflow_datasets)
    data.manual_dir = ""  # where the downloaded archives are (real datasets only)
    data.train_split = "train"  # TFDS split strings: "train[:90%]" / eval_split "train[90%:]" hold out train data
    data.eval_split = "validation"
    data.crop_size = dataset.crop_size
    data.eval_size = dataset.eval_size  # the canvas of eval_mode "pad"
    data.eval_mode = dataset.eval_mode  # pad | whole | sliding
    data.eval_stride = dataset.eval_stride or dataset.crop_size * 2 // 3
    data.scale_range = (0.5, 1.5)
    # 0: the scale is drawn uniformly from scale_range; > 0: from {low, low + step, ..., high}, as the DeepLabv3+
    # reference's preprocess_utils.get_random_scale with train.py's scale_factor_step_size.
    data.scale_step = 0.0
    data.num_workers = 0  # grain worker processes for decoding and augmentation
    # threads reading records ahead in each loader process, each thread's batch in flight (grain's ReadOptions; its
    # default, 16 threads and 500 records, costs local disks on few cores up to half the loader's rate): raise it
    # for remote storage (a gs:// data_dir)
    data.read_threads = 2

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = dataset.batch_size  # global, over all devices and hosts
    train.eval_batch_size = dataset.eval_batch_size
    train.num_steps = _steps(dataset.epochs, dataset.train_images, dataset.batch_size)
    train.optimizer = "sgd"  # or "adamw"
    train.lr = 2.5e-3
    train.lr_power = 0.9
    train.momentum = 0.9
    train.weight_decay = 5e-4
    train.weight_decay_on = "all"  # all | kernels (no decay on BatchNorm, biases and the mu/beta logits)
    train.pretrained_lr_scale = 1.0  # lr multiplier of the backbones initialised from model.backbone_init
    train.new_lr_scale = 1.0  # lr multiplier of every other parameter
    train.seed = 0
    train.log_every = 50
    train.eval_every = 5000
    train.checkpoint_every = 5000
    train.keep_checkpoints = 3
    train.skip_nonfinite = False  # True: skip steps with a non-finite loss/gradient instead of stopping

    if "synthetic" in modifiers:  # about 7 minutes of training on 2 CPU cores
        data.name = "synthetic_shapes"
        data.crop_size = 81  # seed grid 11x11
        data.eval_size = 97  # 96x96 scenes padded: grid 13x13
        data.eval_mode = "pad"
        data.eval_stride = 54
        data.scale_range = (0.75, 1.25)
        variants.apply_synthetic(model)
        train.batch_size = 16
        train.optimizer = "adamw"  # SGD needs far more than 1,000 steps from scratch
        train.lr = 1.5e-3
        train.num_steps = 1000
        train.eval_batch_size = 20
        train.eval_every = 250
        train.checkpoint_every = 250
    if "pretrained" in modifiers and ("synthetic" not in modifiers or "imagenet" in modifiers):
        raise ConfigError(f"config arg {arg!r}: 'pretrained' (the synthetic ImageNet, width 16) goes with 'synthetic' "
                          "and without 'imagenet'; real data fine-tunes from 'imagenet'")
    if "imagenet" in modifiers or "pretrained" in modifiers:  # DeepLab-style fine-tuning; not tuned here
        model.backbone_init = f"weights/resnet{model.depth}.npz"
        if "pretrained" in modifiers:  # made by `python -m experiments.pretrain`, or by train.py when missing
            model.backbone_init = pretraining.default_weights_path_ref(model)  # follows model.depth/width
            model.backbone_pretraining = pretraining.DATASET
        model.resnet_layout = "torchvision"  # the layout torchvision's weights were trained in
        train.weight_decay_on = "kernels"
        train.new_lr_scale = 10.0
        for key, value in variants.IMAGENET.get(model.name, {}).items():
            variants.set_key(config, key, value)
        if "synthetic" not in modifiers:
            train.num_steps = _steps(dataset.imagenet_epochs, dataset.train_images, train.batch_size)
            train.eval_every = train.checkpoint_every = 2000
            for key, value in dataset.imagenet_overrides.get(model.name, {}).items():
                variants.set_key(config, key, value)
        else:
            for key, value in SYNTHETIC_FINE_TUNING.items():
                variants.set_key(config, key, value)
    # imagenet (RGB, ImageNet mean/std) | caffe_bgr (the DifNet authors' input): what the ResNet's layout reads
    data.normalization = variants.LAYOUT_INPUT[model.resnet_layout]
    model.logits_upsampling = variants.LAYOUT_UPSAMPLING[model.resnet_layout]
    own = model[model.name]
    if "affinity_stats_dataset" in own:  # the statistics of this run's train split, whatever --config.data.* says
        own.affinity_stats_dataset = data.get_ref("name")
        own.affinity_stats_data_dir = data.get_ref("data_dir")
    return config
