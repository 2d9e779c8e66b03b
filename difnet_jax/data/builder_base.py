"""What the TFDS builders of this project share: array_record files; for segmentation, the features and `_info()`.

Every builder mixes in `ArrayRecordByDefault`. A segmentation builder subclasses `SegmentationBuilder`
and names its `CLASS_NAMES` (label i = name i) and `HOMEPAGE`; its module docstring is the dataset's
description. Builders of manually downloaded datasets go one step further:
`manual_builder.ManualSegmentationBuilder`.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


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


class SegmentationBuilder(ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A semantic segmentation builder: version 1.0.0, `segmentation_features()`, metadata `class_names`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CLASS_NAMES: Sequence[str] = ()
    HOMEPAGE: str | None = None

    @property
    def class_names(self) -> list[str]:
        """Label i's name; a builder whose names depend on its config overrides this."""
        return list(self.CLASS_NAMES)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=sys.modules[type(self).__module__].__doc__,
            features=segmentation_features(),
            metadata=tfds.core.MetadataDict(class_names=self.class_names),
            homepage=self.HOMEPAGE,
        )


class GeneratedSplits:
    """Mixed into the procedurally generated builders (synthetic_shapes, synthetic_classes): nothing to download;
    `builder_config.num_train` train and `num_validation` validation examples, `self._example(split, index)` each,
    keyed '<split>_<index>'."""

    def _example(self, split: str, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        config = self.builder_config
        return {"train": self._generate_examples("train", config.num_train),
                "validation": self._generate_examples("validation", config.num_validation)}

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for index in range(count):
            key = f"{split}_{index:06d}"
            yield key, {**self._example(split, index), "id": key}
