"""The ResNet stem's 3x3, stride-2 max-pool without XLA's select-and-scatter (issue 31).

`max_pool_3x3_stride2(x, padding)` is `nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)`: the maximum of the
nine stride-2 views of the (-inf) padded input, keeping which view won (the first in the window's row-major order,
as XLA's max-pool gradient chooses). Its backward puts each window's cotangent on that element: nine masked,
interior-padded copies of the cotangent summed in the order select-and-scatter adds them where windows overlap (the
windows' row-major order, which reaches a pixel through the views in reverse), so the gradient is bitwise the
autodiff one (tests/test_resnet.py). On XLA CPU the autodiff form materialises eight index arrays of the pool's
input size and reduces them with it: about 5 % of the synthetic DifNet-18 train step (BENCHMARKS.md, "Issue 31's
changes to the step").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _views(padded_shape, out_hw):
    """(row offset, column offset, lax.slice's start, limit, strides) of the nine stride-2 views of a padded NHWC
    array: view (di, dj)'s entry (i, j) is window (i, j)'s element at that offset; in row-major window order."""
    batch, _, _, channels = padded_shape
    return [(di, dj, (0, di, dj, 0), (batch, di + 2 * out_hw[0] - 1, dj + 2 * out_hw[1] - 1, channels), (1, 2, 2, 1))
            for di in range(3) for dj in range(3)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_3x3_stride2(x: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """`nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)` for NHWC `x` (module docstring)."""
    return _forward(x, padding)[0]


def _forward(x, padding):
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    out_hw = ((padded.shape[1] - 3) // 2 + 1, (padded.shape[2] - 3) // 2 + 1)
    views = [jax.lax.slice(padded, *args) for _, _, *args in _views(padded.shape, out_hw)]
    best, winner = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for k, view in enumerate(views[1:], 1):
        larger = view > best  # strictly: a tie keeps the earlier element
        best, winner = jnp.where(larger, view, best), jnp.where(larger, jnp.int8(k), winner)
    return best, (winner, x.shape, padded.shape)


def _backward(padding, residuals, cotangent):
    winner, x_shape, padded_shape = residuals
    grad = jnp.zeros(padded_shape, cotangent.dtype)
    zero = jnp.zeros((), cotangent.dtype)
    # the last view first: a pixel's earlier window reaches it through a later view (a larger offset), and
    # select-and-scatter adds overlapping windows' shares in the windows' row-major order
    for k, (di, dj, _, limit, _) in reversed(list(enumerate(_views(padded_shape, cotangent.shape[1:3])))):
        # the transpose of view k: its entries on every other pixel from (di, dj), zeros between and after
        config = [(0, 0, 0), (di, padded_shape[1] - limit[1], 1), (dj, padded_shape[2] - limit[2], 1), (0, 0, 0)]
        grad = grad + jax.lax.pad(jnp.where(winner == k, cotangent, zero), zero, config)
    (top, _), (left, _) = padding
    return (grad[:, top:top + x_shape[1], left:left + x_shape[2]],)


max_pool_3x3_stride2.defvjp(_forward, _backward)
