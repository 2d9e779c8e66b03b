"""Confusion matrix, mean IoU and pixel accuracy (the VOC protocol).

The confusion matrix is accumulated on the device (rows: ground truth, columns:
prediction; pixels labelled `ignore_label` are not counted). IoU_k = TP / (TP + FP
+ FN); the mean runs over the classes that occur in the ground truth or the
predictions, so a class absent from both does not count as 0 or 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.constants import IGNORE_LABEL


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """(K, K) int32 counts of (label, prediction) pairs over the non-ignored pixels."""
    labels = labels.reshape(-1).astype(jnp.int32)
    predictions = predictions.reshape(-1).astype(jnp.int32)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, num_classes * num_classes)
    counts = jnp.bincount(index, length=num_classes * num_classes + 1)[:-1]
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both labels and predictions."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def summarize(confusion: np.ndarray, class_names=None) -> dict:
    """{'miou', 'pixel_accuracy', 'iou': {name: IoU}} from a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    ious = iou_per_class(confusion)
    total = confusion.sum()
    names = class_names if class_names is not None else [str(k) for k in range(len(ious))]
    return {
        "miou": float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"),
        "pixel_accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, ious)},
    }
