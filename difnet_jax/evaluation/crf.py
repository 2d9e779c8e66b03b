"""Fully-connected CRF post-processing (Krähenbühl & Koltun 2011) in JAX: "Sim-DeepLab + CRF" of Table 1.

Energy over the labels l of the pixels of one image:
  E(l) = sum_i U_i(l_i) + sum_{i<j} [l_i != l_j] (w1 k_a(i, j) + w2 k_s(i, j)),
  U_i = -log P_i (the network's softmax), Potts compatibility,
  k_a = exp(-|p_i - p_j|^2 / 2 theta_a^2 - |I_i - I_j|^2 / 2 theta_b^2)   (appearance),
  k_s = exp(-|p_i - p_j|^2 / 2 theta_g^2)                                  (smoothness).
Mean-field inference, `iterations` times (10 in the paper):
  Q_i(l) ∝ exp(-U_i(l) + w1 m_a,i(l) + w2 m_s,i(l)),  m_i(l) = sum_j k(i, j) Q_j(l)
(the Potts terms that do not depend on l cancel in the normalisation). As in
Krähenbühl's public code (pydensecrf, DeepLab), the messages are normalised
symmetrically by default, m = D^-1/2 K D^-1/2 Q with D = diag(K 1), and include each
pixel's own term; the defaults are DeepLab-v2's ResNet-101 VOC settings
(w1 = 4, theta_a = 67, theta_b = 3, w2 = 3, theta_g = 1).

Exact dense message passing costs O(N^2) for N pixels. Here:
- the smoothness kernel (theta_g of a pixel or a few) is a separable Gaussian filter,
  exact at full resolution (truncated at 4 theta_g);
- the appearance kernel (theta_a of about the image size) is summed exactly over a
  regular grid of *sender* pixels, every `stride`-th pixel in both directions standing
  for its stride x stride cell, while every pixel *receives* with its own position and
  colour. `stride` is the smallest integer that keeps the senders <= `max_senders`
  (stride 1, the exact CRF, for images up to 64x64 by default; stride 2 for the
  97x97 synthetic scenes, stride 8 at 505x505). The kernel (pixels x senders) is
  computed once if it fits in `max_kernel_bytes`, otherwise again at every iteration
  in blocks of `block_size` receivers, so memory stays O(block_size x senders).
  Cost per iteration: N x senders x 2K flops, plus N x senders x (D + 1) and as many
  exponentials when recomputed.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZATIONS = ("symmetric", "none")


@dataclasses.dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    appearance_weight: float = 4.0  # w1
    appearance_xy_std: float = 67.0  # theta_alpha, pixels
    appearance_rgb_std: float = 3.0  # theta_beta, on 0..255 colours
    smoothness_weight: float = 3.0  # w2
    smoothness_xy_std: float = 1.0  # theta_gamma, pixels
    normalization: str = "symmetric"  # or "none": the raw sums of the 2011 paper's formula
    max_senders: int = 4096
    block_size: int = 2048  # receivers per block when the kernel is recomputed
    max_kernel_bytes: int = 256 * 2**20  # keep k_a (pixels x senders) in memory up to this size

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sender_stride(height: int, width: int, max_senders: int) -> int:
    """The smallest stride s with ceil(height / s) * ceil(width / s) <= max_senders."""
    stride = max(1, math.isqrt(max(height * width // max(max_senders, 1), 1)))
    while math.ceil(height / stride) * math.ceil(width / stride) > max_senders:
        stride += 1
    return stride


def _gaussian_band(size: int, std: float) -> np.ndarray:
    """(size, size) weights exp(-(i - j)^2 / 2 std^2), zero beyond 4 std."""
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    weights = np.exp(-0.5 * (offsets / std) ** 2)
    weights[np.abs(offsets) > 4 * std] = 0.0
    return weights.astype(np.float32)


def _smoothness_filter(values: jax.Array, band_y: jax.Array, band_x: jax.Array) -> jax.Array:
    """sum_j k_s(i, j) values_j for (H, W, C) `values`: a separable Gaussian filter."""
    return jnp.einsum("Yy,yxc,Xx->YXc", band_y, values, band_x, precision=jax.lax.Precision.HIGHEST)


def _receiver_blocks(receivers: jax.Array, block_size: int) -> jax.Array:
    """(N, D) -> (ceil(N / block_size), block_size, D), zero-padded."""
    pad = (-receivers.shape[0]) % block_size
    return jnp.pad(receivers, ((0, pad), (0, 0))).reshape(-1, block_size, receivers.shape[1])


def _appearance_kernel(block: jax.Array, senders: jax.Array) -> jax.Array:
    """k_a between receivers (B, D) and senders (S, D), features already divided by their stds: (B, S)."""
    cross = jnp.matmul(block, senders.T, precision=jax.lax.Precision.HIGHEST)
    logits = cross - 0.5 * jnp.sum(block**2, axis=-1, keepdims=True) - 0.5 * jnp.sum(senders**2, axis=-1)[None, :]
    return jnp.exp(jnp.minimum(logits, 0.0))


def _appearance_filter(blocks: jax.Array, senders: jax.Array, sender_values: jax.Array,
                       kernel: jax.Array | None) -> jax.Array:
    """sum_c k_a(i, c) values_c for every receiver i of `blocks` (nb, B, D): (nb * B, C).

    `kernel` (nb, B, S), when given, holds k_a precomputed; otherwise it is recomputed block by block.
    """
    if kernel is not None:
        out = jnp.einsum("nbs,sc->nbc", kernel, sender_values, precision=jax.lax.Precision.HIGHEST)
    else:
        out = jax.lax.map(lambda block: jnp.matmul(_appearance_kernel(block, senders), sender_values,
                                                   precision=jax.lax.Precision.HIGHEST), blocks)
    return out.reshape(-1, sender_values.shape[-1])


@functools.partial(jax.jit, static_argnames=("params",))
def dense_crf(probabilities: jax.Array, image: jax.Array, valid: jax.Array | None = None,
              params: CRFParams = CRFParams()) -> jax.Array:
    """Mean-field marginals Q (H, W, K) of the dense CRF for one image.

    Args:
      probabilities: (H, W, K) softmax of the network, the unary is -log of it.
      image: (H, W, 3) colours on 0..255.
      valid: (H, W) bool, the pixels of the image proper (False on padding, which
        then neither sends nor changes); default all.
      params: the CRF's weights, kernel widths, iterations and sender budget.
    """
    height, width, classes = probabilities.shape
    valid = jnp.ones((height, width), bool) if valid is None else valid.astype(bool)
    mask = valid.astype(jnp.float32)[..., None]
    log_p = jnp.log(jnp.clip(probabilities.astype(jnp.float32), 1e-8, 1.0))

    # Smoothness kernel: full resolution, separable.
    band_y = jnp.asarray(_gaussian_band(height, params.smoothness_xy_std))
    band_x = jnp.asarray(_gaussian_band(width, params.smoothness_xy_std))
    smooth = lambda v: _smoothness_filter(v, band_y, band_x)

    # Appearance kernel: every pixel receives from a stride-spaced grid of senders.
    stride = sender_stride(height, width, params.max_senders)
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    colours = image.astype(jnp.float32) - 127.5
    features = jnp.concatenate([
        jnp.stack([jnp.asarray(ys), jnp.asarray(xs)], axis=-1) / params.appearance_xy_std,
        colours / params.appearance_rgb_std,
    ], axis=-1)
    start = stride // 2
    sender_features = features[start::stride, start::stride].reshape(-1, features.shape[-1])
    sender_mask = mask[start::stride, start::stride].reshape(-1, 1) * float(stride * stride)
    blocks = _receiver_blocks(features.reshape(-1, features.shape[-1]), params.block_size)
    kernel = None
    if blocks.shape[0] * blocks.shape[1] * sender_features.shape[0] * 4 <= params.max_kernel_bytes:
        kernel = jax.lax.map(lambda block: _appearance_kernel(block, sender_features), blocks)  # once, not per step

    def appear(v):
        senders = v[start::stride, start::stride].reshape(-1, v.shape[-1]) * sender_mask
        out = _appearance_filter(blocks, sender_features, senders, kernel)
        return out[: height * width].reshape(height, width, -1)

    if params.normalization == "symmetric":
        smooth_norm = jax.lax.rsqrt(smooth(mask) + 1e-20)
        appear_norm = jax.lax.rsqrt(appear(mask) + 1e-20)
    else:
        smooth_norm = appear_norm = jnp.ones((height, width, 1), jnp.float32)

    def mean_field_step(q, _):
        sent = q * mask
        smooth_msg = smooth_norm * smooth(smooth_norm * sent)
        appear_msg = appear_norm * appear(appear_norm * sent)
        energy = log_p + params.appearance_weight * appear_msg + params.smoothness_weight * smooth_msg
        return jax.nn.softmax(energy, axis=-1), None

    q, _ = jax.lax.scan(mean_field_step, jax.nn.softmax(log_p, axis=-1), None, length=params.iterations)
    return jnp.where(valid[..., None], q, probabilities.astype(jnp.float32))
