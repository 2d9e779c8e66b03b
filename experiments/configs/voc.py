"""Pascal VOC 2012, SBD-augmented (`voc_aug`: 10,582 train / 1,449 validation, 21 classes).

`--config=experiments/configs/voc.py:VARIANT[,synthetic][,imagenet]`, VARIANT any model of
experiments/configs/variants.py (difnet18 ... difnet101, difnet50_noaspp, difnet50_no24,
simdeeplab18 ... simdeeplab101, ...). DifNet's protocol (Sec. 5.1): crop 321, evaluation padded
to 505x505, 200 epochs from scratch; 30 epochs under `imagenet`. See common.py for the modifiers.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from experiments.configs.common import MODIFIERS  # noqa: F401  (part of this file's interface)
from experiments.configs.variants import DEPTHS, VARIANTS  # noqa: F401

VOC_TRAIN_IMAGES = 10_582
DATASET = common.Dataset(
    name="voc_aug", train_images=VOC_TRAIN_IMAGES,
    # Dilated Affinity (Sec. 4.1): DeepLabv3+ fine-tunes 30K steps at crop 513, batch 16.
    imagenet_overrides={"deeplabv3plus": {"train.num_steps": 30_000, "data.crop_size": 513}},
)


def get_config(arg: str = "difnet50") -> ml_collections.ConfigDict:
    return common.get_config(arg, DATASET)
