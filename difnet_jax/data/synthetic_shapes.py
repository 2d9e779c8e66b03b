"""TFDS builder `synthetic_shapes`: the embedded default dataset, generated locally.

It goes through the same path as the real datasets: TFDS writes array_record
shards, `tfds.data_source` reads them, grain feeds them. Scenes come from
`shapes.render_scene`; see there for what makes them hard.

Configs: `default` (2,000 train / 300 validation scenes of 96x96) and `tiny`
(48 / 16 scenes, for tests).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from difnet_jax.data import shapes


@dataclasses.dataclass
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    num_train: int = 2000
    num_validation: int = 300
    image_size: int = 96
    seed: int = 0


def png_bytes(array: np.ndarray) -> io.BytesIO:
    """Encodes an (H, W) or (H, W, 3) uint8 array as PNG, losslessly and without TensorFlow."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


def segmentation_features() -> tfds.features.FeaturesDict:
    """The features every segmentation builder of this project writes."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
        "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, use_colormap=False),
        "id": tfds.features.Text(),
    })


class ArrayRecordByDefault:
    """Mixed into every builder of this project: array_record files unless a `file_format` is given.

    TFDS's own default, TFRecord, needs TensorFlow to write; array_record does not and is what
    `tfds.data_source` reads, so the plain TFDS entry points (`tfds.builder(name)
    .download_and_prepare(...)`, `tfds build`) work without TensorFlow.
    """

    def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs):
        super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)


class SyntheticShapes(ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """VOC-like synthetic scenes: 21 classes, 255 void band, ambiguous local appearance."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        SyntheticShapesConfig(name="default", description="2,000 train / 300 validation 96x96 scenes"),
        SyntheticShapesConfig(name="tiny", description="48 / 16 scenes for tests", num_train=48, num_validation=16),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=segmentation_features(),
            metadata=tfds.core.MetadataDict(class_names=list(shapes.CLASS_NAMES)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {
            "train": self._generate_examples("train", self.builder_config.num_train),
            "validation": self._generate_examples("validation", self.builder_config.num_validation),
        }

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        for index in range(count):
            image, label = shapes.render_scene(cfg.seed, split, index, size=cfg.image_size)
            key = f"{split}_{index:06d}"
            yield key, {"image": png_bytes(image), "label": png_bytes(label), "id": key}
