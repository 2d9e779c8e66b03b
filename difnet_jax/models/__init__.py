"""Models: atrous ResNets, Sim-DeepLab and DifNet; `build_model` maps a config to one."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from difnet_jax.models.deeplab import SimDeepLab
from difnet_jax.models.difnet import DifNet
from difnet_jax.models.resnet import ResNet, ResNet18, ResNet34, ResNet50, ResNet101

__all__ = ["DifNet", "SimDeepLab", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "build_model",
           "pretrained_backbones"]

MODEL_NAMES = ("difnet", "simdeeplab")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.model.backbone_init_branches -> DifNet's backbones that the ImageNet weights initialise.
BRANCHES = {"both": DifNet.backbones, "seed": ("seed_backbone",), "similarity": ("similarity_backbone",)}


def pretrained_backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The backbone modules `model.backbone_init` initialises; () when training from scratch.

    (`.get`: a config.json written before these keys existed means "from scratch".)
    """
    if not model.get("backbone_init", ""):
        return ()
    if model.name == "simdeeplab":
        return SimDeepLab.backbones
    return BRANCHES[model.get("backbone_init_branches", "both")]


def build_model(model: ml_collections.ConfigDict, num_classes: int):
    """The network described by `config.model` (keys documented in experiments/configs/voc.py)."""
    if model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {model.dtype!r}")
    rates = tuple(model.aspp_rates)
    frozen = pretrained_backbones(model) if model.get("frozen_backbone_bn", False) else ()
    if model.name == "difnet":
        return DifNet(
            num_classes, depth=model.depth, width=model.width, aspp=model.aspp, aspp_rates=rates,
            walks=tuple(model.walks), psi_channels=model.psi_channels,
            diffusion_backend=model.diffusion_backend, dtype=DTYPES[model.dtype], frozen_bn_backbones=frozen,
        )
    if model.name == "simdeeplab":
        return SimDeepLab(
            num_classes, depth=model.depth, width=model.width, aspp_rates=rates, dtype=DTYPES[model.dtype],
            frozen_bn=bool(frozen),
        )
    raise ValueError(f"config.model.name must be one of {MODEL_NAMES}, got {model.name!r}")
