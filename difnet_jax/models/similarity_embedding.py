"""Psi of DifNet (Sec. 4): the similarity embedding each random walk's transitions are read from.

Psi_t = adaptive-max-pool(BN(conv1x1_64(f_t))) on the seed grid, f_t the input image (walk 1) or a layer of the
similarity branch (walks 2..5). `SimilarityEmbedding` computes it pool-first (its docstring has the algebra), which
is the same function with far less full-resolution work for walk 1 (issue 31); `adaptive_max_pool` is torch's
`adaptive_max_pool2d` bin rule, as the DifNet authors' code pools.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _adaptive_bins(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, L) input indices of each adaptive pooling bin, torch's bin rule.

    Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); shorter bins repeat
    their last index, which leaves a max unchanged.
    """
    starts = (np.arange(size_out) * size_in) // size_out
    ends = -((-(np.arange(size_out) + 1) * size_in) // size_out)
    length = int((ends - starts).max())
    return np.minimum(starts[:, None] + np.arange(length)[None, :], ends[:, None] - 1)


def adaptive_max_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Adaptive max-pooling of NHWC `x` to `size`, one axis at a time (max is separable); an axis already at its
    size is left as it is (its bins are single entries)."""
    if x.shape[1] != size[0]:
        x = x[:, _adaptive_bins(x.shape[1], size[0])].max(axis=2)
    if x.shape[2] != size[1]:
        x = x[:, :, _adaptive_bins(x.shape[2], size[1])].max(axis=3)
    return x


def _max_over_bins_with_index(x: jnp.ndarray, axis: int, size_out: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Adaptive max-pool of `x` along `axis`, with where each max came from: (maxima, their index along `axis`).

    A tie goes to the bin's first position (`jnp.argmax`'s rule).
    """
    rows = _adaptive_bins(x.shape[axis], size_out)
    gathered = jnp.take(x, rows, axis=axis)  # the bins' entries on a new axis after `axis`
    first = jnp.argmax(gathered, axis=axis + 1)
    shape = [1] * x.ndim
    shape[axis] = size_out
    return gathered.max(axis=axis + 1), jnp.asarray(rows)[jnp.arange(size_out).reshape(shape), first]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def projected_adaptive_max_pool(x: jnp.ndarray, kernel: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
    """adaptive_max_pool(x @ kernel, grid) for NHWC x and a (C_in, C) kernel, differentiated through the
    maximising pixels: d kernel[:, c] sums x at each bin's maximising pixel times the cotangent, and dx puts
    kernel[:, c] times the cotangent on that pixel, with no full-resolution pass in the backward (issue 31).

    The same gradient as autodiff of `adaptive_max_pool` except at ties: JAX splits a tied max's cotangent
    equally, this gives it to the first pixel (row-major within the bin), which changes nothing when the tied
    pixels have the same input vector (flat image regions, all-zero features after a ReLU).
    """
    return _projected_pool_forward(x, kernel, grid)[0]


def _projected_pool_forward(x, kernel, grid):
    if x.shape[-1] <= 4:  # the image: a sum of C_in broadcast products, which XLA fuses into the pool's gathers
        projected = sum(x[..., i:i + 1] * kernel[i].astype(x.dtype) for i in range(x.shape[-1]))
    else:
        projected = jnp.einsum("bhwi,ic->bhwc", x, kernel.astype(x.dtype))
    rows_max, rows_at = _max_over_bins_with_index(projected, 1, grid[0])  # (B, h', W, C)
    pooled, cols_at = _max_over_bins_with_index(rows_max, 2, grid[1])  # (B, h', w', C)
    rows_at = jnp.take_along_axis(rows_at, cols_at, axis=2)
    return pooled, (x, kernel, rows_at, cols_at)


def _projected_pool_bwd(grid, residuals, cotangent):
    x, kernel, rows_at, cols_at = residuals

    def one_image(x, rows_at, cols_at, cotangent):  # vmapped: the gathers keep batch as a batching dimension
        at_max = x[rows_at, cols_at].astype(jnp.float32)  # (h', w', C, C_in): the input vector at each max
        d_kernel = jnp.einsum("hwci,hwc->ic", at_max, cotangent)
        contributions = cotangent[..., None] * kernel.T.astype(jnp.float32)  # (h', w', C, C_in)
        return jnp.zeros(x.shape, jnp.float32).at[rows_at, cols_at].add(contributions), d_kernel

    d_x, d_kernel = jax.vmap(one_image)(x, rows_at, cols_at, cotangent.astype(jnp.float32))
    return d_x.astype(x.dtype), d_kernel.sum(axis=0).astype(kernel.dtype)


projected_adaptive_max_pool.defvjp(_projected_pool_forward, _projected_pool_bwd)


class _Conv1x1Variables(nn.Module):
    """The variables of `nn.Conv(features, (1, 1))`, same names, shapes and initialisers: (kernel (C_in, C), bias)."""

    features: int

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.linear.default_kernel_init, (1, 1, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel.reshape(in_features, self.features), bias


class _BatchNormVariables(nn.Module):
    """The variables of `nn.BatchNorm` over `features` channels: (scale, bias, running mean, running var)."""

    @nn.compact
    def __call__(self, features: int):
        mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
        return scale, bias, mean, var


def _moments_of_projection(features: jnp.ndarray, kernel: jnp.ndarray, projected: jnp.ndarray | None,
                           sign: jnp.ndarray):
    """Batch mean and (biased) variance of W x over batch and pixels, float32, as flax's BatchNorm takes them
    (E[z^2] - E[z]^2, clipped at 0).

    From the input's mean and covariance when it has fewer channels than the embedding (walk 1: the 3-channel
    image; a C_in x C_in covariance instead of two passes over C full-resolution channels), else from
    `projected` = sign * W x itself (computed here if None).
    """
    in_channels, channels = kernel.shape
    if in_channels < channels:
        x = features.reshape(-1, in_channels).astype(jnp.float32)
        mean_x = x.mean(axis=0)
        covariance = (x.T @ x) / x.shape[0] - jnp.outer(mean_x, mean_x)
        return mean_x @ kernel, jnp.maximum(0.0, jnp.einsum("ic,ij,jc->c", kernel, covariance, kernel))
    if projected is None:
        projected = jnp.einsum("bhwi,ic->bhwc", features, (kernel * sign).astype(features.dtype))
    z = projected.reshape(-1, channels).astype(jnp.float32)
    mean_z = z.mean(axis=0)
    return sign * mean_z, jnp.maximum(0.0, (z * z).mean(axis=0) - mean_z * mean_z)


class SimilarityEmbedding(nn.Module):
    """Psi of Sec. 4: conv1x1 (with bias) -> BN -> adaptive max-pool to the seed grid, computed pool-first.

    Per channel, BN(conv(x)) = a * (W x) + c with a = gamma / sqrt(var + eps), c = beta - a * (mean - b) (mean, var:
    the batch's statistics of W x + b in training, the running ones in evaluation), and a max commutes with a
    positive scale and an added constant, so

        pool(BN(conv(x))) = |a| * pool(sign(gamma) * W x) + c.

    The full-resolution work is one bias-free 1x1 projection and the pool; the batch statistics come from the
    input's covariance where that is cheaper (`_moments_of_projection`), and the affine runs on the pooled grid.
    The same function as `nn.Conv` -> `nn.BatchNorm` -> pool up to float32 rounding, with the same variables
    (conv/{kernel, bias}, bn/{scale, bias}, batch_stats bn/{mean, var}) and running-statistics update
    (tests/test_similarity_embedding.py; the straightforward form, `benchmarks/before_issue31.py`, is the reference).
    Issue 31: Psi_1 (walk 1, the image at full resolution) was a fifth to a third of the synthetic DifNet-18 step.
    """

    channels: int = 64
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, features, grid: tuple[int, int], *, train: bool):
        kernel, conv_bias = _Conv1x1Variables(self.channels, name="conv")(features.shape[-1])
        scale, shift, running_mean, running_var = _BatchNormVariables(name="bn")(self.channels)
        sign = jax.lax.stop_gradient(jnp.where(scale >= 0, 1.0, -1.0))
        signed_kernel = (kernel * sign).astype(self.dtype)
        x = features.astype(self.dtype)
        # Backward through each bin's maximising input vector when those (B, h', w', C, C_in) are fewer than the
        # full-resolution projection's entries (walk 1: the 3-channel image), else autodiff of the pool.
        through_maximisers = grid[0] * grid[1] * x.shape[-1] < x.shape[1] * x.shape[2]
        projected = None if through_maximisers else jnp.einsum("bhwi,ic->bhwc", x, signed_kernel)
        if train:
            mean, var = _moments_of_projection(x, kernel, projected, sign)  # of W x = conv(x) - b
            if not self.is_initializing():
                running_mean.value = self.bn_momentum * running_mean.value + (1 - self.bn_momentum) * (mean + conv_bias)
                running_var.value = self.bn_momentum * running_var.value + (1 - self.bn_momentum) * var
        else:
            mean, var = running_mean.value - conv_bias, running_var.value
        inverse_std = jax.lax.rsqrt(var + self.epsilon)
        pooled = (projected_adaptive_max_pool(x, signed_kernel, grid) if through_maximisers
                  else adaptive_max_pool(projected, grid)).astype(jnp.float32)
        return (scale * sign * inverse_std * pooled + (shift - scale * inverse_std * mean)).astype(self.dtype)
