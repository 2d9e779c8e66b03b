"""Datasets: TFDS builders (registered on import) and the grain input pipeline."""

from difnet_jax.data.pascal_context import PascalContext
from difnet_jax.data.synthetic_shapes import SyntheticShapes
from difnet_jax.data.voc_aug import VocAug

__all__ = ["PascalContext", "SyntheticShapes", "VocAug"]
