"""Bilinear resizing as two small matmuls: aligned corners (DeepLab's) or half-pixel centres (PyTorch's default).

At output stride 8 with the torchvision paddings, feature cell j sits over input
pixel 8j, so a (8k+1)-pixel input maps to k+1 cells whose corners align exactly
with the image's corners (DeepLab's convention, `align_corners=True`, the default here).
The DifNet authors' `main.py` upsamples the logits with PyTorch's
`F.interpolate(..., mode='bilinear', align_corners=False)` for the loss and the evaluation:
`align_corners=False` reproduces it (output pixel i samples input (i + 0.5) * in / out - 0.5,
clamped at 0, as PyTorch's `area_pixel_compute_source_index`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# config.model.logits_upsampling -> resize_bilinear's align_corners (the final logits of DifNet and Sim-DeepLab)
LOGITS_UPSAMPLING = {"align_corners": True, "half_pixel": False}


def _interpolation_matrix(size_in: int, size_out: int, align_corners: bool = True) -> np.ndarray:
    """(size_out, size_in) weights of 1-D linear interpolation (module docstring for the two conventions)."""
    if size_in == 1 or (size_out == 1 and align_corners):
        weights = np.zeros((size_out, size_in), np.float32)
        weights[:, 0] = 1.0
        return weights
    if align_corners:
        position = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    else:
        position = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    low = np.clip(np.floor(position).astype(int), 0, size_in - 2)
    frac = np.minimum(position - low, 1.0).astype(np.float32)
    weights = np.zeros((size_out, size_in), np.float32)
    weights[np.arange(size_out), low] = 1.0 - frac
    weights[np.arange(size_out), low + 1] += frac
    return weights


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], align_corners: bool = True) -> jnp.ndarray:
    """Resizes NHWC `x` to `size` = (H, W) bilinearly, with aligned corners or half-pixel centres."""
    rows = jnp.asarray(_interpolation_matrix(x.shape[1], size[0], align_corners), x.dtype)
    cols = jnp.asarray(_interpolation_matrix(x.shape[2], size[1], align_corners), x.dtype)
    return jnp.einsum("Hh,bhwc,Ww->bHWc", rows, x, cols)
