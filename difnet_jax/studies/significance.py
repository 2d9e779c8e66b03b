"""Whether a difference between two groups of seeds is real: a 95 % confidence interval and the verdict it carries.

Two groups of runs' final metrics, a (the paper's better method) and b, give Delta = mean(a) - mean(b) and a
two-sided 95 % confidence interval of it:
- independent groups (two configurations, seeds trained apart): Welch's interval,
  Delta ± t_{0.975, nu} sqrt(s_a^2 / n_a + s_b^2 / n_b), with the Welch-Satterthwaite degrees of freedom
  nu = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2/(n_a - 1) + (s_b^2/n_b)^2/(n_b - 1));
- paired groups (two metrics of the same runs, e.g. a layer's mIoU against the previous layer's, or T = 3 against
  T = 1: each seed gives both): the paired t interval of the per-seed differences d_i,
  mean(d) ± t_{0.975, n - 1} s_d / sqrt(n).

The verdict (`verdict`): "yes" when the interval lies wholly in the paper's direction (above 0), "no" when wholly
against it (below 0), "within noise" otherwise; "unresolved (n = 1)" where a side has a single run (no spread, so no
interval); "not testable" where a side is degenerate: every run gives the same value (a model that predicts a
constant, e.g. the prior), so a t interval means nothing. At n = 5 per side an interval excludes 0 from about
t = 2.3 (Welch, nu near 8): a "yes" needs a difference about 1.5 times the pooled standard deviation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
# A side whose values all agree to this (mIoU as a fraction: 1e-9 of a point) has no variance.
DEGENERATE_STD = 1e-11


@dataclasses.dataclass(frozen=True)
class Interval:
    """Delta = mean(a) - mean(b), its two-sided `LEVEL` interval (None where no interval exists), and how it was
    made: `test` is "welch", "paired" or the reason there is none; n_a, n_b the runs on each side."""

    delta: float
    low: float | None
    high: float | None
    test: str
    n_a: int
    n_b: int
    degenerate: bool = False

    def text(self) -> str:
        """'+1.23 [+0.40, +2.06] (Welch, n 5 / 5)' in points of mIoU."""
        if self.low is None:
            return f"{100 * self.delta:+.2f} (n {self.n_a} / {self.n_b}, no interval: {self.test})"
        return (f"{100 * self.delta:+.2f} [{100 * self.low:+.2f}, {100 * self.high:+.2f}] "
                f"({self.test}, n {self.n_a} / {self.n_b})")


def _is_degenerate(values: np.ndarray) -> bool:
    return len(values) > 1 and float(np.std(values)) < DEGENERATE_STD


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Welch's interval of mean(a) - mean(b) for two independent groups (module docstring)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    delta = float(a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        return Interval(delta, None, None, "n = 1", len(a), len(b))
    if _is_degenerate(a) or _is_degenerate(b):
        return Interval(delta, None, None, "no variance", len(a), len(b), degenerate=True)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(va + vb))
    return Interval(delta, delta - half, delta + half, "Welch", len(a), len(b))


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """The paired t interval of mean(a - b) for two metrics of the same runs, a[i] and b[i] from run i."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired groups need one value per run on each side, got {len(a)} and {len(b)}")
    d = a - b
    delta = float(d.mean())
    if len(d) < 2:
        return Interval(delta, None, None, "n = 1", len(a), len(b))
    if _is_degenerate(a) or _is_degenerate(b):
        return Interval(delta, None, None, "no variance", len(a), len(b), degenerate=True)
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return Interval(delta, delta - half, delta + half, "paired t", len(a), len(b))


def verdict(interval: Interval) -> str:
    """'yes' / 'no' / 'within noise' / 'unresolved (n = 1)' / 'not testable' (module docstring)."""
    if interval.degenerate:
        return "not testable"
    if interval.low is None:
        return "unresolved (n = 1)"
    if interval.low > 0:
        return "yes"
    if interval.high < 0:
        return "no"
    return "within noise"
