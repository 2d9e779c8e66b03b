"""Pixel-wise cross-entropy with an ignore label (255: VOC's void band and padding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from difnet_jax.constants import IGNORE_LABEL


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """Mean cross-entropy over the pixels whose label is not `ignore_label`.

    logits (..., K) are computed in float32; labels (...) are integer class indices.
    With no valid pixel the loss is 0 (not NaN).
    """
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_label
    safe_labels = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    count = valid.sum()
    return jnp.where(valid, nll, 0.0).sum() / jnp.maximum(count, 1)
