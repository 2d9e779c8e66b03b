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

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"difnet{d}": ("difnet", {"depth": d}) for d in DEPTHS},
    "difnet50_noaspp": ("difnet", {"depth": 50, "difnet.aspp": False}),
    "difnet50_no24": ("difnet", {"depth": 50, "difnet.walks": (1, 3, 5)}),
    **{f"simdeeplab{d}": ("simdeeplab", {"depth": d}) for d in DEPTHS},
    # PDN: E = 1 ("8NB") or 2 ("24NB") rings of neighbours, one ("1M") or two ("2M") modules.
    **{f"pdn{d}_{n}nb_{m}m": ("pdn", {"depth": d, "pdn.neighbors": n, "pdn.modules": m})
       for d in DEPTHS for n in (8, 24) for m in (1, 2)},
    # DeepLabv3+ (output stride 16 in training, 8 in evaluation), and with Dilated Affinity's head
    # and loss at the paper's best rates R = {8, (12, 24), 16} (its Table 2).
    **{f"deeplabv3plus{d}": ("deeplabv3plus", {"depth": d}) for d in DEPTHS},
    **{f"deeplabv3plus{d}_affinity": ("deeplabv3plus", {"depth": d,
                                                         "deeplabv3plus.affinity_rates": PAPER_AFFINITY_RATES})
       for d in DEPTHS},
}

# Family -> overrides of its own keys under `synthetic` (the shared keys shrink for every family).
SYNTHETIC: dict[str, dict[str, Any]] = {
    "pdn": {"d": 64},  # the module's width, 256 in the paper, for a width-16 ResNet
    "deeplabv3plus": {"aspp_rates": (1, 2, 3)},  # at output stride 16: a 6x6 grid of an 81 crop
}

# Family -> train overrides under `imagenet` (the lr groups: pretrained x1, new layers x new_lr_scale).
IMAGENET: dict[str, dict[str, Any]] = {
    "pdn": {"train.lr": 2.5e-4},  # PDN's fine-tuning: 2.5e-4 pretrained, x10 = 2.5e-3 new layers (Sec. 4.1)
    # DeepLabv3+'s recipe (Dilated Affinity Sec. 4.1 defers to it): lr 7e-3 with poly decay on every layer.
    "deeplabv3plus": {"train.lr": 7e-3, "train.new_lr_scale": 1.0},
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
    model[family] = FAMILIES[family].defaults()
    for key, value in overrides.items():
        set_key(model, key, value)
    return model


def apply_synthetic(model: ml_collections.ConfigDict) -> None:
    """The CPU sizes of the `synthetic` modifier: a width-16 ResNet and rates scaled to an 11x11 grid."""
    model.width = 16
    model.aspp_rates = (1, 2, 3, 4)
    for key, value in SYNTHETIC.get(model.name, {}).items():
        set_key(model, f"{model.name}.{key}", value)
