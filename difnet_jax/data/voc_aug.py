"""TFDS builder `voc_aug`: PASCAL VOC 2012 segmentation augmented with SBD (Hariharan et al., ICCV 2011).

The usual "VOC aug" sets (DeepLab, DifNet Sec. 5.1):
  train       (SBD train + SBD val + VOC seg train) minus VOC seg val: 10,582 images. Where an
              image has both a VOC and an SBD annotation, the VOC one is used; SBD-only images
              come with their SBD image file.
  validation  VOC seg val: 1,449 images.
Labels: 0 background, 1..20 the VOC classes, 255 void (VOC's object borders; SBD has none).

manual_dir holds the official archives or what they extract to:
  VOCtrainval_11-May-2012.tar  VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png,
                               ImageSets/Segmentation/{train,val}.txt}
  benchmark.tgz                benchmark_RELEASE/dataset/{img/*.jpg, cls/*.mat, train.txt, val.txt}
Bad examples: see `example_files` (DIFNET_SKIP_BAD_EXAMPLES).
"""

from __future__ import annotations

import numpy as np
from etils import epath

from difnet_jax.data import example_files, manual_files
from difnet_jax.data.manual_builder import ManualSegmentationBuilder

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
VOC_ROOT = "VOCdevkit/VOC2012"
VOC_SPLIT_LISTS = ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt")
SBD_ARCHIVE = "benchmark.tgz"
SBD_ROOT = "benchmark_RELEASE/dataset"
SBD_SPLIT_LISTS = ("train.txt", "val.txt")


def read_sbd_label(path: epath.Path) -> np.ndarray:
    """The class indices of an SBD cls/*.mat file: struct GTcls, field Segmentation."""
    return example_files.read_mat_array(path, "GTcls", "Segmentation")


class VocAug(ManualSegmentationBuilder):
    """PASCAL VOC 2012 + SBD semantic segmentation: 21 classes, 10,582 train / 1,449 validation images."""

    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put the official archives {VOC_ARCHIVE} (host.robots.ox.ac.uk/pascal/VOC/voc2012) and {SBD_ARCHIVE}
    (SBD, www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours) in manual_dir,
    or what they extract to: {VOC_ROOT}/... and {SBD_ROOT}/...
    """

    def _split_examples(self, dl_manager):
        voc_required = [f"{VOC_ROOT}/{path}" for path in ("JPEGImages", "SegmentationClass", *VOC_SPLIT_LISTS)]
        voc = self._locate(dl_manager, VOC_ARCHIVE, voc_required) / VOC_ROOT
        sbd_required = [f"{SBD_ROOT}/{path}" for path in ("img", "cls", *SBD_SPLIT_LISTS)]
        sbd = self._locate(dl_manager, SBD_ARCHIVE, sbd_required) / SBD_ROOT

        voc_train, voc_val = (manual_files.read_ids(voc / path, VOC_ARCHIVE) for path in VOC_SPLIT_LISTS)
        sbd_ids = [image_id for path in SBD_SPLIT_LISTS for image_id in manual_files.read_ids(sbd / path, SBD_ARCHIVE)]
        train_ids = sorted((set(sbd_ids) | set(voc_train)) - set(voc_val))
        voc_annotated = set(voc_train) | set(voc_val)

        def files(image_id: str) -> example_files.ExampleFiles:
            if image_id in voc_annotated:  # The VOC annotation wins over SBD's.
                return example_files.ExampleFiles(
                    image_id, voc / "JPEGImages" / f"{image_id}.jpg", voc / "SegmentationClass" / f"{image_id}.png",
                    example_files.read_index_png,
                )
            return example_files.ExampleFiles(
                image_id, sbd / "img" / f"{image_id}.jpg", sbd / "cls" / f"{image_id}.mat", read_sbd_label
            )

        train = [files(image_id) for image_id in train_ids]
        validation = [files(image_id) for image_id in sorted(set(voc_val))]
        from_voc = [e for e in train + validation if e.id in voc_annotated]
        from_sbd = [e for e in train if e.id not in voc_annotated]
        manual_files.require_files([path for e in from_voc for path in (e.image, e.label)], VOC_ARCHIVE)
        manual_files.require_files([path for e in from_sbd for path in (e.image, e.label)], SBD_ARCHIVE)
        return {"train": train, "validation": validation}
