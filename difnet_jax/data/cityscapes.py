"""TFDS builder `cityscapes_fine` (`data.name` "cityscapes"): Cityscapes, fine labels (Cordts et al., CVPR 2016).

train 2,975 / validation 500 images of 2048x1024 (the test split's labels are not public
and are not read). Each image has a gtFine `*_gtFine_labelIds.png`, 8-bit grayscale with the
label ids 0..33 of cityscapesScripts' `helpers/labels.py`; they are mapped to that table's 19
trainIds (`LABEL_ID_TO_TRAIN_ID`), every other id to 255 (ignored). A value above 33 is a
bad example (license plates, id -1, are not drawn into labelIds images).

TFDS's own `cityscapes` needs TensorFlow to generate and stores raw label ids, hence this
builder and its name.

manual_dir holds the official archives or what they extract to:
  leftImg8bit_trainvaltest.zip  leftImg8bit/{train,val}/CITY/CITY_SEQ_FRAME_leftImg8bit.png (RGB)
  gtFine_trainvaltest.zip       gtFine/{train,val}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png
An example's id is CITY_SEQ_FRAME, e.g. aachen_000000_000019.
Bad examples: see `example_files` (DIFNET_SKIP_BAD_EXAMPLES).
"""

from __future__ import annotations

import functools

import numpy as np

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import example_files, manual_files
from difnet_jax.data.manual_builder import ManualSegmentationBuilder

CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
# cityscapesScripts helpers/labels.py: the label ids with a trainId; ids 0..33 not listed here are 255.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34  # 0 unlabeled .. 33 bicycle
IMAGES_ARCHIVE = "leftImg8bit_trainvaltest.zip"
LABELS_ARCHIVE = "gtFine_trainvaltest.zip"
SPLIT_FOLDERS = {"train": "train", "validation": "val"}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_id_table() -> np.ndarray:
    """Cityscapes label id -> trainId: the 19 classes 0..18, other ids 0..33 -> 255, values above 33 -> -1."""
    table = np.full(256, -1, np.int16)
    table[:NUM_LABEL_IDS] = IGNORE_LABEL
    table[list(LABEL_ID_TO_TRAIN_ID)] = list(LABEL_ID_TO_TRAIN_ID.values())
    return table


class CityscapesFine(ManualSegmentationBuilder):
    """Cityscapes semantic segmentation, fine labels: 19 classes, 2,975 train / 500 validation images."""

    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "https://www.cityscapes-dataset.com/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put the official archives {IMAGES_ARCHIVE} and {LABELS_ARCHIVE} (www.cityscapes-dataset.com,
    after registering) in manual_dir, or what they extract to: leftImg8bit/... and gtFine/...
    """

    def _split_examples(self, dl_manager):
        folders = list(SPLIT_FOLDERS.values())
        images_root = self._locate(dl_manager, IMAGES_ARCHIVE, [f"leftImg8bit/{f}" for f in folders])
        labels_root = self._locate(dl_manager, LABELS_ARCHIVE, [f"gtFine/{f}" for f in folders])
        read_label = functools.partial(
            example_files.read_png_through_table, table=label_id_table(),
            annotation=f"Cityscapes label ids 0..{NUM_LABEL_IDS - 1}",
        )
        splits_examples = {}
        for split, folder in SPLIT_FOLDERS.items():
            images = manual_files.find_files(images_root / "leftImg8bit" / folder, f"*/*{IMAGE_SUFFIX}", IMAGES_ARCHIVE)
            examples = []
            for image in images:
                image_id = image.name.removesuffix(IMAGE_SUFFIX)
                label = labels_root / "gtFine" / folder / image.parent.name / f"{image_id}{LABEL_SUFFIX}"
                examples.append(example_files.ExampleFiles(image_id, image, label, read_label))
            manual_files.require_files([e.label for e in examples], LABELS_ARCHIVE)
            splits_examples[split] = examples
        return splits_examples
