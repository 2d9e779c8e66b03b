"""Pascal VOC 2012, SBD-augmented (`voc_aug`: 10,582 train / 1,449 validation, 21 classes).

`--config=experiments/configs/voc.py:VARIANT[,synthetic][,imagenet]`, VARIANT any model of
experiments/configs/variants.py (difnet18 ... difnet101, difnet50_noaspp, difnet50_no24,
simdeeplab18 ... simdeeplab101, ...). DifNet's protocol (Sec. 5.1): crop 321, evaluation padded
to 505x505, 200 epochs from scratch; 30 epochs under `imagenet`, except DeepLabv3+ (and Dilated
Affinity) under `imagenet`: 30K steps at crop 513, evaluated on a 513 canvas. See common.py for
the modifiers.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from experiments.configs.common import MODIFIERS  # noqa: F401  (part of this file's interface)
from experiments.configs.variants import DEPTHS, VARIANTS  # noqa: F401

VOC_TRAIN_IMAGES = 10_582
DATASET = common.Dataset(
    name="voc_aug", train_images=VOC_TRAIN_IMAGES,
    imagenet_overrides={"deeplabv3plus": {
        # Dilated Affinity (Sec. 4.1): "For PASCAL VOC 2012, we train the model for 30K iterations with the crop
        # size of 513 and the batch size of 16" (batch 16: the Dataset's).
        "train.num_steps": 30_000, "data.crop_size": 513,
        # Evaluation canvas 513x513: the DeepLabv3+ reference's eval.py eval_crop_size (513, 513); 8k+1 at the
        # evaluation's output stride 8.
        "data.eval_size": 513,
    }},
)


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
