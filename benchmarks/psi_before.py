"""Psi as it was computed before issue 31: `nn.Conv` 1x1 -> `nn.BatchNorm` -> adaptive max-pool, in that order.

The model's `SimilarityEmbedding` now pools first (its docstring has the algebra); this is the straightforward form it
must equal: the reference of tests/test_similarity_embedding.py and the `psi_before` variant of
`benchmarks.step_speed` (BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step").
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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
