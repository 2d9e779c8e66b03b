"""Dilated affinity (papers/004): targets, focal loss, weightings, counts, propagation vs hand and brute force."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.models import affinity

RATES = ((1, 1), (2, 3), (3, 2), (5, 1))  # asymmetric, and (5, 1) reaches past a 5-row image


def _brute_targets(labels, rates):
    b, h, w = labels.shape
    targets = np.zeros((b, h, w, 8 * len(rates)), np.float32)
    valid = np.zeros((b, h, w, 8 * len(rates)), bool)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for k, (r1, r2) in enumerate(rates):
                    c = 8 * k
                    for s in (-r1, 0, r1):
                        for t in (-r2, 0, r2):
                            if s == 0 and t == 0:
                                continue
                            ii, jj = i + s, j + t
                            inside = 0 <= ii < h and 0 <= jj < w
                            ok = (inside and labels[n, i, j] != IGNORE_LABEL
                                  and labels[n, ii, jj] != IGNORE_LABEL)
                            valid[n, i, j, c] = ok
                            targets[n, i, j, c] = float(ok and labels[n, i, j] == labels[n, ii, jj])
                            c += 1
    return targets, valid


def test_expand_rates():
    assert affinity.expand_rates((8, 16)) == ((8, 8), (16, 16))
    assert affinity.expand_rates((8, (12, 24), 16)) == ((8, 8), (12, 24), (24, 12), (16, 16))
    assert affinity.expand_rates(8) == ((8, 8),)
    assert affinity.expand_rates((8, (8, 8), 8)) == ((8, 8),)
    spec = (8, (12, 24), 16, (32, 64), 48)
    assert affinity.expand_rates(affinity.expand_rates(spec)) == affinity.expand_rates(spec)
    assert len(affinity.expand_rates(spec)) == 7
    for bad in ((0,), ((1, 2, 3),), ("8",), ((4, -1),)):
        with pytest.raises(ValueError):
            affinity.expand_rates(bad)


def test_targets_match_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 5, 7))
    labels[rng.random(labels.shape) < 0.15] = IGNORE_LABEL
    targets, valid = affinity.affinity_targets(jnp.asarray(labels), RATES)
    expected_targets, expected_valid = _brute_targets(labels, RATES)
    assert targets.shape == valid.shape == (2, 5, 7, 32)
    np.testing.assert_array_equal(np.asarray(valid), expected_valid)
    np.testing.assert_array_equal(np.asarray(targets), expected_targets)
    assert 0 < expected_valid.sum() < expected_valid.size and expected_targets.sum() > 0
    # channel layout: rate (2, 3), neighbour 2 is offset (-2, +3): pixel (2, 1) looks at (0, 4)
    assert affinity.neighbour_offsets((2, 3))[2] == (-2, 3)
    assert bool(valid[0, 2, 1, 8 + 2]) == (labels[0, 2, 1] != 255 and labels[0, 0, 4] != 255)
    # rate (5, 1) on 5 rows: every vertical neighbour is outside
    assert not np.asarray(valid)[..., 24:32][..., [0, 1, 2, 5, 6, 7]].any()


def test_steep_sigmoid():
    x = np.array([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0])
    np.testing.assert_allclose(affinity.steep_sigmoid(x, mu=7.0), 7.0**x / (1 + 7.0**x), rtol=1e-6)
    np.testing.assert_allclose(affinity.steep_sigmoid(x, mu=np.e), 1 / (1 + np.exp(-x)), rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
def test_focal_loss_formula(gamma):
    p = np.array([0.01, 0.2, 0.5, 0.7, 0.99, 0.01, 0.2, 0.5, 0.7, 0.99])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], np.float32)
    logits = np.log(p / (1 - p))
    pt = np.where(y == 1, p, 1 - p)
    expected = -((1 - pt) ** gamma) * np.log(pt)
    np.testing.assert_allclose(affinity.focal_loss(logits, y, gamma), expected, rtol=1e-5)
    # numbers by hand: p = 0.7, y = 1, gamma 2 -> 0.09 * -log 0.7 = 0.0321001
    assert gamma != 2.0 or abs(float(affinity.focal_loss(np.log(0.7 / 0.3), 1.0, 2.0)) - 0.0321001) < 1e-6


# Hand-counted at rate 1 (k = floor(8 * agreeing valid / valid + 1/2); 255 and outside are invalid):
#   0   0  255     (0,0): 3/3 -> n8   (0,1): 4/4 -> n8   (0,2): ignored, not counted
#   0   0   0      (1,0): 3/5 -> n5   (1,1): 4/7 -> n5   (1,2): 2/4 -> n4
#   1   1   1      (2,0): 1/3 -> n3   (2,1): 2/5 -> n3   (2,2): 1/3 -> n3
HAND = np.array([[0, 0, 255], [0, 0, 0], [1, 1, 1]])
HAND_K = np.array([[8, 8, -1], [5, 5, 4], [3, 3, 3]])
HAND_VALID = np.array([[3, 4, 0], [5, 7, 4], [3, 5, 3]])
HAND_POSITIVE = np.array([[3, 4, 0], [3, 4, 2], [1, 2, 1]])


def test_counts_against_hand_counted_map():
    stats = affinity.count_neighbours(HAND, [(1, 1)])
    np.testing.assert_array_equal(stats.counts, [[0, 0, 0, 3, 1, 2, 0, 0, 2]])
    assert int(stats.positives[0]) == 20 == HAND_POSITIVE.sum()
    assert int(stats.pairs[0]) == 34 == HAND_VALID.sum()
    np.testing.assert_allclose(stats.positive_freq, [20 / 34])
    k, counted = affinity.neighbour_categories(jnp.asarray(HAND[None]), [(1, 1)])
    np.testing.assert_array_equal(np.where(np.asarray(counted)[0, ..., 0], np.asarray(k)[0, ..., 0], -1), HAND_K)
    # two maps add up; a second rate has its own row
    both = affinity.merge_stats(stats, stats)
    np.testing.assert_array_equal(both.counts, 2 * stats.counts)
    two = affinity.count_neighbours(np.stack([HAND, HAND]), [(1, 1), (2, 2)])
    np.testing.assert_array_equal(two.counts[0], both.counts[0])
    # rate 2 on 3x3: the centre sees nothing inside, (0,2) is ignored: 7 pixels counted per map
    assert two.counts[1].sum() == 2 * 7


def test_weights_against_hand_counted_map():
    stats = affinity.count_neighbours(HAND, [(1, 1)])  # freq n3 3/8, n4 1/8, n5 2/8, n8 2/8, rest unseen
    neighbor = affinity.category_weights(stats, "neighbor")[0]
    # freq(n8)/freq(nk); unseen categories take the rarest seen frequency (1/8): weight 2
    np.testing.assert_allclose(neighbor, [2, 2, 2, 2 / 3, 2, 1, 2, 2, 1], rtol=1e-6)
    np.testing.assert_allclose(affinity.category_weights(stats, "sqrt")[0], np.sqrt(neighbor), rtol=1e-6)
    np.testing.assert_allclose(affinity.category_weights(stats, "none")[0], np.ones(9))
    np.testing.assert_allclose(affinity.signal_weights(stats)[0], [20 / 14, 1.0], rtol=1e-6)


def test_loss_weighting_and_invalid_pairs_by_hand():
    stats = affinity.count_neighbours(HAND, [(1, 1)])
    labels = jnp.asarray(HAND[None])
    loss = functools.partial(affinity.affinity_loss, labels=labels, rates=[(1, 1)], stats=stats)
    # zero logits: every valid pair costs 0.25 log 2 (focal, gamma 2); weighted sum / 34 valid pairs
    fl = 0.25 * np.log(2)
    pixel_weight = {8: 1.0, 5: 1.0, 4: np.sqrt(2), 3: np.sqrt(2 / 3)}
    weighted = sum(pixel_weight[k] * v for k, v in zip(HAND_K.ravel(), HAND_VALID.ravel()) if k >= 0)
    zeros = jnp.zeros((1, 3, 3, 8))
    np.testing.assert_allclose(loss(zeros, weighting="sqrt"), fl * weighted / 34, rtol=1e-5)
    # logits 1: positive and negative pairs differ; signal weights negatives by pi / (1 - pi) = 20/14
    p = 1 / (1 + np.exp(-1.0))
    fl_pos, fl_neg = (1 - p) ** 2 * -np.log(p), p**2 * -np.log(1 - p)
    ones = jnp.ones((1, 3, 3, 8))
    np.testing.assert_allclose(loss(ones, weighting="signal"), (20 * fl_pos + 20 * fl_neg) / 34, rtol=1e-5)
    # none: plain cross-entropy (gamma ignored), equal weights
    np.testing.assert_allclose(loss(ones, weighting="none", gamma=2.0),
                               (20 * -np.log(p) + 14 * -np.log(1 - p)) / 34, rtol=1e-5)
    # invalid pairs carry no loss whatever their logits
    targets, valid = affinity.affinity_targets(labels, [(1, 1)])
    noisy = jnp.where(valid, ones, 50.0 * (1 - 2 * (jax.random.uniform(jax.random.key(0), ones.shape) > 0.5)))
    for weighting in affinity.WEIGHTINGS:
        np.testing.assert_allclose(loss(noisy, weighting=weighting), loss(ones, weighting=weighting), rtol=1e-6)
    # all-ignored labels: 0, not NaN; missing statistics: a clear error
    assert float(affinity.affinity_loss(zeros, jnp.full((1, 3, 3), 255), [(1, 1)], weighting="none",
                                        stats=None)) == 0.0
    with pytest.raises(ValueError, match="statistics"):
        affinity.affinity_loss(zeros, labels, [(1, 1)], weighting="sqrt", stats=None)


@pytest.mark.parametrize("weighting", affinity.WEIGHTINGS)
def test_the_two_reductions_differ_by_exactly_8_times_the_number_of_rates(weighting):
    """mean_over_pairs (the default: TensorFlow's reduce_mean over B x H x W x 8|R|) vs sum_over_pairs (Eq. 5's
    per-pixel sum averaged over pixels), on a fixed input with void pixels and pairs leaving the image."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (2, 9, 7)).astype(np.int32)
    labels[0, :2] = IGNORE_LABEL
    stats = affinity.count_neighbours(labels, RATES)
    logits = jnp.asarray(rng.normal(size=(2, 9, 7, 8 * len(RATES))), jnp.float32)
    loss = functools.partial(affinity.affinity_loss, logits, jnp.asarray(labels), RATES, weighting=weighting,
                             stats=stats)
    mean, summed = float(loss()), float(loss(reduction="sum_over_pairs"))
    assert mean == float(loss(reduction="mean_over_pairs")) and mean > 0
    np.testing.assert_allclose(summed, 8 * len(RATES) * mean, rtol=1e-6)
    # the mean over pairs by hand
    targets, valid = _brute_targets(labels, RATES)
    per_pair = np.asarray(affinity.focal_loss(logits, targets, 0.0 if weighting == "none" else 2.0))
    if weighting in ("none", "signal"):
        pi = stats.positive_freq.repeat(8)
        weight = np.where(targets > 0, 1.0, pi / (1 - pi)) if weighting == "signal" else np.ones_like(per_pair)
        np.testing.assert_allclose(mean, (weight * per_pair)[valid].sum() / valid.sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        loss(reduction="mean_over_pixels")


def test_counts_equal_the_targets_and_categories_of_the_loss():
    """count_neighbours (numpy, one rate at a time) counts the pairs and categories the jnp path defines."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, (2, 11, 9)).astype(np.uint8)
    labels[1, 3:5] = IGNORE_LABEL
    stats = affinity.count_neighbours(labels, RATES)
    targets, valid = affinity.affinity_targets(labels.astype(np.int32), RATES)
    k, counted = (np.asarray(a) for a in affinity.neighbour_categories(labels.astype(np.int32), RATES))
    for i in range(len(RATES)):
        np.testing.assert_array_equal(stats.counts[i], np.bincount(k[..., i][counted[..., i]], minlength=9))
    np.testing.assert_array_equal(stats.positives, np.asarray(targets).reshape(-1, len(RATES), 8).sum(axis=(0, 2)))
    np.testing.assert_array_equal(stats.pairs, np.asarray(valid).reshape(-1, len(RATES), 8).sum(axis=(0, 2)))
    both = affinity.count_neighbours(labels.astype(np.int64), RATES)  # any integer dtype
    np.testing.assert_array_equal(both.counts, stats.counts)


def test_loss_jits_and_is_differentiable():
    rng = np.random.default_rng(1)
    labels = jnp.asarray(rng.integers(0, 4, (2, 12, 10)))
    rates = affinity.expand_rates((2, (1, 3)))
    stats = affinity.count_neighbours(np.asarray(labels), rates)
    fn = jax.jit(functools.partial(affinity.affinity_loss, rates=rates, weighting="sqrt", stats=stats))
    logits = jnp.asarray(rng.normal(size=(2, 12, 10, 24)), jnp.float32)
    value, grad = jax.value_and_grad(fn)(logits, labels)
    assert np.isfinite(float(value)) and value > 0
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).sum()) > 0


def _brute_propagate(probs, aff, rates, lam):
    b, h, w, _ = probs.shape
    out = np.zeros_like(probs)
    offsets = [o for r in rates for o in affinity.neighbour_offsets(r)]
    for n in range(b):
        for i in range(h):
            for j in range(w):
                total = lam * probs[n, i, j] * probs[n, i, j].max()
                for c, (s, t) in enumerate(offsets):
                    if 0 <= i + s < h and 0 <= j + t < w:
                        total = total + aff[n, i, j, c] * probs[n, i + s, j + t]
                out[n, i, j] = total / total.sum()
    return out


def _random_probs(key, shape):
    return jax.nn.softmax(2.0 * jax.random.normal(key, shape), axis=-1)


def test_propagate_matches_eq6_and_borders_contribute_nothing():
    rates = ((1, 2), (2, 1))
    probs = _random_probs(jax.random.key(0), (1, 4, 5, 3))
    aff = jax.random.uniform(jax.random.key(1), (1, 4, 5, 16))
    expected = _brute_propagate(np.asarray(probs), np.asarray(aff), rates, 6.0)
    np.testing.assert_allclose(affinity.propagate(probs, aff, rates, lam=6.0), expected, rtol=1e-5, atol=1e-6)
    twice = _brute_propagate(expected, np.asarray(aff), rates, 6.0)
    np.testing.assert_allclose(affinity.propagate(probs, aff, rates, iterations=2), twice, rtol=1e-5, atol=1e-6)
    # every neighbour outside the image: the prediction is kept whatever the affinity
    np.testing.assert_allclose(affinity.propagate(probs, jnp.ones((1, 4, 5, 8)), [(9, 9)], iterations=3), probs,
                               rtol=1e-5, atol=1e-6)


def test_propagate_large_lambda_returns_input():
    probs = _random_probs(jax.random.key(2), (2, 6, 7, 5))
    aff = jax.random.uniform(jax.random.key(3), (2, 6, 7, 16))
    out = affinity.propagate(probs, aff, [(1, 1), (2, 2)], lam=1e9, iterations=3)
    np.testing.assert_allclose(out, probs, atol=1e-6)
    assert float(jnp.abs(affinity.propagate(probs, aff, [(1, 1), (2, 2)], lam=0.5) - probs).max()) > 0.05


def test_propagate_stays_normalised():
    probs = _random_probs(jax.random.key(4), (2, 9, 8, 4))
    aff = jax.random.uniform(jax.random.key(5), (2, 9, 8, 24))
    out = jax.jit(functools.partial(affinity.propagate, rates=affinity.expand_rates((1, (2, 3))),
                                    iterations=10))(probs, aff)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert float(out.min()) >= 0.0


def test_perfect_affinities_fix_one_wrong_pixel():
    labels = np.zeros((1, 7, 7), np.int32)
    probs = np.tile(np.array([0.9, 0.1], np.float32), (1, 7, 7, 1))
    probs[0, 3, 3] = (0.4, 0.6)  # wrong, surrounded by 8 agreeing neighbours
    rates = [(1, 1)]
    oracle = affinity.ground_truth_affinity(jnp.asarray(labels), rates)
    out = np.asarray(affinity.propagate(jnp.asarray(probs), oracle, rates, lam=6.0))
    # by hand: 6 * 0.6 * (0.4, 0.6) + 8 * (0.9, 0.1) = (8.64, 2.96)
    np.testing.assert_allclose(out[0, 3, 3], np.array([8.64, 2.96]) / 11.6, rtol=1e-5)
    assert (out.argmax(-1) == labels).all()
    # with no affinity the wrong pixel stays wrong
    assert np.asarray(affinity.propagate(jnp.asarray(probs), 0 * oracle, rates))[0, 3, 3].argmax() == 1
