"""PASCAL-Context (`pascal_context` = pascal_context/60: 4,998 train / 5,105 validation, 59 classes + background).

`--config=experiments/configs/context.py:VARIANT[,synthetic][,imagenet]`. As voc.py except the
dataset: VOC 2010 images (at most 500x500) padded to 505x505 for evaluation; 200 epochs of the
4,998 train images from scratch, 30 under `imagenet`.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

CONTEXT_TRAIN_IMAGES = 4_998
DATASET = common.Dataset(name="pascal_context", train_images=CONTEXT_TRAIN_IMAGES)


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
