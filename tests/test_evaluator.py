"""The one evaluator: canvas modes (pad / whole / sliding windows) and their arithmetic against brute force,
refinements (affinity propagation) in every mode, and compiled functions shared by equal evaluators."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from difnet_jax.data.normalization import IMAGENET
from difnet_jax.evaluation import crf, evaluator, metrics, report
from difnet_jax.evaluation.evaluator import EvalOptions, sliding_window_probabilities, window_starts
from difnet_jax.models import FAMILIES, deeplabv3plus
from difnet_jax.models.deeplabv3plus import DeepLabV3Plus

_options = functools.partial(EvalOptions, normalization=IMAGENET)  # normalization is required: these read ImageNet's


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
    options = _options(mode=mode, eval_size=97, window=81, stride=54)
    assert options.canvas(sizes) == expected
    assert all((side - 1) % 8 == 0 for side in expected)  # sizes the networks take


def test_pad_canvas_refuses_a_larger_image_by_name():
    source = [{"image": np.zeros((120, 90, 3), np.uint8), "label": np.zeros((120, 90, 1), np.uint8), "id": b"big_1"}]
    with pytest.raises(ValueError, match="'big_1'.*larger than the evaluation canvas 97x97"):
        next(evaluator.eval_batches_with_sizes(source, batch_size=1, options=_options(eval_size=97)))
    batch = next(evaluator.eval_batches_with_sizes(source, batch_size=2, options=_options(mode="whole")))
    assert batch["image"].shape == (2, 129, 97, 3) and batch["count"] == 1
    assert (batch["label"][1] == 255).all() and (batch["label"][0, 120:] == 255).all()


def _pair_outputs(offsets):
    """Toy window outputs: per-pixel probabilities, and pair logits that depend on the window (its mean)."""

    def outputs(images):
        pairs = images[..., :1] * jnp.arange(1.0, len(offsets) + 1) + 3.0 * images.mean(axis=(1, 2), keepdims=True)[
            ..., :1]
        return _contextual_probabilities(images), {"pairs": pairs}

    return outputs


@pytest.mark.parametrize("size,window,stride", [((30, 45), 17, 11), ((26, 26), 14, 12)])
def test_pair_maps_average_only_the_windows_holding_both_pixels(size, window, stride):
    offsets = ((-2, 3), (0, 1), (5, -5), (0, -4))  # (14, 12): 2 px overlap, so (5, -5) and (0, -4) straddle it
    images = jax.random.normal(jax.random.PRNGKey(3), (1, *size, 3))
    outputs = _pair_outputs(offsets)
    pixels, pairs = evaluator.stitch_windows(outputs, images, window=window, stride=stride,
                                             pair_offsets={"pairs": offsets})
    np.testing.assert_allclose(pixels, sliding_window_probabilities(
        lambda x: outputs(x)[0], images, window=window, stride=stride), atol=1e-6)
    height, width = size
    total, count = np.zeros((height, width, len(offsets))), np.zeros((height, width, len(offsets)))
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            crop = np.asarray(outputs(images[:, top : top + window, left : left + window])[1]["pairs"][0])
            for i in range(top, top + window):
                for j in range(left, left + window):
                    for c, (s, t) in enumerate(offsets):
                        if top <= i + s < top + window and left <= j + t < left + window:
                            total[i, j, c] += crop[i - top, j - left, c]
                            count[i, j, c] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    np.testing.assert_allclose(pairs["pairs"][0], expected, atol=1e-5)
    uncovered = np.isneginf(expected)
    # -inf only where no window holds both pixels, here also inside the image when windows overlap by less.
    inside = np.zeros_like(uncovered)
    for c, (s, t) in enumerate(offsets):
        inside[max(-s, 0) : height - max(s, 0), max(-t, 0) : width - max(t, 0), c] = True
    assert uncovered[~inside].all()
    assert uncovered[inside].any() == (window - stride < 5)


K = 4
RATES = (2, (2, 6))  # 3 rates, offsets up to 6 px


def _model_config():
    model = ml_collections.ConfigDict()
    model.name, model.depth, model.width, model.dtype = "deeplabv3plus", 18, 8, "float32"
    model.aspp_rates, model.backbone_init, model.frozen_backbone_bn = (1,), "", False
    model.deeplabv3plus = deeplabv3plus.defaults()
    model.deeplabv3plus.affinity_rates = RATES
    model.deeplabv3plus.affinity_weighting = "none"
    return model


def _model():
    """Built directly (the family's `build` takes the train set's statistics as facts): pi = 0.3 at each rate."""
    return DeepLabV3Plus(K, depth=18, width=8, affinity_rates=RATES, affinity_bias_init=(0.3, 0.3, 0.3))


@pytest.fixture(scope="module")
def affinity_model():
    """A random DeepLabv3+-18 (width 8) with an affinity head, its variables and two 40x60 images."""
    config = _model_config()
    model = _model()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 65, 65, 3)), train=False))
    rng = np.random.default_rng(0)

    def value(path, leaf):  # random weights without compiling init: unit BN statistics, He-normal kernels
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(leaf.shape, np.float32)
        if "mean" in name or "bias" in name:
            return np.zeros(leaf.shape, np.float32)
        return rng.normal(0.0, (2.0 / max(int(np.prod(leaf.shape[:-1])), 1)) ** 0.5, leaf.shape).astype(np.float32)

    variables = jax.tree_util.tree_map_with_path(value, shapes)
    rng = np.random.default_rng(0)
    source = []
    for index in range(2):
        labels = np.repeat(np.repeat(rng.integers(0, K, (4, 6)), 10, axis=0), 10, axis=1).astype(np.uint8)
        labels[:3] = 255
        source.append({"image": rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "label": labels,
                       "id": f"img{index}".encode()})
    return config, model, variables, source


def _evaluate(affinity_model, options, refinements):
    config, model, variables, source = affinity_model
    ev = evaluator.Evaluator(model, FAMILIES["deeplabv3plus"], K, options, refinements=refinements)
    result = ev.evaluate(variables, source, batch_size=2, keep_predictions=True, log_progress=False)
    batch = next(evaluator.eval_batches_with_sizes(source, batch_size=2, options=options))
    heads = ev._heads(variables, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]))
    return result, heads


def test_sliding_with_one_window_equals_whole_with_propagation(affinity_model):
    refinements = report.propagation_refinements(affinity_model[0], (1, 3), (2,))
    whole, whole_heads = _evaluate(affinity_model, _options(mode="whole"), refinements)
    sliding, sliding_heads = _evaluate(affinity_model, _options(mode="sliding", window=65, stride=32), refinements)
    assert set(whole.head_confusions) == {"propagate_T1", "propagate_T3", "oracle_T2"}
    np.testing.assert_array_equal(sliding.confusion, whole.confusion)
    np.testing.assert_array_equal(sliding.predictions, whole.predictions)
    for name, matrix in whole.head_confusions.items():
        np.testing.assert_array_equal(sliding.head_confusions[name], matrix, err_msg=name)
        np.testing.assert_array_equal(np.argmax(sliding_heads[name], -1), np.argmax(whole_heads[name], -1))
    # Not vacuous: propagation changes the prediction, and the oracle's more than the model's own.
    final = np.argmax(whole_heads["final"], -1)
    assert (np.argmax(whole_heads["propagate_T3"], -1) != final).any()
    assert (np.argmax(whole_heads["oracle_T2"], -1) != final).any()


def test_propagation_over_overlapping_windows_is_valid(affinity_model):
    refinements = report.propagation_refinements(affinity_model[0], (10,), (10,))
    options = _options(mode="sliding", window=49, stride=16)  # canvas 65: 2 x 2 windows
    assert len(window_starts(65, 49, 16)) == 2
    result, heads = _evaluate(affinity_model, options, refinements)
    labelled = sum(int((e["label"] != 255).sum()) for e in affinity_model[3])
    for name, matrix in {"final": result.confusion, **result.head_confusions}.items():
        assert matrix.shape == (K, K) and matrix.sum() == labelled, name
        assert 0.0 <= metrics.summarize(matrix)["miou"] <= 1.0
    for name in ("propagate_T10", "oracle_T10"):
        assert heads[name].shape == (2, 65, 65, K)
        np.testing.assert_allclose(np.asarray(heads[name])[:, :40, :60].sum(-1), 1.0, atol=1e-5)
    assert result.predictions.shape == (2, 65, 65)


def test_refinements_refuse_multiscale_and_flip_by_flag(affinity_model):
    refinements = report.propagation_refinements(affinity_model[0], (), (1,))
    for options in (_options(mode="sliding", scales=(0.5, 1.0)), _options(flip=True)):
        with pytest.raises(ValueError, match="single-scale, unflipped.*--scales/--flip"):
            evaluator.Evaluator(affinity_model[1], None, K, options, refinements=refinements)


def test_equal_evaluators_compile_once(affinity_model, monkeypatch):
    config, _, variables, source = affinity_model
    traces = []
    counted = evaluator.heads_and_intermediates
    monkeypatch.setattr(evaluator, "heads_and_intermediates", lambda *a: traces.append(1) or counted(*a))
    evaluator._network_function.cache_clear()
    options = _options(mode="whole")
    first, second = (evaluator.Evaluator(_model(), FAMILIES["deeplabv3plus"], K, options) for _ in range(2))
    assert first.model is not second.model and first._network is second._network
    assert first._confusions is second._confusions
    for ev in (first, second):
        ev.evaluate(variables, source, batch_size=2, log_progress=False)
    assert len(traces) == 1  # one trace (one canvas shape), one compilation, for both instances
    other = evaluator.Evaluator(first.model, FAMILIES["deeplabv3plus"], K, _options(mode="sliding", window=65))
    assert other._network is not first._network


def test_crf_timing_runs_on_the_eval_modes_canvas():
    """The CRF's timing once built a "pad" canvas: an image larger than eval_size (Cityscapes) failed after the run."""
    source = [{"image": np.zeros((40, 60, 3), np.uint8), "label": np.zeros((40, 60), np.uint8), "id": b"wide"}]
    params = crf.CRFParams(iterations=1, max_senders=400)
    timed = report.crf_timing(params, _options(mode="sliding", eval_size=33, window=33, stride=16), 3, source,
                              runs=1)
    assert timed["crf_sender_stride"] == crf.sender_stride(65, 65, 400) != crf.sender_stride(33, 33, 400)
    assert timed["crf_seconds_per_image"] > 0
