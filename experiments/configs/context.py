"""Configs for DifNet and Sim-DeepLab on PASCAL-Context: 60 classes, the 59 frequent ones + background.

Use as `--config=experiments/configs/context.py:ARG`, ARG a VARIANT of voc.py (its dataset
modifiers do not apply). Everything as in voc.py except the dataset (`pascal_context`, whose
default config is pascal_context/60), eval padding to 505x505 (VOC 2010 images are at most
500x500) and 200 epochs of the 4,998 train images at batch 16.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import voc

CONTEXT_TRAIN_IMAGES = 4_998


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    config = voc.get_config(arg)
    if config.data.name != "voc_aug":
        raise ValueError(f"config arg {arg!r}: context.py takes a model VARIANT only, not a dataset modifier")
    config.data.name = "pascal_context"
    config.data.eval_size = 505
    config.train.num_steps = 200 * CONTEXT_TRAIN_IMAGES // config.train.batch_size
    return config
