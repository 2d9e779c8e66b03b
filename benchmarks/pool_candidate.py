"""Candidates for the model's pools (Psi's `adaptive_max_pool`, the ResNet stem's 3x3/2 max-pool), kept with their
measurements (BENCHMARKS.md, "XLA CPU settings, the DifNet peer and the small-model step", and "The small-model
step, item 2 (SS1)"): not applied.

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
- `window_stem_max_pool`: the ResNet stem's max-pool as nine strided views with a first-maximum backward, instead
  of XLA CPU's expansion of select-and-scatter (eight index arrays of the pool's input size reduced with it). The
  same values, gradients equal up to float32 addition order (tests/test_resnet.py); 1.06x the synthetic
  DifNet-18 step (SS5, SS6). Not applied: five DifNet-18 from-scratch runs with it (SC2) ended 1.22 points below
  the runs without any of issue 31's changes (paired -1.22 [-2.61, +0.16], Welch [-4.32, +1.88]), their seed
  branch 2.21 lower (paired [-3.35, -1.08]), where the runs with the other changes alone (SC1) are level
  (-0.13 [-1.50, +1.24]). The change is float-level (in this model a pure float reordering, the `ynn_dot_eltwise`
  setting, moves the first step's gradients by up to 40 %, so each run's trajectory is redrawn and the paired
  interval is too narrow), but a 6 % gain does not pay for a result that needs that argument.
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


def _window_slices(padded_shape, out_hw):
    """(row offset, column offset, lax.slice arguments) of the nine stride-2 views of a padded NHWC array whose
    (i, j) entries are window (i, j)'s element at that offset, in the window's row-major order."""
    batch, _, _, channels = padded_shape
    return [(di, dj, (0, di, dj, 0), (batch, di + 2 * out_hw[0] - 1, dj + 2 * out_hw[1] - 1, channels), (1, 2, 2, 1))
            for di in range(3) for dj in range(3)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def window_max_pool_3x3_s2(x: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """`nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)`, as the maximum of nine strided views, with the
    gradient of XLA's max-pool (each window's cotangent to its first maximal element in row-major order, as
    select-and-scatter gives it) computed by nine masked strided pads instead of select-and-scatter (issue 31:
    on XLA CPU that one materialises index arrays for the pooled map and reduces them with it, about 5 % of the
    synthetic DifNet-18 step). Values are identical; gradients equal up to the order of float32 additions where
    windows overlap (tests/test_resnet.py). Not applied (module docstring)."""
    return _window_max_pool_fwd(x, padding)[0]


def _window_max_pool_fwd(x, padding):
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    out_hw = ((padded.shape[1] - 3) // 2 + 1, (padded.shape[2] - 3) // 2 + 1)
    views = [jax.lax.slice(padded, *args) for _, _, *args in _window_slices(padded.shape, out_hw)]
    best, first = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for k, view in enumerate(views[1:], 1):
        larger = view > best  # strictly: a tie keeps the earlier element
        best, first = jnp.where(larger, view, best), jnp.where(larger, jnp.int8(k), first)
    return best, (first, x.shape, padded.shape)


def _window_max_pool_bwd(padding, residuals, cotangent):
    first, x_shape, padded_shape = residuals
    out_hw = cotangent.shape[1:3]
    grad = jnp.zeros(padded_shape, cotangent.dtype)
    zero = jnp.zeros((), cotangent.dtype)
    for k, (di, dj, _, limit, _) in enumerate(_window_slices(padded_shape, out_hw)):
        # the transpose of view k: every other pixel from (di, dj), zeros between and after
        config = [(0, 0, 0), (di, padded_shape[1] - limit[1], 1), (dj, padded_shape[2] - limit[2], 1), (0, 0, 0)]
        grad = grad + jax.lax.pad(jnp.where(first == k, cotangent, zero), zero, config)
    (top, _), (left, _) = padding
    return (grad[:, top:top + x_shape[1], left:left + x_shape[2]],)


window_max_pool_3x3_s2.defvjp(_window_max_pool_fwd, _window_max_pool_bwd)


def window_stem_max_pool(x, ceil_mode: bool):
    """`resnet._stem_max_pool` (PyTorch's MaxPool2d(3, 2, 1), ceil_mode as the model's) by `window_max_pool_3x3_s2`."""
    padding = tuple((1, 1 + (ceil_mode and size % 2 == 0)) for size in x.shape[1:3])
    return window_max_pool_3x3_s2(x, padding)
