"""The one evaluator: canvas modes (pad / whole / sliding windows) and their arithmetic, against brute force."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.evaluation import evaluator
from difnet_jax.evaluation.evaluator import EvalOptions, sliding_window_probabilities, window_starts


def _contextual_probabilities(images):
    """A function whose output at a pixel depends on the whole input (its mean): windows change it."""
    logits = images[..., :2] * 2.0 + images.mean(axis=(1, 2), keepdims=True)[..., :2]
    return jax.nn.softmax(jnp.concatenate([logits, -logits[..., :1]], -1), axis=-1)


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(10, 10, 3) == [0]
    assert window_starts(25, 9, 8) == [0, 8, 16]
    assert window_starts(26, 9, 8) == [0, 8, 16, 17]
    for length, window, stride in [(100, 33, 20), (769, 769, 513), (1025, 769, 513), (2049, 769, 513)]:
        starts = window_starts(length, window, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered.all() and starts[-1] == length - window
        assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_one_window_covering_the_image_is_the_whole_image_output():
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 41, 41, 3))
    whole = _contextual_probabilities(images)
    np.testing.assert_array_equal(
        sliding_window_probabilities(_contextual_probabilities, images, window=41, stride=20), whole)
    images = images[:, :33]
    # Window larger than the image: the padded image is run once, then cropped back.
    padded = _contextual_probabilities(jnp.pad(images, ((0, 0), (0, 16), (0, 8), (0, 0))))[:, :33, :41]
    np.testing.assert_allclose(sliding_window_probabilities(_contextual_probabilities, images, window=49, stride=20),
                               padded, atol=1e-6)


def test_sliding_windows_average_overlaps_like_a_brute_force_loop():
    images = jax.random.normal(jax.random.PRNGKey(1), (1, 30, 45, 3))
    window, stride = 17, 11
    got = sliding_window_probabilities(_contextual_probabilities, images, window=window, stride=stride)
    total = np.zeros((1, 30, 45, 3))
    count = np.zeros((30, 45))
    for top in range(0, 30 - window + 1):
        for left in range(0, 45 - window + 1):
            if top in window_starts(30, window, stride) and left in window_starts(45, window, stride):
                total[:, top : top + window, left : left + window] += np.asarray(
                    _contextual_probabilities(images[:, top : top + window, left : left + window]))
                count[top : top + window, left : left + window] += 1
    np.testing.assert_allclose(got, total / count[None, :, :, None], atol=1e-6)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, atol=1e-5)
    # Overlapping windows disagree here (the output depends on the window's mean): averaging matters.
    assert not np.allclose(got, _contextual_probabilities(images), atol=1e-3)


def test_dict_heads_go_through_multiscale_and_windows_alike():
    images = jax.random.normal(jax.random.PRNGKey(2), (1, 33, 33, 3))
    heads = lambda x: {"final": _contextual_probabilities(x), "other": _contextual_probabilities(-x)}
    got = sliding_window_probabilities(heads, images, window=17, stride=8)
    np.testing.assert_allclose(got["final"], sliding_window_probabilities(
        _contextual_probabilities, images, window=17, stride=8), atol=1e-6)
    logits_fn = lambda x: {"a": x[..., :2], "b": -x[..., :2]}
    multi = jax.jit(functools.partial(evaluator.multiscale_probabilities, logits_fn, scales=(0.5, 1.0), flip=True))(
        images)
    assert set(multi) == {"a", "b"} and multi["a"].shape == (1, 33, 33, 2)


@pytest.mark.parametrize("mode,sizes,expected", [
    ("pad", [(96, 96), (50, 70)], (97, 97)),
    ("whole", [(96, 80), (50, 70)], (97, 97)),
    ("whole", [(1024, 2048)], (1025, 2049)),
    ("sliding", [(40, 50)], (81, 81)),
    ("sliding", [(1024, 2048)], (1025, 2049)),
])
def test_canvas_of_each_mode(mode, sizes, expected):
    options = EvalOptions(mode=mode, eval_size=97, window=81, stride=54)
    assert options.canvas(sizes) == expected
    assert all((side - 1) % 8 == 0 for side in expected)  # sizes the networks take


def test_pad_canvas_refuses_a_larger_image_by_name():
    source = [{"image": np.zeros((120, 90, 3), np.uint8), "label": np.zeros((120, 90, 1), np.uint8), "id": b"big_1"}]
    with pytest.raises(ValueError, match="'big_1'.*larger than the evaluation canvas 97x97"):
        next(evaluator.eval_batches_with_sizes(source, batch_size=1, options=EvalOptions(eval_size=97)))
    batch = next(evaluator.eval_batches_with_sizes(source, batch_size=2, options=EvalOptions(mode="whole")))
    assert batch["image"].shape == (2, 129, 97, 3) and batch["count"] == 1
    assert (batch["label"][1] == 255).all() and (batch["label"][0, 120:] == 255).all()
