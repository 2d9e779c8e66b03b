"""The model variants every dataset config offers, as one table, and how a variant becomes `config.model`.

A variant is (family, overrides): the family names an entry of `difnet_jax.models.FAMILIES`
(which supplies the defaults of its sub-dict `config.model.<family>`), the overrides set keys
of `config.model`, dotted into the sub-dict (`"difnet.walks"`). `SYNTHETIC` shrinks a family's
own keys for the `synthetic` modifier (CPU sizes); `IMAGENET` holds a family's fine-tuning
settings for the `imagenet` modifier.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from difnet_jax.models import FAMILIES, affinity

DEPTHS = (18, 34, 50, 101)
PAPER_AFFINITY_RATES = affinity.BEST_RATES  # pixels; (12, 24) means both (12, 24) and (24, 12)
# The DifNet paper's variants (its Table 1 trains from scratch) run the DifNet authors' network
# (github sdujump/DifNet, model_difnet.py; difnet_jax/models/resnet.py) on their input (dataset.py:
# BGR minus the Caffe mean). The `imagenet` modifier puts them back in torchvision's layout and input,
# the ones its weights were trained in (common.get_config).
AUTHORS_NETWORK = {"resnet_layout": "difnet_authors"}
# config.model.resnet_layout -> the config.data.normalization that network reads.
LAYOUT_INPUT = {"torchvision": "imagenet", "difnet_authors": "caffe_bgr"}
# config.model.resnet_layout -> config.model.logits_upsampling: the authors' main.py upsamples the logits with
# F.interpolate(..., align_corners=False) for the loss and the evaluation (models/resize.py); DeepLab aligns corners.
LAYOUT_UPSAMPLING = {"torchvision": "align_corners", "difnet_authors": "half_pixel"}

DEEPLABV3PLUS_MULTI_GRID = {18: {"deeplabv3plus.multi_grid": (1, 2)}}  # depth -> override (default (1, 2, 4))

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"difnet{d}": ("difnet", {"depth": d, **AUTHORS_NETWORK}) for d in DEPTHS},
    "difnet50_noaspp": ("difnet", {"depth": 50, "difnet.aspp": False, **AUTHORS_NETWORK}),
    "difnet50_no24": ("difnet", {"depth": 50, "difnet.walks": (1, 3, 5), **AUTHORS_NETWORK}),
    **{f"simdeeplab{d}": ("simdeeplab", {"depth": d, **AUTHORS_NETWORK}) for d in DEPTHS},
    # PDN: E = 1 ("8NB") or 2 ("24NB") rings of neighbours, one ("1M") or two ("2M") modules.
    **{f"pdn{d}_{n}nb_{m}m": ("pdn", {"depth": d, "pdn.neighbors": n, "pdn.modules": m})
       for d in DEPTHS for n in (8, 24) for m in (1, 2)},
    # DeepLabv3+ (output stride 16 in training, 8 in evaluation), and with Dilated Affinity's head
    # and loss at the paper's best rates R = {8, (12, 24), 16} (its Table 2). Multi-grid (1, 2, 4) in
    # layer4 (the reference's, deeplabv3plus.defaults); ResNet-18's layer4 has two blocks: (1, 2).
    **{f"deeplabv3plus{d}": ("deeplabv3plus", {"depth": d, **DEEPLABV3PLUS_MULTI_GRID.get(d, {})}) for d in DEPTHS},
    **{f"deeplabv3plus{d}_affinity": ("deeplabv3plus", {"depth": d, **DEEPLABV3PLUS_MULTI_GRID.get(d, {}),
                                                         "deeplabv3plus.affinity_rates": PAPER_AFFINITY_RATES})
       for d in DEPTHS},
}

# Family -> overrides of its own keys under `synthetic` (the shared keys shrink for every family).
# Hyper-parameters in pixels, under `synthetic`: a third of the paper's pixels, rounded up. On VOC (~500 px images, a
# 5-px void band) the paper's rate 8 is 1.6 void bands; here (96 px, a 2-px band) 3 px is the smallest rate whose
# pairs can span the band (every pair below 3 px is positive). The paper's R = {8, (12, 24), 16} becomes
# {3, (4, 8), 6}: pi_r 0.99 / 0.92 / 0.93, n8 93 / 76 / 75 % of the pixels and 10-16 % invalid pairs on the 96 px
# train scenes, against 0.89 / 0.76 / 0.77, n8 67 / 47 / 47 % and 19-33 % unscaled
# (`python -m experiments.affinity_stats --config=experiments/configs/voc.py:deeplabv3plus18_affinity,synthetic`).
# A value that is a function is applied to the family's default (a variant's rates scale, () stays ()).
SYNTHETIC_PIXEL_DIVISOR = 3


def synthetic_pixels(rates):
    """Rates in the paper's pixels -> synthetic pixels: ceil(r / 3) for each r, pairs kept as pairs."""
    scale = lambda r: -(-int(r) // SYNTHETIC_PIXEL_DIVISOR)
    return tuple(tuple(scale(v) for v in r) if isinstance(r, (tuple, list)) else scale(r) for r in rates)


SYNTHETIC: dict[str, dict[str, Any]] = {
    "pdn": {"d": 64},  # the module's width, 256 in the paper, for a width-16 ResNet
    # Output stride 8 in training too (the paper's 16 gives a 6x6 grid of an 81 crop, where the other families see
    # 11x11): the ASPP rates, given at 16, are doubled to (2, 4, 6) on the 11x11 grid, as the paper's (6, 12, 18) on a
    # 513 crop's 33x33 grid (rate / grid side 0.18, 0.36, 0.55 both). 1,000 steps cannot move running averages of
    # decay 0.9997 (0.9997^1000 = 0.74 of the start remains): the ASPP/decoder BN decay 0.9.
    "deeplabv3plus": {"aspp_rates": (1, 2, 3), "bn_decay": 0.9, "output_stride": 8,
                      "affinity_rates": synthetic_pixels},
    # The transitions live on the 8-px seed grid: the paper-pixel scaling of (8, 16) (3 and 6 px) rounds to one
    # cell, twice; one cell (8 px: pi 0.89, 19 % invalid pairs on the grid of the train scenes) is the rate kept.
    "difnet": {"transition_affinity_rates": (8,)},
}

# Family -> train overrides under `imagenet` (the lr groups: pretrained x1, new layers x new_lr_scale).
IMAGENET: dict[str, dict[str, Any]] = {
    # PDN (papers/003, Sec. 5.1): "The learning rate of the newly added layers is initialized as 2.5 x 10^-3 and
    # that of other previously trained layers is initialized as 2.5 x 10^-4" (x new_lr_scale 10); "stochastic
    # gradient descent with the momentum of 0.9, and weight decay of 0.0005" (common.py's). Each dataset's
    # iterations: ade20k.py, person_part.py.
    "pdn": {"train.lr": 2.5e-4},
    # DeepLabv3+'s recipe (Dilated Affinity Sec. 4.1: "The rest settings, such as learning rate schedule and data
    # augmentation are the same with DeepLabv3+"), from its reference (tensorflow/models research/deeplab):
    "deeplabv3plus": {
        # train.py base_learning_rate: "Use 0.007 when training on PASCAL augmented training set"; learning_policy
        # poly, learning_power 0.9 (common.py's); one rate for every layer.
        "train.lr": 7e-3, "train.new_lr_scale": 1.0,
        # train.py weight_decay: "Use 0.0001 for ResNet model variants"; slim.l2_regularizer on conv weights only
        # (the imagenet modifier's weight_decay_on = "kernels").
        "train.weight_decay": 1e-4,
        # train.py min_scale_factor 0.5, max_scale_factor 2.0, scale_factor_step_size 0.25: one of {0.5, ..., 2.0}.
        "data.scale_range": (0.5, 2.0), "data.scale_step": 0.25,
    },
}


def set_key(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """config[a][b] = value for dotted = "a.b"."""
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config[parent]
    config[key] = value


def model_config(variant: str) -> ml_collections.ConfigDict:
    """`config.model` of `variant` at the paper's sizes: the shared keys plus the family's sub-dict."""
    family, overrides = VARIANTS[variant]
    model = ml_collections.ConfigDict()
    model.name = family
    model.depth = 50
    model.width = 64  # channels of the ResNet stem and layer1; 64 is the paper's ResNet
    model.aspp_rates = (6, 12, 18, 24)  # DeepLabV2's ASPP (DifNet's seed branch, Sim-DeepLab, PDN's head)
    model.dtype = "float32"  # compute dtype; parameters stay float32
    model.backbone_init = ""  # torchvision ResNet weights (.pth/.pt/.safetensors/.npz); "" = from scratch
    model.verify_backbone_init = True  # compare the imported ResNet with a reference forward pass at start
    model.frozen_backbone_bn = False  # pretrained backbones: BatchNorm statistics and affine parameters fixed
    model.resnet_layout = "torchvision"  # or "difnet_authors" (the DifNet authors' ResNet: models/resnet.py)
    model.logits_upsampling = "align_corners"  # or "half_pixel": how the final logits reach the image (resize.py)
    model[family] = FAMILIES[family].defaults()
    for key, value in overrides.items():
        set_key(model, key, value)
    return model


def apply_synthetic(model: ml_collections.ConfigDict) -> None:
    """The CPU sizes of the `synthetic` modifier: a width-16 ResNet and rates scaled to an 11x11 grid."""
    model.width = 16
    model.aspp_rates = (1, 2, 3, 4)
    for key, value in SYNTHETIC.get(model.name, {}).items():
        set_key(model, f"{model.name}.{key}", value(model[model.name][key]) if callable(value) else value)
