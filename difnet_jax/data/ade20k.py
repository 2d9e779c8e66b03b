"""TFDS builder `ade20k_scene_parsing` (`data.name` "ade20k"): ADE20K SceneParsing (Zhou et al., CVPR 2017).

The MIT Scene Parsing Benchmark (sceneparsing.csail.mit.edu; the CSAILVision/sceneparsing
development kit's README): train 20,210 images, validation 2,000. Annotation PNGs are
grayscale (mode L) with values 0..150: 0 is "other objects", not evaluated, and becomes 255
(ignored); v in 1..150 becomes v - 1. Class names: the first name of each entry of the kit's
objectInfo150.txt, in its order (index 0 = "wall", 149 = "flag").

TFDS's own `scene_parse150` reads a different release (ChallengeData2017, instance
annotations) through TensorFlow, hence this builder and its name.

manual_dir holds the official archive or what it extracts to:
  ADEChallengeData2016.zip  ADEChallengeData2016/images/{training,validation}/ADE_*.jpg,
                            ADEChallengeData2016/annotations/{training,validation}/ADE_*.png
Bad examples: see `example_files` (DIFNET_SKIP_BAD_EXAMPLES).
"""

from __future__ import annotations

import functools

import numpy as np

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import example_files, manual_files
from difnet_jax.data.manual_builder import ManualSegmentationBuilder

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)
ARCHIVE = "ADEChallengeData2016.zip"
ROOT = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "validation": "validation"}


def annotation_table() -> np.ndarray:
    """SceneParsing annotation value -> training label: 0 ("other") -> 255, v in 1..150 -> v - 1, else -1."""
    table = np.full(256, -1, np.int16)
    table[0] = IGNORE_LABEL
    table[1 : len(CLASS_NAMES) + 1] = np.arange(len(CLASS_NAMES))
    return table


class Ade20kSceneParsing(ManualSegmentationBuilder):
    """ADE20K SceneParsing semantic segmentation: 150 classes, 20,210 train / 2,000 validation images."""

    CLASS_NAMES = CLASS_NAMES
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put the official archive {ARCHIVE} (sceneparsing.csail.mit.edu) in manual_dir, or what it
    extracts to: {ROOT}/images/... and {ROOT}/annotations/...
    """

    def _split_examples(self, dl_manager):
        required = [f"{ROOT}/{kind}/{folder}" for kind in ("images", "annotations")
                    for folder in SPLIT_FOLDERS.values()]
        root = self._locate(dl_manager, ARCHIVE, required) / ROOT
        read_label = functools.partial(
            example_files.read_png_through_table, table=annotation_table(),
            annotation=f"SceneParsing annotation values 0..{len(CLASS_NAMES)}",
        )
        splits_examples = {}
        for split, folder in SPLIT_FOLDERS.items():
            images = manual_files.find_files(root / "images" / folder, "ADE_*.jpg", ARCHIVE)
            examples = [
                example_files.ExampleFiles(
                    image.stem, image, root / "annotations" / folder / f"{image.stem}.png", read_label
                )
                for image in images
            ]
            manual_files.require_files([e.label for e in examples], ARCHIVE)
            splits_examples[split] = examples
        return splits_examples
