"""Cityscapes fine (`cityscapes`: 2,975 train / 500 validation, 19 train ids, the rest ignored).

`--config=experiments/configs/cityscapes.py:VARIANT[,synthetic][,imagenet]`; Dilated
Affinity's second dataset (77.15 -> 78.70). Images are 2048x1024: crop 769 and batch 12
(the paper's), evaluation by sliding 769x769 windows with stride 513 (probabilities averaged
where they overlap); 200 epochs from scratch, 30 under `imagenet` (DeepLabv3+: 90K steps).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

CITYSCAPES_TRAIN_IMAGES = 2_975
DATASET = common.Dataset(name="cityscapes", train_images=CITYSCAPES_TRAIN_IMAGES, crop_size=769, eval_size=1025,
                         eval_mode="sliding", eval_stride=513, batch_size=12, eval_batch_size=2,
                         # Dilated Affinity (Sec. 4.1): "As for Cityscapes, the training steps is 90K, crop size
                         # changes to 769, while the batch size decreases to 12" (crop and batch: the Dataset's).
                         # The DeepLabv3+ reference evaluates whole 1025x2049 images (g3doc/cityscapes.md); here
                         # sliding 769x769 windows (the Dataset's): a remaining difference.
                         imagenet_overrides={"deeplabv3plus": {"train.num_steps": 90_000}})


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
