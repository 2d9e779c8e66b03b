"""PASCAL-Person-Part (`person_part`: 1,716 train / 1,817 validation, 7 classes).

`--config=experiments/configs/person_part.py:VARIANT[,synthetic][,imagenet]`; PDN's dataset
(68.3 mIoU). VOC 2010 images (at most 500x500): crop 321, evaluation padded to 505x505; 200
epochs from scratch, 30 under `imagenet`.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

PERSON_PART_TRAIN_IMAGES = 1_716
DATASET = common.Dataset(name="person_part", train_images=PERSON_PART_TRAIN_IMAGES)


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
