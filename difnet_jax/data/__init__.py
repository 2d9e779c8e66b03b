"""Datasets: TFDS builders (registered on import) and the grain input pipeline.

Importing it also removes TFDS's temp folder per unprepared dataset (`tfds_side_effects.install`).
"""

from difnet_jax.data import tfds_side_effects
from difnet_jax.data.ade20k import Ade20kSceneParsing
from difnet_jax.data.cityscapes import CityscapesFine
from difnet_jax.data.pascal_context import PascalContext
from difnet_jax.data.person_part import PascalPersonPart
from difnet_jax.data.synthetic_classes import SyntheticClasses
from difnet_jax.data.synthetic_shapes import SyntheticShapes
from difnet_jax.data.voc_aug import VocAug

tfds_side_effects.install()

__all__ = ["Ade20kSceneParsing", "CityscapesFine", "PascalContext", "PascalPersonPart", "SyntheticClasses",
           "SyntheticShapes", "VocAug"]
