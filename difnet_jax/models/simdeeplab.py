"""Sim-DeepLab: the DifNet paper's baseline, DeepLabV2 without CRF.

Atrous ResNet (output stride 8) + ASPP, class scores upsampled bilinearly to the
input size (`model.logits_upsampling`: aligned corners, or half-pixel centres as the DifNet
authors' `main.py` upsamples, the default of their network's variants). Same interface as
DifNet: `(logits, intermediates)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from difnet_jax.constants import COMPUTE_DTYPES
from difnet_jax.models import family
from difnet_jax.models.aspp import ASPP
from difnet_jax.models.resize import LOGITS_UPSAMPLING, resize_bilinear
from difnet_jax.models.resnet import ResNet


class SimDeepLab(nn.Module):
    backbones = ("backbone",)

    num_classes: int
    depth: int = 101
    width: int = 64
    aspp_rates: Sequence[int] = (6, 12, 18, 24)
    dtype: Any = jnp.float32
    frozen_bn: bool = False  # the backbone's BatchNorm uses and keeps its running statistics
    resnet_layout: str = "torchvision"  # or "difnet_authors" (resnet.py)
    align_corners: bool = True  # False: the DifNet authors' upsampling of the logits (resize.py)

    @nn.compact
    def __call__(self, images, *, train: bool):
        backbone = ResNet(self.depth, self.width, dtype=self.dtype, frozen_bn=self.frozen_bn,
                          layout=self.resnet_layout, name="backbone")
        features = backbone(images, train=train)
        score_map = ASPP(self.num_classes, self.aspp_rates, dtype=self.dtype, name="aspp")(features["layer4"])
        logits = resize_bilinear(score_map.astype(jnp.float32), images.shape[1:3], self.align_corners)
        return logits, {"score_map": score_map}


# The family's entry points (difnet_jax.models.FAMILIES["simdeeplab"]): no keys of its own.


def defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()


def check(model: ml_collections.ConfigDict) -> None:
    del model


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    del model
    return SimDeepLab.backbones


def build(model: ml_collections.ConfigDict, num_classes: int, facts: family.Facts) -> SimDeepLab:
    del facts  # Sim-DeepLab reads nothing from the train set
    return SimDeepLab(
        num_classes, depth=model.depth, width=model.width, aspp_rates=tuple(model.aspp_rates),
        dtype=COMPUTE_DTYPES[model.dtype], frozen_bn=bool(family.frozen_bn_backbones(model, SimDeepLab.backbones)),
        resnet_layout=model.get("resnet_layout", "torchvision"),
        align_corners=LOGITS_UPSAMPLING[model.get("logits_upsampling", "align_corners")],
    )


def label(model: ml_collections.ConfigDict) -> str:
    return f"Sim-DeepLab-{model.depth}"
