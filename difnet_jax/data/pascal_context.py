"""TFDS builder `pascal_context`: PASCAL-Context (Mottaghi et al., CVPR 2014) with the 59 frequent classes.

Images are VOC 2010's; train / validation = VOC2010 ImageSets/Main train.txt / val.txt
(4,998 / 5,105 images). Each image's label file trainval/<id>.mat holds LabelMap, the ids of
the 459 full classes (0 where unlabelled), named in labels.txt (`id: name` per line). The 459
are mapped by name to the standard 59 (`CONTEXT_59`, in that order); every other class and
unlabelled pixels are "background". Configs:
  pascal_context/60 (default)  background 0, the 59 classes 1..59: 60 classes, as in the DifNet paper.
  pascal_context/59            the 59 classes 0..58, background 255 (ignored).

manual_dir holds the official archives or what they extract to:
  VOCtrainval_03-May-2010.tar  VOCdevkit/VOC2010/{JPEGImages/*.jpg, ImageSets/Main/{train,val}.txt}
  trainval.tar.gz              trainval/<id>.mat, labels.txt
Bad examples: see `example_files` (DIFNET_SKIP_BAD_EXAMPLES).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from difnet_jax.data import example_files, manual_files
from difnet_jax.data.manual_builder import ManualSegmentationBuilder

CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky",
    "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
VOC_ARCHIVE = "VOCtrainval_03-May-2010.tar"
VOC_ROOT = "VOCdevkit/VOC2010"
CONTEXT_ARCHIVE = "trainval.tar.gz"
_NOT_A_CLASS = -1


@dataclasses.dataclass
class PascalContextConfig(tfds.core.BuilderConfig):
    background_ignored: bool = False  # True: background is 255 and the 59 classes are 0..58.

    @property
    def class_names(self) -> list[str]:
        return list(CONTEXT_59) if self.background_ignored else ["background", *CONTEXT_59]


def read_class_ids(path: epath.Path) -> dict[str, int]:
    """labels.txt: `id: name` per line, as {name: id}."""
    ids = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        class_id, separator, name = line.partition(":")
        if not separator or not class_id.strip().isdigit():
            raise ValueError(f"{path}, line {number}: expected `id: name`, got {line!r}")
        ids[name.strip()] = int(class_id)
    return ids


def lookup_table(class_ids: dict[str, int], labels_path: epath.Path, background_ignored: bool) -> np.ndarray:
    """Maps a LabelMap id (0 unlabelled, else an id of labels.txt) to its training label, others to -1."""
    background = example_files.IGNORE_LABEL if background_ignored else 0
    first = 0 if background_ignored else 1
    table = np.full(max(class_ids.values(), default=0) + 1, _NOT_A_CLASS, np.int16)
    table[0] = background
    table[list(class_ids.values())] = background
    for index, name in enumerate(CONTEXT_59):
        if name not in class_ids:
            raise ValueError(f"{labels_path} has no class named {name!r}, one of the 59 Pascal-Context classes")
        table[class_ids[name]] = first + index
    return table


def read_context_label(path: epath.Path, table: np.ndarray) -> np.ndarray:
    """The training labels of a trainval/<id>.mat file (LabelMap mapped through `table`)."""
    label_map = example_files.read_mat_array(path, "LabelMap")
    unknown = label_map >= len(table)
    unknown |= table[np.minimum(label_map, len(table) - 1)] == _NOT_A_CLASS
    if unknown.any():
        raise example_files.BadExampleError(
            f"{path}: LabelMap values {np.unique(label_map[unknown])[:10].tolist()} are not ids of labels.txt"
        )
    return table[label_map].astype(np.uint8)


class PascalContext(ManualSegmentationBuilder):
    """PASCAL-Context semantic segmentation: 59 classes (+ background), 4,998 train / 5,105 validation."""

    HOMEPAGE = "https://cs.stanford.edu/~roozbeh/pascal-context/"
    BUILDER_CONFIGS = [
        PascalContextConfig(name="60", description="background 0 and the 59 classes 1..59"),
        PascalContextConfig(name="59", description="the 59 classes 0..58, background 255", background_ignored=True),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put the official archives {VOC_ARCHIVE} (host.robots.ox.ac.uk/pascal/VOC/voc2010) and {CONTEXT_ARCHIVE}
    (cs.stanford.edu/~roozbeh/pascal-context) in manual_dir, or what they extract to: {VOC_ROOT}/...,
    trainval/<id>.mat and labels.txt.
    """

    @property
    def class_names(self) -> list[str]:
        return self.builder_config.class_names

    def _split_examples(self, dl_manager):
        splits = f"{VOC_ROOT}/ImageSets/Main"
        voc_required = (f"{VOC_ROOT}/JPEGImages", f"{splits}/train.txt", f"{splits}/val.txt")
        voc = self._locate(dl_manager, VOC_ARCHIVE, voc_required)
        context = self._locate(dl_manager, CONTEXT_ARCHIVE, ("trainval", "labels.txt"))

        labels_path = context / "labels.txt"
        table = lookup_table(read_class_ids(labels_path), labels_path, self.builder_config.background_ignored)
        read_label = functools.partial(read_context_label, table=table)
        splits_examples = {}
        for split, list_name in (("train", "train.txt"), ("validation", "val.txt")):
            examples = [
                example_files.ExampleFiles(
                    image_id, voc / VOC_ROOT / "JPEGImages" / f"{image_id}.jpg",
                    context / "trainval" / f"{image_id}.mat", read_label,
                )
                for image_id in sorted(set(manual_files.read_ids(voc / splits / list_name, VOC_ARCHIVE)))
            ]
            manual_files.require_files([e.image for e in examples], VOC_ARCHIVE)
            manual_files.require_files([e.label for e in examples], CONTEXT_ARCHIVE)
            splits_examples[split] = examples
        return splits_examples
