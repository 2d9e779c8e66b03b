"""The grain input pipeline over `tfds.data_source` (array_record, no TensorFlow).

Train: random scale, pad (image with the mean colour, label with 255), random crop,
random horizontal flip, normalisation; shuffled, repeated, sharded per host, batched.
Evaluation batches (padded canvases, void fillers) are made by `difnet_jax.evaluator`,
the one evaluator, from `source` and the `pad_to` / `normalize` here.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import difnet_jax.data  # noqa: F401  (registers the builders)
from difnet_jax.constants import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD

# config `data.name` -> TFDS builder name, where they differ: TFDS registers `cityscapes` and
# `scene_parse150` itself (generated through TensorFlow), so the project's builders have names of their own.
DATASET_NAMES = {
    "ade20k": "ade20k_scene_parsing",
    "person_part": "pascal_person_part",
    "cityscapes": "cityscapes_fine",
}


def builder_name(data_name: str) -> str:
    """The TFDS builder name (and config) of a config's `data.name`: "ade20k" -> "ade20k_scene_parsing"."""
    dataset, slash, config = data_name.partition("/")
    return DATASET_NAMES.get(dataset, dataset) + slash + config


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds the dataset `name` (a `data.name` or TFDS name) in `data_dir` as array_record unless it is there."""
    builder = tfds.builder(builder_name(name), data_dir=data_dir or None, file_format="array_record")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    builder.download_and_prepare(download_config=download_config)
    return builder


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
    return list(builder.info.metadata["class_names"])


def source(name: str, split: str, data_dir: str | None = None):
    """The random-access records of `split` of the prepared dataset `name` (a `data.name` or TFDS name)."""
    return tfds.data_source(builder_name(name), split=split, data_dir=data_dir or None)


def _label_2d(label: np.ndarray) -> np.ndarray:
    return label[..., 0] if label.ndim == 3 else label


def normalize(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def pad_to(image: np.ndarray, label: np.ndarray, height: int, width: int):
    """Pads bottom/right to at least (height, width): image with the mean, label with 255."""
    pad_y, pad_x = max(height - image.shape[0], 0), max(width - image.shape[1], 0)
    if pad_y or pad_x:
        mean = IMAGENET_MEAN.round().astype(np.uint8)
        padded = np.empty((image.shape[0] + pad_y, image.shape[1] + pad_x, 3), np.uint8)
        padded[:] = mean
        padded[: image.shape[0], : image.shape[1]] = image
        image = padded
        label = np.pad(label, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_LABEL)
    return image, label


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Random scale in [min_scale, max_scale), pad, random crop, random flip, normalise."""

    crop_size: int
    min_scale: float = 0.5
    max_scale: float = 1.5

    def random_map(self, element, rng: np.random.Generator):
        image, label = element["image"], _label_2d(element["label"])
        scale = rng.uniform(self.min_scale, self.max_scale)
        height, width = max(int(image.shape[0] * scale + 0.5), 1), max(int(image.shape[1] * scale + 0.5), 1)
        image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
        image, label = pad_to(image, label, self.crop_size, self.crop_size)
        top = rng.integers(0, image.shape[0] - self.crop_size + 1)
        left = rng.integers(0, image.shape[1] - self.crop_size + 1)
        image = image[top : top + self.crop_size, left : left + self.crop_size]
        label = label[top : top + self.crop_size, left : left + self.crop_size]
        if rng.uniform() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return {"image": normalize(image), "label": np.ascontiguousarray(label, dtype=np.int32)}


def train_loader(
    data_source, *, global_batch_size: int, crop_size: int, scale_range=(0.5, 1.5), seed: int = 0,
    num_workers: int = 0,
) -> grain.DataLoader:
    """An endless, shuffled loader yielding this host's share of each global batch.

    Its iterator's `get_state()`/`set_state()` let a resumed run see exactly the
    batches it would have seen.
    """
    num_hosts = jax.process_count()
    if global_batch_size % num_hosts:
        raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the {num_hosts} hosts")
    shard = grain.sharding.ShardOptions(jax.process_index(), num_hosts, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(data_source), shard_options=shard, shuffle=True, num_epochs=None, seed=seed
    )
    return grain.DataLoader(
        data_source=data_source,
        sampler=sampler,
        operations=[
            TrainTransform(crop_size, *scale_range),
            grain.transforms.Batch(global_batch_size // num_hosts, drop_remainder=True),
        ],
        worker_count=num_workers,
    )
