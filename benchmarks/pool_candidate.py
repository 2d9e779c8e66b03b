"""Candidates for Psi's `adaptive_max_pool` (and, until issue 31's change 4 took it, the ResNet stem's max-pool),
kept with their measurements (BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step", and
"The small-model step, item 2 (SS1)"): not applied.

- `sliced_adaptive_max_pool`: the whole synthetic step showed no gain within noise and the compile time doubled.
- `custom_vjp_adaptive_max_pool`: the same maxima (a running max of gathered rows) and JAX's gradient rule
  (`jax.custom_vjp`), with a backward that gathers instead of scattering. Alone (any shape, ties and repeated
  indices included) its values and gradients equal the model's bitwise, and the synthetic DifNet-18 step is
  1.21x faster with it (SS1). But inside the whole jitted train step its pool-input gradient loses part of the
  cotangent (Psi_1's BatchNorm bias gradient differs from the summed cotangent at the pool's output by as much
  as the gradient itself; the model's matches it to 4e-11 and central differences side with the model), and
  `sliced_adaptive_max_pool` gives bitwise the same wrong gradients there. Likely cause (not verified): both
  compare the pool's input with its maximum (`x == max`) in another XLA fusion than the one that took the
  maximum, XLA CPU recomputes the BatchNorm output inside each fusion it feeds, and a recomputation that rounds
  differently misses the maximum (`lax.optimization_barrier` on the input did not help); the model's gather
  materialises the gathered input once, and both the max and the comparison read it.
- The ResNet stem's max-pool as nine strided views (SC2: not applied then) is now the model's,
  `difnet_jax.models.max_pool` (its gradient bitwise select-and-scatter's; SC3).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.models import similarity_embedding


def sliced_adaptive_max_pool(x, size):
    """A candidate for the model's adaptive_max_pool (which indexes with the bins: a gather forward, a scatter-add
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


@functools.cache
def _pool_terms(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """For the backward of one axis: (bins, valid), each (T, size_in): input j receives, in order t = 0..T-1,
    the cotangent of bin `bins[t, j]` where `valid[t, j]`; the entries of `_adaptive_bins` holding j, in their
    row-major order (a short bin's repeated last index once per repetition), as the gather's transpose (a
    scatter-add of the bins' entries in that order) adds them."""
    rows = similarity_embedding._adaptive_bins(size_in, size_out)
    terms: list[list[int]] = [[] for _ in range(size_in)]
    for i, k in np.ndindex(*rows.shape):
        terms[rows[i, k]].append(i)
    depth = max(len(t) for t in terms)
    bins = np.zeros((depth, size_in), np.int32)
    valid = np.zeros((depth, size_in), bool)
    for j, t in enumerate(terms):
        bins[: len(t), j], valid[: len(t), j] = t, True
    return bins, valid


def _take(x: jnp.ndarray, indices: np.ndarray, axis: int) -> jnp.ndarray:
    return x[(slice(None),) * axis + (indices,)]


def _expand(values: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    return values.reshape((-1,) + (1,) * (ndim - axis - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _adaptive_max_pool_axis(x: jnp.ndarray, axis: int, size_out: int) -> jnp.ndarray:
    """`similarity_embedding.adaptive_max_pool` along one axis: the max over each bin as a running maximum of the bins'
    k-th entries (a max is exact: the same values in any order)."""
    rows = similarity_embedding._adaptive_bins(x.shape[axis], size_out)
    return functools.reduce(jnp.maximum, [_take(x, rows[:, k], axis) for k in range(rows.shape[1])])


def _adaptive_max_pool_axis_fwd(x, axis, size_out):
    out = _adaptive_max_pool_axis(x, axis, size_out)
    return out, (x, out)


def _adaptive_max_pool_axis_bwd(axis, size_out, residuals, g):
    """JAX's gradient of the model's `adaptive_max_pool` (reduce_max's JVP rule: the cotangent split equally over
    the entries equal to the max, a repeated index counting once per repetition; then the gather's transpose)
    without its scatter-add: each input sums its terms in the scatter's order (`_pool_terms`), from 0."""
    x, out = residuals
    rows = similarity_embedding._adaptive_bins(x.shape[axis], size_out)
    count = functools.reduce(jnp.add, [(_take(x, rows[:, k], axis) == out).astype(g.dtype)
                                       for k in range(rows.shape[1])])
    share = g / count
    bins, valid = _pool_terms(x.shape[axis], size_out)
    grad = jnp.zeros_like(x)
    for t in range(bins.shape[0]):
        term = _take(share, bins[t], axis) * (x == _take(out, bins[t], axis)).astype(g.dtype)
        if not valid[t].all():
            term = jnp.where(_expand(valid[t], axis, x.ndim), term, jnp.zeros((), g.dtype))
        grad = grad + term
    return (grad,)


_adaptive_max_pool_axis.defvjp(_adaptive_max_pool_axis_fwd, _adaptive_max_pool_axis_bwd)


def custom_vjp_adaptive_max_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """The model's `adaptive_max_pool` with a backward that gathers instead of scattering (module docstring: equal
    alone, wrong inside the whole train step; not applied). An axis already at its size is left as it is."""
    for axis, size_out in ((1, size[0]), (2, size[1])):
        if x.shape[axis] != size_out:
            x = _adaptive_max_pool_axis(x, axis, size_out)
    return x
