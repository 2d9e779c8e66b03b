"""A candidate for `difnet.adaptive_max_pool`, kept with its measurement (BENCHMARKS.md, "XLA CPU settings, the
DifNet peer and the small-model step"): not applied, because the whole synthetic step showed no gain within noise
and the compile time doubled."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sliced_adaptive_max_pool(x, size):
    """A candidate for difnet.adaptive_max_pool (which indexes with the bins: a gather forward, a scatter-add
    backward): each bin a static slice, the same maxima (tests/test_xla_cpu.py checks values and gradients).
    Not applied: BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step"."""
    def pool_axis(x, axis, size_out):
        size_in = x.shape[axis]
        if size_in == size_out:
            return x
        starts = (np.arange(size_out) * size_in) // size_out
        ends = -((-(np.arange(size_out) + 1) * size_in) // size_out)
        return jnp.concatenate([jax.lax.slice_in_dim(x, int(a), int(b), axis=axis).max(axis=axis, keepdims=True)
                                for a, b in zip(starts, ends, strict=True)], axis=axis)
    return pool_axis(pool_axis(x, 1, size[0]), 2, size[1])
