"""Dilated affinity (Wu et al., "Improving Semantic Segmentation via Dilated Affinity"): targets, loss, propagation.

Pure functions; the jnp ones are jit-able, the counting ones take numpy labels (a dataset's
statistics: `difnet_jax.models.affinity_stats` stores them beside the prepared dataset).

Layout (fixed: used by code outside the project). For rates R = ((r1, r2), ...) an affinity map
has 8|R| channels; channel `8 * k + n` is rate k, neighbour n, the neighbours in row-major order
of the offsets (s, t) in {-r1, 0, r1} x {-r2, 0, r2} without (0, 0), s along H and t along W
(Eq. 3). The pair (pixel, neighbour) is *valid* when both labels are not IGNORE_LABEL and the
neighbour lies inside the image; its target is 1 when the labels agree, else 0 (Eq. 1).

Pixels with invalid neighbours (borders, VOC's void band, crop padding):
- A pixel's category n_k at rate r (k = 0..8, "k of the 8 neighbours agree") is the fraction of
  agreeing VALID neighbours scaled to eight and rounded half up:
  k = floor(8 * positives / valid + 1/2). With all 8 neighbours valid this is the paper's count;
  a pixel in a uniform region next to the border or the void band stays n8 instead of passing for
  a boundary pixel (which the neighbor/sqrt weightings would up-weight). A pixel with an ignored
  label or with no valid neighbour at rate r has no category and is not counted.
- The loss sums the weighted focal loss over the valid pairs only (a missing pair counts as the
  pixel's average valid one) and reduces it in one of two ways (`REDUCTIONS`):
  `mean_over_pairs` (the default) divides by the number of valid pairs; `sum_over_pairs` by the
  number of valid pairs / 8|R|, i.e. Eq. 5's per-pixel sum over rates and neighbours averaged over
  pixels. Eq. 5 does not say how pixels are reduced, and beta = 1.2 (Sec. 4.3) belongs to the
  authors' reduction. The paper's platform is TensorFlow (Sec. 4.1), where `tf.reduce_mean` of the
  B x H x W x 8|R| loss tensor gives the mean over pairs: 8|R| (= 32 at the best R) times lighter
  than the sum over pairs at the same beta. `sum_over_pairs` is this project's earlier reading.
- pi_r (the positive frequency, for the bias init) is positives / valid pairs at rate r.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.constants import IGNORE_LABEL

Rate = tuple[int, int]
WEIGHTINGS = ("none", "signal", "neighbor", "sqrt")  # the paper's Table 1
BEST_RATES = (8, (12, 24), 16)  # the paper's best set R on VOC (Table 2), in `expand_rates` notation
NEEDS_STATS = ("signal", "neighbor", "sqrt")  # weightings whose loss reads the statistics (the head's bias always does)
NUM_CATEGORIES = 9  # n0 .. n8
REDUCTIONS = ("mean_over_pairs", "sum_over_pairs")  # how the loss reduces its pairs (module docstring)
# Refinement (Sec. 3.3, 4.3): "lambda is set to 6 according to cross-validation"; g(x) = mu^x / (1 + mu^x) with
# mu = 7 (Eq. 7); Cityscapes (Sec. 4.4): "10 times iterations in affinity propagation".
PAPER_LAMBDA = 6.0
PAPER_MU = 7.0
PAPER_ITERATIONS = 10
# Eq. 6's self term lam * p * max(p) on the current iterate p^t or on the original prediction p^0 (`propagate`).
SELF_TERMS = ("current", "original")


@dataclasses.dataclass(frozen=True)
class Propagation:
    """What refining a model's prediction by its own affinity needs (Eq. 6-7): the head's rates and the settings."""

    rates: tuple[tuple[int, int], ...]
    lam: float = PAPER_LAMBDA
    mu: float = PAPER_MU
    iterations: int = PAPER_ITERATIONS
    self_term: str = "current"  # one of SELF_TERMS (`propagate`)


def expand_rates(spec) -> tuple[Rate, ...]:
    """The paper's rate notation (Table 2) as (r1, r2) pairs.

    A scalar r means (r, r); a pair (a, b) means both (a, b) and (b, a). Duplicates are dropped,
    the first occurrence's order kept, so expanding an expanded tuple returns it unchanged.
    ValueError for anything that is not a positive int or a pair of positive ints.
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        spec = (spec,)
    rates: list[Rate] = []
    for item in spec:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            pairs = [(int(item), int(item))]
        elif (isinstance(item, (tuple, list)) and len(item) == 2
              and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in item)):
            pairs = [(int(item[0]), int(item[1])), (int(item[1]), int(item[0]))]
        else:
            raise ValueError(f"affinity rate {item!r} is neither an int r nor a pair (a, b) of ints")
        for pair in pairs:
            if min(pair) <= 0:
                raise ValueError(f"affinity rate {item!r} must be positive")
            if pair not in rates:
                rates.append(pair)
    return tuple(rates)


def neighbour_offsets(rate: Rate) -> tuple[Rate, ...]:
    """The 8 offsets (s, t) of rate (r1, r2) in the channel order (row-major, centre left out)."""
    r1, r2 = rate
    return tuple((s, t) for s in (-r1, 0, r1) for t in (-r2, 0, r2) if (s, t) != (0, 0))


def _shifted(x, offset: Rate, pad: Rate, fill, xp):
    """x[:, i + s, j + t] for every (i, j) of x (B, H, W, ...), `fill` outside the image (slices, no gather)."""
    (s, t), (ph, pw) = offset, pad
    height, width = x.shape[1], x.shape[2]
    widths = [(0, 0), (ph, ph), (pw, pw)] + [(0, 0)] * (x.ndim - 3)
    padded = xp.pad(x, widths, constant_values=fill)
    return padded[:, ph + s: ph + s + height, pw + t: pw + t + width]


def _targets(labels, rates: Sequence[Rate], ignore_label: int, xp):
    rates = tuple(tuple(r) for r in rates)
    pad = (max(r[0] for r in rates), max(r[1] for r in rates))
    labels = labels.astype(xp.int32)
    own_valid = labels != ignore_label
    targets, valid = [], []
    for rate in rates:
        for offset in neighbour_offsets(rate):
            other = _shifted(labels, offset, pad, ignore_label, xp)  # outside the image: ignored
            targets.append(labels == other)
            valid.append(own_valid & (other != ignore_label))
    targets = xp.stack(targets, axis=-1)
    valid = xp.stack(valid, axis=-1)
    return xp.where(valid, targets, False).astype(xp.float32), valid


def affinity_targets(labels: jax.Array, rates: Sequence[Rate], ignore_label: int = IGNORE_LABEL):
    """Eq. 1 at the offsets of Eq. 3: labels (B, H, W) int -> (targets float32, valid bool), both (B, H, W, 8|R|).

    targets are 1.0 where both labels agree and the pair is valid, else 0.0; valid is False where
    either label is `ignore_label` or the neighbour lies outside the image.
    """
    return _targets(jnp.asarray(labels), rates, ignore_label, jnp)


def ground_truth_affinity(labels: jax.Array, rates: Sequence[Rate], ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """The oracle's affinity for `propagate` (Tables 3-4, "refine with ground truth"): targets, 0 on invalid pairs."""
    return affinity_targets(labels, rates, ignore_label)[0]


def steep_sigmoid(logits: jax.Array, mu: float = PAPER_MU) -> jax.Array:
    """Eq. 7: g(x) = mu^x / (1 + mu^x) = sigmoid(x log mu); mu = e is the ordinary sigmoid."""
    return jax.nn.sigmoid(jnp.asarray(logits, jnp.float32) * np.log(mu))


def propagate(probs: jax.Array, affinity: jax.Array, rates: Sequence[Rate], *, lam: float = PAPER_LAMBDA,
              iterations: int = 1, self_term: str = "current") -> jax.Array:
    """Affinity propagation, Eq. 6, applied `iterations` times with the same affinities.

    Sec. 3.3: "p_hat_{i,j} = N(lam p_{i,j} max(p_{i,j}) + sum_{s in S_{i,j}} a_s p_s) (6)" and "It is noted that this
    refining process can be executed with multiple times like CRF [14], propagating the original classifications
    through the connection of positive affinity." Iterated, Eq. 6 has two readings (`SELF_TERMS`):
    - "current": p^{t+1} = N(lam p^t max(p^t) + sum_s a_s p^t_s), the self term on the current iterate: p^0 enters
      the first pass only, and pixels joined by positive affinity drift towards one shared distribution as T grows
      (a product of stochastic maps); every run before the choice existed used it;
    - "original": p^{t+1} = N(lam p^0 max(p^0) + sum_s a_s p^t_s), the self term on the original prediction each
      iteration, as a CRF re-adds its unary: the normaliser is constant, the update linear, a random walk with
      restart (like DifNet's Eq. 4) converging to a fixed point that keeps lam p^0 max(p^0).
    The paper does not say which: the claims study chooses on held-out train data. N divides by the sum over classes;
    probs (B, H, W, K) summing to 1, affinity (B, H, W, 8|R|) in [0, 1] in the module's layout. A neighbour
    outside the image contributes nothing (its p_s is taken as 0). `iterations` = 0 returns probs (float32).
    """
    if self_term not in SELF_TERMS:
        raise ValueError(f"self_term must be one of {SELF_TERMS}, got {self_term!r}")
    rates = tuple(tuple(r) for r in rates)
    pad = (max(r[0] for r in rates), max(r[1] for r in rates))
    offsets = [o for rate in rates for o in neighbour_offsets(rate)]
    affinity = affinity.astype(jnp.float32)
    if affinity.shape[-1] != len(offsets):
        raise ValueError(f"affinity has {affinity.shape[-1]} channels; rates {rates} need {len(offsets)}")

    height, width = probs.shape[1:3]
    probs = probs.astype(jnp.float32)
    unary = lambda p: lam * p * p.max(axis=-1, keepdims=True)  # noqa: E731
    original = unary(probs) if self_term == "original" else None

    def step(p, _):
        total = unary(p) if original is None else original
        padded = jnp.pad(p, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))  # once; every offset slices it
        for c, (s, t) in enumerate(offsets):
            neighbour = padded[:, pad[0] + s: pad[0] + s + height, pad[1] + t: pad[1] + t + width]
            total = total + affinity[..., c: c + 1] * neighbour
        return total / total.sum(axis=-1, keepdims=True), None

    out, _ = jax.lax.scan(step, probs, None, length=iterations)
    return out


def focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Eq. 4 elementwise: -(1 - p_t)^gamma log(p_t), p = sigmoid(logits), p_t = p if y = 1 else 1 - p.

    gamma = 0 is the binary cross-entropy. Computed from the logits (log-sigmoid) for stability.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    log_pt = targets * log_p + (1.0 - targets) * log_not_p
    if gamma == 0:
        return -log_pt
    return -((1.0 - jnp.exp(log_pt)) ** gamma) * log_pt


def _categories(targets, valid, num_rates: int, xp):
    """(k (B, H, W, |R|) int32 in 0..8, has (B, H, W, |R|) bool): k = floor(8 * pos / valid + 1/2)."""
    shape = targets.shape[:-1] + (num_rates, 8)
    positives = (targets.reshape(shape) * valid.reshape(shape)).sum(axis=-1).astype(xp.int32)
    count = valid.reshape(shape).sum(axis=-1).astype(xp.int32)
    k = (16 * positives + count) // (2 * xp.maximum(count, 1))
    return k.astype(xp.int32), count > 0


def neighbour_categories(labels: jax.Array, rates: Sequence[Rate], ignore_label: int = IGNORE_LABEL):
    """Each pixel's category n_k per rate (module docstring): (k (B, H, W, |R|) int32, counted bool)."""
    targets, valid = affinity_targets(labels, rates, ignore_label)
    return _categories(targets, valid, len(rates), jnp)


class AffinityStats(NamedTuple):
    """A train set's statistics per rate (rows in the order of `rates`).

    counts: (|R|, 9) pixels in n0..n8; positives, pairs: (|R|,) positive and all valid pairs.
    """

    rates: tuple[Rate, ...]
    counts: np.ndarray
    positives: np.ndarray
    pairs: np.ndarray

    @property
    def neighbour_freq(self) -> np.ndarray:
        """freq(n_k, r): (|R|, 9), each row summing to 1 (Fig. 3)."""
        return self.counts / np.maximum(self.counts.sum(axis=1, keepdims=True), 1)

    @property
    def positive_freq(self) -> np.ndarray:
        """pi_r: (|R|,), the frequency of positive signals among the valid pairs."""
        return self.positives / np.maximum(self.pairs, 1)


def count_neighbours(labels: np.ndarray, rates: Sequence[Rate], ignore_label: int = IGNORE_LABEL) -> AffinityStats:
    """Counts of one label map (H, W) or batch (B, H, W), in numpy; add them with `merge_stats`.

    The same pairs, categories and counts as `affinity_targets` and `neighbour_categories`, one
    rate at a time and without the (B, H, W, 8|R|) stacks (a dataset's statistics are counted
    over every train image, `affinity_stats`).
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    labels = labels if labels.dtype == np.uint8 and ignore_label <= 255 else labels.astype(np.int32)
    rates = tuple(tuple(int(v) for v in r) for r in rates)
    (ph, pw), (height, width) = (max(r[0] for r in rates), max(r[1] for r in rates)), labels.shape[1:]
    padded = np.pad(labels, ((0, 0), (ph, ph), (pw, pw)), constant_values=ignore_label)
    own_valid = labels != ignore_label
    counts = np.zeros((len(rates), NUM_CATEGORIES), np.int64)
    positives, pairs = np.zeros(len(rates), np.int64), np.zeros(len(rates), np.int64)
    for i, rate in enumerate(rates):
        agree = np.zeros(labels.shape, np.int32)
        valid = np.zeros(labels.shape, np.int32)
        for s, t in neighbour_offsets(rate):
            other = padded[:, ph + s: ph + s + height, pw + t: pw + t + width]
            pair_valid = own_valid & (other != ignore_label)
            valid += pair_valid
            agree += pair_valid & (labels == other)
        k = (16 * agree + valid) // (2 * np.maximum(valid, 1))  # as `_categories`
        counts[i] = np.bincount(k[valid > 0], minlength=NUM_CATEGORIES)
        positives[i], pairs[i] = agree.sum(), valid.sum()
    return AffinityStats(rates, counts, positives, pairs)


def merge_stats(a: AffinityStats, b: AffinityStats) -> AffinityStats:
    if a.rates != b.rates:
        raise ValueError(f"cannot add statistics of rates {a.rates} and {b.rates}")
    return AffinityStats(a.rates, a.counts + b.counts, a.positives + b.positives, a.pairs + b.pairs)


def rate_key(rate: Rate) -> str:
    """A rate's key in `stats_to_json`'s dict: "r1,r2"."""
    return f"{rate[0]},{rate[1]}"


def stats_to_json(stats: AffinityStats) -> dict[str, Any]:
    """{"r1,r2": {"counts": [n0..n8], "freq": [...], "positives", "pairs", "pi"}} per rate."""
    return {
        rate_key(rate): {
            "counts": [int(c) for c in stats.counts[i]],
            "freq": [float(f) for f in stats.neighbour_freq[i]],
            "positives": int(stats.positives[i]),
            "pairs": int(stats.pairs[i]),
            "pi": float(stats.positive_freq[i]),
        }
        for i, rate in enumerate(stats.rates)
    }


def stats_from_json(per_rate: dict[str, Any], rates: Sequence[Rate], path: str = "<stats>") -> AffinityStats:
    """The rows of `rates` from `stats_to_json`'s dict; KeyError naming the missing rates and `path`."""
    rates = tuple(tuple(r) for r in rates)
    missing = [r for r in rates if rate_key(r) not in per_rate]
    if missing:
        raise KeyError(f"{path} has no statistics for rates {missing} (it has {sorted(per_rate)})")
    rows = [per_rate[rate_key(r)] for r in rates]
    return AffinityStats(rates, np.array([row["counts"] for row in rows], np.int64),
                         np.array([row["positives"] for row in rows], np.int64),
                         np.array([row["pairs"] for row in rows], np.int64))


@functools.lru_cache(maxsize=16)
def _read_json(path: str, mtime: float) -> dict[str, Any]:
    del mtime  # part of the cache key only: a rewritten file is read again
    with open(path) as f:
        return json.load(f)


def load_stats(path: str, rates: Sequence[Rate]) -> AffinityStats:
    """The statistics of `rates` from a JSON file of `stats_to_json` entries under "rates" (`affinity_stats`)."""
    return stats_from_json(_read_json(path, os.path.getmtime(path))["rates"], rates, path)


def category_weights(stats: AffinityStats, weighting: str) -> np.ndarray:
    """Per-pixel weights (|R|, 9) of n0..n8: `neighbor` freq(n8)/freq(n_k), `sqrt` its square root (Eq. 5).

    A category never seen in the train set gets the frequency of the rarest seen one (no infinite
    weights); the weight of n8 is 1. `none` and `signal` weight every category 1.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting in ("none", "signal"):
        return np.ones((len(stats.rates), NUM_CATEGORIES), np.float32)
    freq = stats.neighbour_freq
    rarest = np.where(freq > 0, freq, np.inf).min(axis=1, keepdims=True)
    freq = np.maximum(freq, np.where(np.isfinite(rarest), rarest, 1.0))
    weights = freq[:, 8:9] / freq
    return (np.sqrt(weights) if weighting == "sqrt" else weights).astype(np.float32)


def signal_weights(stats: AffinityStats) -> np.ndarray:
    """`signal` (Table 1): inverse frequency of the signal, normalised so a positive weighs 1: (|R|, 2) [neg, pos]."""
    pi = np.clip(stats.positive_freq, 1e-6, 1 - 1e-6)
    return np.stack([pi / (1 - pi), np.ones_like(pi)], axis=1).astype(np.float32)


def affinity_loss(affinity_logits: jax.Array, labels: jax.Array, rates: Sequence[Rate], *, weighting: str,
                  stats: AffinityStats | None, gamma: float = 2.0, reduction: str = "mean_over_pairs",
                  ignore_label: int = IGNORE_LABEL) -> jax.Array:
    """The affinity loss of Eq. 5 (without beta), a scalar.

    affinity_logits (B, H, W, 8|R|) pre-sigmoid, labels (B, H, W). Per pair the focal loss
    (Eq. 4, `gamma`), except `none`: the paper's baseline, plain binary cross-entropy with equal
    weights. Per pixel the weight of its category n_k (`neighbor`, `sqrt`), or per pair the
    inverse frequency of its signal (`signal`). `reduction` (module docstring): the weighted sum
    over valid pairs divided by their number (`mean_over_pairs`) or by their number / 8|R|
    (`sum_over_pairs`); 0 without a valid pair. `stats` may be None for `none`.
    """
    rates = tuple(tuple(r) for r in rates)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weighting in NEEDS_STATS and stats is None:
        raise ValueError(f"weighting {weighting!r} needs the train set's statistics (AffinityStats)")
    if stats is not None and tuple(stats.rates) != rates:
        raise ValueError(f"statistics are for rates {stats.rates}, the loss for {rates}")
    targets, valid = affinity_targets(labels, rates, ignore_label)
    per_pair = focal_loss(affinity_logits, targets, 0.0 if weighting == "none" else gamma)
    batch, height, width, _ = targets.shape
    shape = (batch, height, width, len(rates), 8)
    if weighting in ("neighbor", "sqrt"):
        k, _ = _categories(targets, valid, len(rates), jnp)
        table = jnp.asarray(category_weights(stats, weighting))  # (|R|, 9)
        pixel_weight = table[jnp.arange(len(rates)), k]  # (B, H, W, |R|): a 9-entry table per rate
        weight = jnp.broadcast_to(pixel_weight[..., None], shape)
    elif weighting == "signal":
        table = jnp.asarray(signal_weights(stats))  # (|R|, 2)
        t = targets.reshape(shape)
        weight = table[:, 0, None] * (1.0 - t) + table[:, 1, None] * t
    else:
        weight = jnp.ones(shape, jnp.float32)
    valid = valid.reshape(shape)
    total = jnp.where(valid, weight * per_pair.reshape(shape), 0.0).sum()
    mean = total / jnp.maximum(valid.sum(), 1)
    return mean if reduction == "mean_over_pairs" else mean * (8 * len(rates))
