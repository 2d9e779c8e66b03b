"""TFDS builder `synthetic_classes`: the pretraining dataset of the synthetic protocol, what ImageNet is to VOC.

One object of the 20 classes of `synthetic_shapes` per image, on the same backgrounds with the same
distractors, at the scenes' pixel sizes (`shapes.render_object`); one label per image, 0..19 for
`synthetic_shapes`' classes 1..20 (background is no class here, as ImageNet has none). Written as
array_record like the other builders; `difnet_jax.backbone_weights.pretraining` trains the backbones on it.

Configs: `default` (10,000 train / 1,000 validation images of 64x64) and `tiny` (64 / 32, for tests).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from difnet_jax.data import shapes
from difnet_jax.data.builder_base import ArrayRecordByDefault, GeneratedSplits, png_bytes

CLASS_NAMES = shapes.CLASS_NAMES[1:]  # label i is synthetic_shapes' class i + 1


@dataclasses.dataclass
class SyntheticClassesConfig(tfds.core.BuilderConfig):
    num_train: int = 10000
    num_validation: int = 1000
    image_size: int = 64
    seed: int = 0


class SyntheticClasses(GeneratedSplits, ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """Single-object classification images of synthetic_shapes' 20 object classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SyntheticClassesConfig(name="default", description="10,000 train / 1,000 validation 64x64 images"),
        SyntheticClassesConfig(name="tiny", description="64 / 32 images for tests", num_train=64, num_validation=32),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
        )

    def _example(self, split: str, index: int) -> dict:
        cfg = self.builder_config
        image, class_id = shapes.render_object(cfg.seed, split, index, size=cfg.image_size)
        return {"image": png_bytes(image), "label": class_id - 1}
