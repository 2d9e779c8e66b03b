"""Two parts of the train step as they were before issue 31, kept as references and as `benchmarks.step_speed`'s
baseline variants (BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step"):

- `ConvBatchNormPool`: Psi as `nn.Conv` 1x1 -> `nn.BatchNorm` -> adaptive max-pool, in that order. The model's
  `SimilarityEmbedding` now pools first (its docstring has the algebra); this is the straightforward form it must
  equal (tests/test_similarity_embedding.py).
- `take_along_axis_cross_entropy`: the loss picking the label's log-probability with `take_along_axis` (its
  backward a scatter); the model's `losses.cross_entropy` uses a one-hot product, bitwise the same run.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from difnet_jax.constants import IGNORE_LABEL
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

