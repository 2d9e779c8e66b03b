"""PASCAL-Person-Part (`person_part`: 1,716 train / 1,817 validation, 7 classes).

`--config=experiments/configs/person_part.py:VARIANT[,synthetic][,imagenet]`; PDN's dataset
(68.3 mIoU). VOC 2010 images (at most 500x500): crop 321, evaluation padded to 505x505; 200
epochs from scratch, 30 under `imagenet`, except PDN under `imagenet` (`PDN_FINE_TUNING`).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from experiments.configs.ade20k import ADE20K_TRAIN_IMAGES, PDN_FINE_TUNING, PDN_ITERATIONS

PERSON_PART_TRAIN_IMAGES = 1_716

# PDN's fine-tuning on PASCAL-Person-Part (papers/003). The paper gives its batch (16, synchronized BN), crop
# ("randomly cropped to 321 x 321") and learning rates (2.5e-4, new layers 2.5e-3) for every dataset (Sec. 5.1),
# the same as ADE20K's (ade20k.py, quoted there), but no iteration count for this dataset, no decay policy and no
# augmentation. Our choice: ADE20K's schedule in epochs, 200,000 iterations x 16 / 20,210 images = 158 epochs,
# i.e. 200,000 x 1,716 / 20,210 = 16,982 iterations of batch 16; poly decay 0.9 and random scale [0.5, 1.5) + flip
# as on ADE20K.
PDN_FINE_TUNING = {**PDN_FINE_TUNING,
                   "train.num_steps": round(PDN_ITERATIONS * PERSON_PART_TRAIN_IMAGES / ADE20K_TRAIN_IMAGES)}

DATASET = common.Dataset(name="person_part", train_images=PERSON_PART_TRAIN_IMAGES,
                         imagenet_overrides={"pdn": PDN_FINE_TUNING})


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
