"""Confusion matrix, IoU and the loss against brute-force numpy counts."""

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax import losses
from difnet_jax.evaluation import metrics


def _brute_force_miou(labels, predictions, num_classes):
    ious = []
    for k in range(num_classes):
        valid = labels != 255
        gt, pred = (labels == k) & valid, (predictions == k) & valid
        union = (gt | pred).sum()
        if union:  # absent from both: not counted
            ious.append((gt & pred).sum() / union)
    accuracy = ((labels == predictions) & (labels != 255)).sum() / (labels != 255).sum()
    return np.mean(ious), accuracy


def test_miou_equals_brute_force_count():
    rng = np.random.default_rng(0)
    num_classes = 7
    labels = rng.integers(0, 5, (4, 30, 30))  # classes 5 and 6 never occur in the labels ...
    labels[rng.random(labels.shape) < 0.2] = 255  # ... and a fifth of the pixels are void
    predictions = rng.integers(0, 6, labels.shape)  # class 5 is predicted but absent: IoU 0; 6 is absent: skipped
    predictions[labels == 2] = 2  # a class with a high IoU
    confusion = np.asarray(metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), num_classes))
    assert confusion.sum() == (labels != 255).sum()
    summary = metrics.summarize(confusion, [f"c{k}" for k in range(num_classes)])
    miou, accuracy = _brute_force_miou(labels, predictions, num_classes)
    np.testing.assert_allclose(summary["miou"], miou)
    np.testing.assert_allclose(summary["pixel_accuracy"], accuracy)
    assert summary["iou"]["c5"] == 0.0 and summary["iou"]["c6"] is None


def test_confusion_rows_are_ground_truth():
    labels = jnp.array([[0, 0, 1, 255]])
    predictions = jnp.array([[0, 1, 1, 0]])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, 2), [[1, 1], [0, 1]])


def test_cross_entropy_ignores_void_pixels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 5, 5))
    labels[0, :2] = 255
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    expected = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].mean()
    np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)
    all_void = jnp.full((2, 5, 5), 255)
    assert float(losses.cross_entropy(jnp.asarray(logits), all_void)) == 0.0


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_valid_pixels():
    """d loss / d logits = (softmax - one_hot(label)) / #valid on valid pixels, 0 on void ones: the closed-form
    backward of `losses.summed_cross_entropy` (issue 31), here against numpy's."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 5, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (2, 5, 5))
    labels[1, 3:] = 255
    valid = labels != 255
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = (softmax - np.eye(4)[np.where(valid, labels, 0)]) * valid[..., None] / valid.sum()
    got = jax.grad(losses.cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_cross_entropy_matches_autodiff_of_log_softmax_and_stays_finite():
    """The closed-form loss and gradient equal autodiff of -log_softmax picked by the label (to float32 rounding),
    at logits far from 0 too; with every pixel void both are exactly 0."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, (2, 7, 5))
    labels[0, :3] = 255
    labels = jnp.asarray(labels)

    def autodiff(logits):
        valid = labels != 255
        picked = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.where(valid, labels, 0)[..., None], -1)[..., 0]
        return -jnp.where(valid, picked, 0.0).sum() / valid.sum()

    for scale, offset in ((1.0, 0.0), (30.0, 1e4)):
        logits = jnp.asarray(rng.normal(size=(2, 7, 5, 6)) * scale + offset, jnp.float32)
        value, grad = jax.value_and_grad(losses.cross_entropy)(logits, labels)
        expected_value, expected_grad = jax.value_and_grad(autodiff)(logits)
        np.testing.assert_allclose(value, expected_value, rtol=1e-5)
        np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    void = jnp.full(labels.shape, 255)
    value, grad = jax.value_and_grad(losses.cross_entropy)(logits, void)
    assert float(value) == 0.0 and not np.asarray(grad).any()
