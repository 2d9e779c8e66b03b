"""Parts of the train step as they were before issue 31, kept as references and as `benchmarks.step_speed`'s
baseline variants (BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step", "Issue 31's changes
to the step"):

- `ConvBatchNormPool`: Psi as `nn.Conv` 1x1 -> `nn.BatchNorm` -> adaptive max-pool, in that order. The model's
  `SimilarityEmbedding` now pools first (its docstring has the algebra); this is the straightforward form it must
  equal (tests/test_similarity_embedding.py).
- `take_along_axis_cross_entropy`: the loss picking the label's log-probability with `take_along_axis` (its
  backward a scatter); the model's `losses.cross_entropy` uses a one-hot product, bitwise the same run.
- `flax_stem_max_pool`: the ResNet stem's max-pool by `nn.max_pool` (autodiff: XLA's select-and-scatter); the
  model's `max_pool.max_pool_3x3_stride2` gives the same values and gradients without it.
- `table_apply_on_device`: the train step's input normalisation by a 256-entry table for every normalisation; the
  model subtracts the mean where the std is 1 (the same values).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data.normalization import _table
from difnet_jax.models.similarity_embedding import _adaptive_bins


def adaptive_max_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """The model's adaptive max-pool before issue 31: both axes indexed with their bins even where an axis is
    already at its size (the model now leaves such an axis as it is)."""
    x = x[:, _adaptive_bins(x.shape[1], size[0])].max(axis=2)
    return x[:, :, _adaptive_bins(x.shape[2], size[1])].max(axis=3)


class ConvBatchNormPool(nn.Module):
    """conv1x1 (with bias) -> BN -> adaptive max-pool to `grid`, each at full resolution (Sec. 4 as written)."""

    channels: int = 64
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features, grid: tuple[int, int], *, train: bool):
        x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="conv")(features)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                         name="bn")(x)
        return adaptive_max_pool(x, grid)


def take_along_axis_cross_entropy(logits, labels, ignore_label: int = IGNORE_LABEL):
    """`losses.cross_entropy` before issue 31: the label's log-probability by `take_along_axis`."""
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_label
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def flax_stem_max_pool(x, ceil_mode: bool):
    """`resnet._stem_max_pool` before issue 31: flax's `nn.max_pool`, differentiated by XLA's select-and-scatter."""
    padding = [(1, 1 + (ceil_mode and size % 2 == 0)) for size in x.shape[1:3]]
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)


def table_apply_on_device(self, images):
    """`Normalization.apply_on_device` before issue 31: the 256-entry table for every normalisation."""
    table = jnp.asarray(_table(self.mean, self.std)[0])  # (256, 3)
    if self.bgr:
        images = images[..., ::-1]
    return table[images.astype(jnp.int32), jnp.arange(3)]
