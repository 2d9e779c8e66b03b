"""ADE20K SceneParsing (`ade20k`: 20,210 train / 2,000 validation, 150 classes, "other" ignored).

`--config=experiments/configs/ade20k.py:VARIANT[,synthetic][,imagenet]`; PDN's dataset
(ADE20K val 41.89 mIoU for 24NB-2M). Crop 321 (PDN, Sec. 4.1); images vary up to about 2,000
px a side, so evaluation slides crop-sized windows (stride 2/3 of the crop, probabilities
averaged where windows overlap) over each batch padded to its largest image instead of padding
every image to one huge square. 200 epochs from scratch (DifNet's protocol; PDN gives no
schedule), 30 under `imagenet`.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

ADE20K_TRAIN_IMAGES = 20_210
DATASET = common.Dataset(name="ade20k", train_images=ADE20K_TRAIN_IMAGES, eval_mode="sliding", eval_batch_size=4)


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
