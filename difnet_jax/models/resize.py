"""Bilinear resizing with align_corners=True, as two small matmuls.

At output stride 8 with the torchvision paddings, feature cell j sits over input
pixel 8j, so a (8k+1)-pixel input maps to k+1 cells whose corners align exactly
with the image's corners (DeepLab's convention).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _interpolation_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of 1-D linear interpolation with aligned corners."""
    if size_in == 1 or size_out == 1:
        weights = np.zeros((size_out, size_in), np.float32)
        weights[:, 0] = 1.0
        return weights
    position = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    low = np.clip(np.floor(position).astype(int), 0, size_in - 2)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((size_out, size_in), np.float32)
    weights[np.arange(size_out), low] = 1.0 - frac
    weights[np.arange(size_out), low + 1] += frac
    return weights


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Resizes NHWC `x` to `size` = (H, W) bilinearly with align_corners=True."""
    rows = jnp.asarray(_interpolation_matrix(x.shape[1], size[0]), x.dtype)
    cols = jnp.asarray(_interpolation_matrix(x.shape[2], size[1]), x.dtype)
    return jnp.einsum("Hh,bhwc,Ww->bHWc", rows, x, cols)
