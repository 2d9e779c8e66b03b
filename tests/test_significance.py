"""The claims study's judging rule (difnet_jax/studies/significance.py) on hand-made groups."""

import numpy as np
import pytest
from scipy import stats

from difnet_jax.studies import significance

A = [0.70, 0.72, 0.74, 0.71, 0.73]  # mean 0.72, sample variance 2.5e-4
B = [0.60, 0.62, 0.61, 0.63, 0.64]  # mean 0.62, the same variance


def test_welch_interval_by_hand():
    """Equal variances 2.5e-4 and n 5 / 5: nu = 8, half-width t_{0.975, 8} * sqrt(2 * 2.5e-4 / 5) = 2.306 * 0.01."""
    interval = significance.welch(A, B)
    assert interval.delta == pytest.approx(0.10)
    assert interval.high - interval.delta == pytest.approx(2.306004 * 0.01, rel=1e-5)
    assert (interval.test, interval.n_a, interval.n_b) == ("Welch", 5, 5)
    assert significance.verdict(interval) == "yes"
    assert significance.verdict(significance.welch(B, A)) == "no"
    assert "+10.00 [+7.69, +12.31] (Welch, n 5 / 5)" == interval.text()


@pytest.mark.parametrize("seed", range(20))
def test_welch_interval_excludes_zero_exactly_when_scipys_welch_test_rejects(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.5, 0.02, rng.integers(2, 7)), rng.normal(0.52, 0.05, rng.integers(2, 7))
    interval = significance.welch(a, b)
    p = stats.ttest_ind(a, b, equal_var=False).pvalue
    assert (interval.low > 0 or interval.high < 0) == (p < 0.05)
    assert significance.verdict(interval) == ("within noise" if p >= 0.05 else "yes" if a.mean() > b.mean() else "no")


def test_overlapping_groups_are_within_noise_even_when_the_old_rule_said_yes():
    """Delta 1.2 std at n = 3 (the old rule's 'yes': Delta > the larger std) is inside the 95 % interval."""
    a, b = [0.70, 0.72, 0.74], [0.676, 0.696, 0.716]
    assert 0.024 > np.std(a, ddof=1)
    assert significance.verdict(significance.welch(a, b)) == "within noise"


def test_a_single_run_is_unresolved_and_a_constant_side_not_testable():
    assert significance.verdict(significance.welch([0.71], B)) == "unresolved (n = 1)"
    assert significance.verdict(significance.welch(A, [0.5])) == "unresolved (n = 1)"
    assert "no interval" in significance.welch([0.71], B).text()
    prior = [0.039, 0.039, 0.039]  # a model predicting the prior at every seed
    assert significance.verdict(significance.welch(prior, prior)) == "not testable"
    assert significance.verdict(significance.paired(prior, prior)) == "not testable"
    assert significance.verdict(significance.welch(A, prior)) == "not testable"


def test_paired_interval_uses_the_per_run_differences():
    """The same runs' two metrics: a constant shift of 1 point is a 'yes' however much the runs differ, where the
    independent test of the same numbers cannot tell."""
    b = np.array([0.40, 0.60, 0.80, 0.50])
    a = b + 0.01
    assert significance.verdict(significance.paired(a, b)) == "yes"
    assert significance.verdict(significance.welch(a, b)) == "within noise"
    d = np.array([0.02, -0.01, 0.03, 0.00])
    interval = significance.paired(b + d, b)
    expected = stats.ttest_rel(b + d, b).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    with pytest.raises(ValueError, match="one value per run"):
        significance.paired([0.1, 0.2], [0.1])
