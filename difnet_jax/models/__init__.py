"""Models: atrous ResNets, the segmentation families built on them, and their math.

`families.FAMILIES` is the one table from `config.model.name` to a family's entry points
(`family.Family`); `from difnet_jax.models import FAMILIES, build_model, DifNet, ...` reads it.
The names below are loaded on first use, so that the method math (`models.diffusion`,
`models.affinity`) imports with JAX alone: the accelerator check runs it where ml_collections,
grain and TFDS are not installed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FAMILIES": "families", "Family": "family", "build_model": "families", "family_of": "families",
    "dataset_facts": "families", "pretrained_backbones": "families", "DeepLabV3Plus": "deeplabv3plus",
    "DifNet": "difnet", "PDN": "pdn", "SimDeepLab": "simdeeplab", "ResNet": "resnet", "ResNet18": "resnet",
    "ResNet34": "resnet", "ResNet50": "resnet", "ResNet101": "resnet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
