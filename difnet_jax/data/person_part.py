"""TFDS builder `pascal_person_part` (`data.name` "person_part"): PASCAL-Person-Part (Chen et al., CVPR 2014).

Human part labels merged from PASCAL-Part into background, head, torso, upper arms, lower
arms, upper legs, lower legs, over VOC 2010 images: train 1,716 / validation 1,817 (the
"test" split of PDN and of DeepLab's "Attention to Scale", which released these files).

What users download (the release linked from liangchiehchen.com/projects/DeepLab.html, as
read by public loaders of it):
  pascal_person_part.zip       pascal_person_part/pascal_person_part_gt/<id>.png and
                               pascal_person_part/pascal_person_part_trainval_list/{train,val}.txt
  VOCtrainval_03-May-2010.tar  VOCdevkit/VOC2010/JPEGImages/<id>.jpg
Each line of a split list names an example by its first word, `/JPEGImages/<id>.jpg`
(followed by the label path) or `<id>`; the image id is that word's stem. Labels are
palette PNGs whose indices 0..6 are the classes (read as indices; grayscale PNGs of the same
indices also work); 255, if present, is ignored.
Not confirmed here (no machine can download the release): the exact list-line format and
the PNG mode, both inferred from loaders (one decodes the PNGs to gray and finds the VOC
colours of indices 0..6); extra files in the zip (e.g. train_id.txt) are not read. The
PASCAL-Part raw `Annotations_Part/*.mat` would need the part-merging rules, which this
builder does not implement.
Bad examples: see `example_files` (DIFNET_SKIP_BAD_EXAMPLES).
"""

from __future__ import annotations

import pathlib

from etils import epath

from difnet_jax.data import example_files, manual_files
from difnet_jax.data.manual_builder import ManualSegmentationBuilder

CLASS_NAMES = ("background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs")
PARTS_ARCHIVE = "pascal_person_part.zip"
PARTS_ROOT = "pascal_person_part"
LABELS = f"{PARTS_ROOT}/pascal_person_part_gt"
SPLIT_LISTS = {"train": f"{PARTS_ROOT}/pascal_person_part_trainval_list/train.txt",
               "validation": f"{PARTS_ROOT}/pascal_person_part_trainval_list/val.txt"}
VOC_ARCHIVE = "VOCtrainval_03-May-2010.tar"
VOC_ROOT = "VOCdevkit/VOC2010"


def read_split_ids(path: epath.Path) -> list[str]:
    """The image ids of a split list: the stem of each line's first word (`/JPEGImages/<id>.jpg` or `<id>`)."""
    return [pathlib.PurePosixPath(word).stem for word in manual_files.read_ids(path, PARTS_ARCHIVE)]


class PascalPersonPart(ManualSegmentationBuilder):
    """PASCAL-Person-Part human part segmentation: 7 classes, 1,716 train / 1,817 validation images."""

    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "http://liangchiehchen.com/projects/DeepLab.html"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put {PARTS_ARCHIVE} (liangchiehchen.com/projects/DeepLab.html) and the official
    {VOC_ARCHIVE} (host.robots.ox.ac.uk/pascal/VOC/voc2010) in manual_dir, or what they
    extract to: {PARTS_ROOT}/... and {VOC_ROOT}/...
    """

    def _split_examples(self, dl_manager):
        parts = self._locate(dl_manager, PARTS_ARCHIVE, [LABELS, *SPLIT_LISTS.values()])
        voc = self._locate(dl_manager, VOC_ARCHIVE, [f"{VOC_ROOT}/JPEGImages"]) / VOC_ROOT
        splits_examples = {}
        for split, list_path in SPLIT_LISTS.items():
            examples = [
                example_files.ExampleFiles(
                    image_id, voc / "JPEGImages" / f"{image_id}.jpg", parts / LABELS / f"{image_id}.png",
                    example_files.read_index_png,
                )
                for image_id in sorted(set(read_split_ids(parts / list_path)))
            ]
            manual_files.require_files([e.label for e in examples], PARTS_ARCHIVE)
            manual_files.require_files([e.image for e in examples], VOC_ARCHIVE)
            splits_examples[split] = examples
        return splits_examples
