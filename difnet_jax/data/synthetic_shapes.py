"""TFDS builder `synthetic_shapes`: the embedded default dataset, generated locally.

It goes through the same path as the real datasets: TFDS writes array_record
shards, `tfds.data_source` reads them, grain feeds them. Scenes come from
`shapes.render_scene`; see there for what makes them hard.

Configs: `default` (2,000 train / 300 validation scenes of 96x96) and `tiny`
(48 / 16 scenes, for tests).
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from difnet_jax.data import shapes
from difnet_jax.data.builder_base import GeneratedSplits, SegmentationBuilder, png_bytes


@dataclasses.dataclass
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    num_train: int = 2000
    num_validation: int = 300
    image_size: int = 96
    seed: int = 0


class SyntheticShapes(GeneratedSplits, SegmentationBuilder):
    """VOC-like synthetic scenes: 21 classes, 255 void band, ambiguous local appearance."""

    CLASS_NAMES = shapes.CLASS_NAMES
    BUILDER_CONFIGS = [
        SyntheticShapesConfig(name="default", description="2,000 train / 300 validation 96x96 scenes"),
        SyntheticShapesConfig(name="tiny", description="48 / 16 scenes for tests", num_train=48, num_validation=16),
    ]

    def _example(self, split: str, index: int) -> dict:
        cfg = self.builder_config
        image, label = shapes.render_scene(cfg.seed, split, index, size=cfg.image_size)
        return {"image": png_bytes(image), "label": png_bytes(label)}
