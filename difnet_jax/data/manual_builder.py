"""The base of the builders of manually downloaded datasets: from each split's example files to TFDS generators.

A subclass finds its folders with `_locate` (manual_dir itself, or an official archive in it
extracted; see `manual_files`) and returns each split's `example_files.ExampleFiles` from
`_split_examples`; this class turns them into TFDS generators that validate every example
(`example_files.generate`) and store its image as `image_storage` says (the builder's `image_storage` argument,
recorded in the dataset's metadata; `pipeline.prepare` passes it).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import tensorflow_datasets as tfds
from etils import epath

from difnet_jax.data import example_files, manual_files
from difnet_jax.data import image_storage as _storage
from difnet_jax.data.builder_base import SegmentationBuilder


class ManualSegmentationBuilder(SegmentationBuilder, skip_registration=True):
    """A segmentation builder reading manual_dir: `_split_examples` lists each split's files.

    `image_storage` (one of `image_storage.STORAGES`) is how a prepare by this builder stores the images; it is
    written into the metadata. None (reading, or a plain TFDS call): "released", and the metadata keeps what the
    prepared dataset records, so that `image_storage.recorded(builder.info.metadata)` tells what is on disk.
    """

    def __init__(self, *, image_storage: str | None = None, **kwargs):
        self._image_storage = None if image_storage is None else _storage.check(image_storage)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        info = super()._info()
        if self._image_storage is not None:
            info.metadata[_storage.METADATA_KEY] = self._image_storage
        return info

    def _download_and_prepare(self, dl_manager, download_config):
        with _storage.uncompressed_records(self._image_storage or _storage.RELEASED):
            return super()._download_and_prepare(dl_manager, download_config)

    @abc.abstractmethod
    def _split_examples(self, dl_manager: tfds.download.DownloadManager) -> dict[str, list[example_files.ExampleFiles]]:
        """{split: its examples}, every file already checked to exist (`manual_files.require_files`)."""

    def _locate(self, dl_manager: tfds.download.DownloadManager, archive: str, required: Sequence[str]) -> epath.Path:
        """The folder holding every path of `required`: manual_dir itself, or its `archive` extracted."""
        return manual_files.locate(
            manual_files.manual_dir(dl_manager), archive, required, dl_manager.download_dir / "extracted"
        )

    def _split_generators(self, dl_manager):
        name = f"{self.name}/{self.builder_config.name}" if self.BUILDER_CONFIGS else self.name
        return {
            split: self._generate_examples(examples, f"{name} {split}")
            for split, examples in self._split_examples(dl_manager).items()
        }

    def _generate_examples(self, examples: list[example_files.ExampleFiles], description: str):
        yield from example_files.generate(examples, len(self.class_names), description,
                                          self._image_storage or _storage.RELEASED)
