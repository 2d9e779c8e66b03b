"""Configs for DifNet and Sim-DeepLab on PASCAL-Context: 60 classes, the 59 frequent ones + background.

Use as `--config=experiments/configs/context.py:ARG`, ARG a VARIANT of voc.py, optionally with
`,imagenet` (the `synthetic` dataset modifier does not apply). Everything as in voc.py except
the dataset (`pascal_context`, whose default config is pascal_context/60), eval padding to
505x505 (VOC 2010 images are at most 500x500) and the epochs counted over the 4,998 train
images: 200 from scratch, 30 when fine-tuning (`imagenet`).
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
    epochs = 30 if config.model.backbone_init else 200
    config.train.num_steps = epochs * CONTEXT_TRAIN_IMAGES // config.train.batch_size
    return config
