"""Why affinity propagation with a model's own affinity diverges under iteration (project issue 21): measurements.

Dilated Affinity (papers/004, Sec. 3.3) refines the prediction p by

    p_hat = N(lam * p * max(p) + sum_{s in S} g(a_s) p_s)    (Eq. 6),    g(x) = mu^x / (1 + mu^x)    (Eq. 7),

iterated T times (`affinity.propagate` with the run's `propagation_self_term`, `affinity.steep_sigmoid`); the oracle
puts the ground-truth affinity in place of g(a_s) (`affinity.ground_truth_affinity`). `study(run)` measures, over a
split of a restored run with an affinity head (`trained_run.load_run`), on the evaluator's canvas
(`EvalOptions.from_config`, single scale) and on the pixels the evaluation counts (label not 255):

1. Fig. 4 (`batch_measurements`' 'fig4'): the predicted affinity's accuracy per category n_k and rate, as in the
   paper's Fig. 4 (a pixel is in n_k at rate r when k of its 8 neighbours agree, `affinity.neighbour_categories`;
   its valid pairs at r are counted), with g(a) thresholded at 0.5, separately on positive and negative
   (cross-boundary) pairs, and the mean g(a) on each.
2. Eq. 6's balance ('masses'): per pixel, the mass Eq. 6 gives the pixel's own term, lam * max(p) (at most lam),
   against the neighbours' sum_s g(a_s) over the neighbours on the canvas (up to 8|R|), split into positive pairs,
   negative pairs (the leak: mass from pixels of another class) and pairs the targets leave out (a neighbour or the
   pixel in the void band or the canvas padding: never supervised, 0 in the oracle); distributions over pixels
   grouped by how many negative pairs they have (0: interior, no cross-boundary pair; 1-8; 9 or more).
3. Ablations (`ablation_affinities`): mIoU and per-class IoU at T = 0, 1, 3, 10 when one suspected cause is removed
   at a time (hard 0/1 affinity, false positives or false negatives replaced by ground truth, pairs without targets
   zeroed, both leaks removed, lam scaled to the 8|R| neighbours, mu = e), and pixel accuracy per pixel group;
   diagnostics, never settings of the project.
4. Layout: `channel_layout_mismatches` checks on a random label map, by brute force, that channel c of
   `affinity.affinity_targets` (the loss) and channel c of `affinity.propagate` address the same neighbour; and
   `layout_of_trained_head` on the trained model: the correlation of channel c's g(a) with the targets of every
   offset, whose best match per channel should be the channel's own offset.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.evaluation import metrics
from difnet_jax.evaluation.evaluator import (
    FINAL,
    EvalOptions,
    Evaluator,
    eval_batches_with_sizes,
    head_mious,
    heads_and_intermediates,
    stitch_windows,
)
from difnet_jax.models import affinity

log = logging.getLogger(__name__)

ITERATIONS = (1, 3, 10)  # the T the issue asks about (the paper's Table 4 has 1, 3, 6, 10)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Pixel groups by the number of negative (cross-boundary) valid pairs of the pixel over all rates.
GROUPS = ("interior (0 negative pairs)", "near a boundary (1-8)", "at a boundary (>= 9)")
GROUP_EDGES = (1, 9)  # group = number of edges <= negative pairs
# The ablations (`ablation_affinities`), in report order, with what each changes. Diagnostics only.
VARIANTS = {
    "own": "the model's affinity, g = Eq. 7 with mu (the project's --propagate)",
    "oracle": "ground-truth affinity, 0 on pairs without targets (the project's --propagate_oracle)",
    "own_hard": "own, thresholded: 1 where g(a) > 0.5 else 0",
    "own_no_false_pos": "own, negative pairs set to their target 0 (false positives removed)",
    "own_no_false_neg": "own, positive pairs set to their target 1 (false negatives removed)",
    "own_no_untargeted": "own, pairs without targets (void band, padding) set to 0 as in the oracle",
    "own_no_leak": "own on positive pairs only: negative pairs and pairs without targets set to 0",
    "truth_on_targeted": "ground truth on pairs with targets, own on the others (void band, padding)",
    "own_lam_scaled": "own, lam scaled to the number of neighbours N = 8 x (number of rates): lam * N / 8",
    "own_mu_e": "own, mu = e (the plain sigmoid the head was trained with)",
}


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the measurements need of a run: the head's rates, Eq. 6-7's lam and mu, and Eq. 6's self term."""

    rates: tuple[affinity.Rate, ...]
    lam: float
    mu: float
    num_classes: int
    self_term: str = "current"  # affinity.SELF_TERMS

    @property
    def offsets(self) -> tuple[affinity.Rate, ...]:
        return tuple(o for rate in self.rates for o in affinity.neighbour_offsets(rate))


# ---- 4. Layout: the loss's channel c and propagation's channel c must be the same neighbour.

def channel_layout_mismatches(rates: Sequence[affinity.Rate], height: int = 13, width: int = 17,
                              seed: int = 0) -> list[str]:
    """Channels where `affinity_targets` (the loss) and `propagate` address different neighbours, by brute force.

    On a random label map (with 255s) and random probabilities: channel c of the targets must equal, at every
    pixel (i, j), [label(i, j) == label(i + s, j + t)] on valid pairs, (s, t) = `neighbour_offsets`' c-th offset,
    and `propagate` with affinity 1 on channel c only and lam = 0 must return p(i + s, j + t) wherever that
    neighbour is on the map. Returns one message per failing channel ([] when the layouts agree).
    """
    rates = tuple(tuple(r) for r in rates)
    offsets = [o for rate in rates for o in affinity.neighbour_offsets(rate)]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (1, height, width))
    labels[rng.random(labels.shape) < 0.1] = IGNORE_LABEL
    probs = rng.random((1, height, width, 4)).astype(np.float32) + 0.1
    probs /= probs.sum(-1, keepdims=True)
    targets, valid = (np.asarray(x) for x in affinity.affinity_targets(jnp.asarray(labels), rates))
    move = jax.jit(lambda p, a: affinity.propagate(p, a, rates, lam=0.0))  # one compilation for every channel

    def first_problem(c: int, s: int, t: int) -> str | None:
        one_channel = np.zeros((1, height, width, len(offsets)), np.float32)
        one_channel[..., c] = 1.0
        moved = np.asarray(move(jnp.asarray(probs), jnp.asarray(one_channel)))
        for i in range(height):
            for j in range(width):
                ii, jj = i + s, j + t
                inside = 0 <= ii < height and 0 <= jj < width
                ok = inside and labels[0, i, j] != IGNORE_LABEL and labels[0, ii, jj] != IGNORE_LABEL
                agree = ok and labels[0, i, j] == labels[0, ii, jj]
                if bool(valid[0, i, j, c]) != ok or targets[0, i, j, c] != float(agree):
                    return f"channel {c}: affinity_targets at ({i}, {j}) is not the pair with ({ii}, {jj})"
                if inside and not np.allclose(moved[0, i, j], probs[0, ii, jj], atol=1e-6):
                    return f"channel {c}: propagate at ({i}, {j}) does not read ({ii}, {jj})"
        return None

    problems = [first_problem(c, s, t) for c, (s, t) in enumerate(offsets)]
    return [p for p in problems if p is not None]


# ---- The model's maps on the evaluator's canvas.

def model_maps(run, options: EvalOptions):
    """jit (variables, images) -> (final probabilities, affinity logits) on the canvas of `options`.

    The evaluator's arithmetic (`heads_and_intermediates`, softmax; under sliding windows the logits are stitched by
    `stitch_windows` as for --propagate), at single scale.
    """
    offsets = {"affinity_logits": tuple(o for rate in run.trainer.family.propagation(run.config.model).rates
                                        for o in affinity.neighbour_offsets(rate))}

    def outputs(variables, images):
        heads, intermediates = heads_and_intermediates(run.model, run.trainer.family, variables, images)
        return jax.nn.softmax(heads[FINAL].astype(jnp.float32), axis=-1), {
            "affinity_logits": intermediates["affinity_logits"].astype(jnp.float32)}

    def network(variables, images):
        if options.mode == "sliding":
            probs, maps = stitch_windows(lambda x: outputs(variables, x), images, window=options.window,
                                         stride=options.stride, pair_offsets=offsets)
        else:
            probs, maps = outputs(variables, images)
        return probs, maps["affinity_logits"]

    return jax.jit(network)


# ---- 3. Ablations.

def ablation_affinities(logits: jax.Array, labels: jax.Array, setting: Setting) -> dict[str, tuple[jax.Array, float]]:
    """{variant: (affinity (B, H, W, 8|R|) in [0, 1], lam)} of `VARIANTS`: each removes one suspected cause."""
    g = affinity.steep_sigmoid(logits, setting.mu)
    targets, valid = affinity.affinity_targets(labels, setting.rates)
    negative, positive = valid & (targets == 0), valid & (targets == 1)
    return {
        "own": (g, setting.lam),
        "oracle": (targets, setting.lam),
        "own_hard": ((g > 0.5).astype(jnp.float32), setting.lam),
        "own_no_false_pos": (jnp.where(negative, 0.0, g), setting.lam),
        "own_no_false_neg": (jnp.where(positive, 1.0, g), setting.lam),
        "own_no_untargeted": (jnp.where(valid, g, 0.0), setting.lam),
        "own_no_leak": (jnp.where(positive, g, 0.0), setting.lam),
        "truth_on_targeted": (jnp.where(valid, targets, g), setting.lam),
        "own_lam_scaled": (g, setting.lam * 8 * len(setting.rates) / 8),
        "own_mu_e": (affinity.steep_sigmoid(logits, math.e), setting.lam),
    }


def propagated(probs: jax.Array, aff: jax.Array, rates, lam: float, iterations: Sequence[int],
               self_term: str = "current") -> list[jax.Array]:
    """`affinity.propagate` at each T of `iterations` (increasing), continuing from the previous T; under the
    "original" self term (which re-adds probs every iteration) each T starts from probs."""
    if self_term == "original":
        return [affinity.propagate(probs, aff, rates, lam=lam, iterations=t, self_term=self_term) for t in iterations]
    out, done, current = [], 0, probs
    for t in iterations:
        current = affinity.propagate(current, aff, rates, lam=lam, iterations=t - done) if t > done else current
        out.append(current)
        done = t
    return out


# ---- One batch: everything as sums (and per-pixel values for the quantiles).

def _group_of(negatives: jax.Array) -> jax.Array:
    return sum((negatives >= edge).astype(jnp.int32) for edge in GROUP_EDGES)


def batch_measurements(probs: jax.Array, logits: jax.Array, labels: jax.Array, setting: Setting,
                       iterations: Sequence[int] = ITERATIONS, inside: jax.Array | None = None) -> dict[str, Any]:
    """The study's sums over one batch (jit-able; `setting` and `iterations` static).

    probs (B, H, W, K), logits (B, H, W, 8|R|) pre-sigmoid, labels (B, H, W) with 255 where not evaluated;
    `inside` (B, H, W) bool marks each image's own pixels on the canvas (None: all of it), so that the pairs without
    targets are split into those to the canvas padding and those to 255s of the image (the void band).
    """
    rates, num_rates = setting.rates, len(setting.rates)
    batch, height, width, _ = logits.shape
    g = affinity.steep_sigmoid(logits, setting.mu)
    targets, valid = affinity.affinity_targets(labels, rates)
    category, counted = affinity.neighbour_categories(labels, rates)  # (B, H, W, |R|)
    evaluated = labels != IGNORE_LABEL
    positive = (valid & (targets == 1)).astype(jnp.float32)
    negative = (valid & (targets == 0)).astype(jnp.float32)
    hard = (g > 0.5).astype(jnp.float32)

    # 1. Fig. 4: per (rate, n_k), the pairs of the pixels in n_k at that rate.
    per_rate = lambda x: x.reshape(batch, height, width, num_rates, 8)  # noqa: E731
    in_k = jax.nn.one_hot(category, affinity.NUM_CATEGORIES) * counted[..., None]  # (B, H, W, |R|, 9)
    by_k = lambda x: jnp.einsum("bhwrk,bhwrn->rk", in_k, per_rate(x))  # noqa: E731
    fig4 = {
        "positive_pairs": by_k(positive), "positive_correct": by_k(positive * hard), "positive_g": by_k(positive * g),
        "negative_pairs": by_k(negative), "negative_correct": by_k(negative * (1 - hard)),
        "negative_g": by_k(negative * g),
    }

    # 2. Eq. 6's masses per pixel.
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    on_canvas = jnp.stack([(rows + s >= 0) & (rows + s < height) & (cols + t >= 0) & (cols + t < width)
                           for s, t in setting.offsets], -1).astype(jnp.float32)  # (H, W, 8|R|)
    untargeted = on_canvas * (1.0 - valid.astype(jnp.float32))
    masses = {
        "own": setting.lam * probs.max(-1),
        "neighbours": (g * on_canvas).sum(-1),
        "positive": (g * positive).sum(-1),
        "negative": (g * negative).sum(-1),
        "untargeted": (g * untargeted).sum(-1),
        "oracle_neighbours": positive.sum(-1),
        "negative_pairs": negative.sum(-1),
        "untargeted_pairs": untargeted.sum(-1),
    }
    group = _group_of(masses["negative_pairs"])
    counted_untargeted = untargeted * evaluated[..., None]  # pairs of evaluated pixels to a neighbour without a label
    if inside is None:
        inside = jnp.ones(labels.shape, bool)
    padded = jnp.pad(inside, ((0, 0), (height, height), (width, width)))
    neighbour_inside = jnp.stack([padded[:, height + s: 2 * height + s, width + t: 2 * width + t]
                                  for s, t in setting.offsets], -1)
    to_padding = counted_untargeted * (1.0 - neighbour_inside.astype(jnp.float32))
    untargeted_by_rate = {"pairs": per_rate(counted_untargeted).sum((0, 1, 2, 4)),
                          "g": per_rate(counted_untargeted * g).sum((0, 1, 2, 4)),
                          "padding_pairs": per_rate(to_padding).sum((0, 1, 2, 4)),
                          "padding_g": per_rate(to_padding * g).sum((0, 1, 2, 4))}

    # 3. Ablations: confusion matrices at T = 0 and each T; pixel accuracy per group for own and oracle.
    confusions = {"T0": metrics.confusion_matrix(labels, probs.argmax(-1), setting.num_classes)}
    correct_by_group = {}
    in_group = jax.nn.one_hot(group, len(GROUPS)) * evaluated[..., None]
    class_group_pixels = jnp.einsum("bhwk,bhwg->kg", jax.nn.one_hot(labels, setting.num_classes), in_group)
    correct_by_group["T0"] = jnp.einsum("bhwg,bhw->g", in_group, (probs.argmax(-1) == labels).astype(jnp.float32))
    for variant, (aff, lam) in ablation_affinities(logits, labels, setting).items():
        for t, p in zip(iterations, propagated(probs, aff, rates, lam, iterations, setting.self_term)):
            prediction = p.argmax(-1)
            confusions[f"{variant}_T{t}"] = metrics.confusion_matrix(labels, prediction, setting.num_classes)
            if variant in ("own", "oracle"):
                correct_by_group[f"{variant}_T{t}"] = jnp.einsum("bhwg,bhw->g", in_group,
                                                                 (prediction == labels).astype(jnp.float32))

    # 4. The trained head's layout: channel c's g(a) against the targets of every offset o, over o's valid pairs.
    valid_f = valid.astype(jnp.float32)
    layout = {"g": jnp.einsum("bhwc,bhwo->co", g, valid_f), "gg": jnp.einsum("bhwc,bhwo->co", g * g, valid_f),
              "gt": jnp.einsum("bhwc,bhwo->co", g, positive), "t": positive.sum((0, 1, 2)),
              "n": valid_f.sum((0, 1, 2))}
    return {"fig4": fig4, "untargeted_by_rate": untargeted_by_rate, "masses": masses, "group": group,
            "evaluated": evaluated, "group_pixels": in_group.sum((0, 1, 2)), "class_group_pixels": class_group_pixels,
            "confusions": confusions, "correct_by_group": correct_by_group, "layout": layout}


jitted_measurements = jax.jit(batch_measurements, static_argnames=("setting", "iterations"))


# ---- The study.

def setting_of(run) -> Setting:
    """The run's affinity rates and propagation lam, mu, self term; ValueError when the run has no affinity head."""
    propagation = run.trainer.family.propagation(run.config.model)
    if propagation is None:
        raise ValueError(f"{run.config.model.name}-{run.config.model.depth} in {run.workdir!r} has no affinity head")
    return Setting(tuple(tuple(r) for r in propagation.rates), float(propagation.lam), float(propagation.mu),
                   len(run.class_names), propagation.self_term)


def _batches(data_source, options: EvalOptions, batch_size: int, max_images: int | None
             ) -> Iterator[dict[str, np.ndarray]]:
    done = 0
    for batch in eval_batches_with_sizes(data_source, batch_size=batch_size, options=options):
        if max_images is not None and done >= max_images:
            return
        done += batch["count"]
        yield batch


def evaluator_mious(run, *, split: str | None = None, batch_size: int | None = None, data_source=None
                    ) -> dict[str, float]:
    """The project's own --propagate / --propagate_oracle heads at `ITERATIONS` (`report.propagation_refinements`
    through the `Evaluator`), and the model's mIoU as 'T0': the numbers `study` must reproduce."""
    from difnet_jax.data import pipeline
    from difnet_jax.evaluation.report import propagation_refinements

    config = run.config
    split = split or config.data.eval_split
    if data_source is None:
        data_source = pipeline.source(config.data.name, split, config.data.data_dir)
    evaluator = Evaluator(run.model, run.trainer.family, len(run.class_names), EvalOptions.from_config(config.data),
                          data_sharding=run.trainer.data_sharding,
                          refinements=propagation_refinements(config.model, ITERATIONS, ITERATIONS))
    result = evaluator.evaluate(run.variables, data_source, batch_size=batch_size or config.train.eval_batch_size,
                                log_progress=False)
    return {"T0": metrics.summarize(result.confusion)["miou"], **head_mious(result)}


def _wide(x) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64)


def _add(total, new):
    """Sums of batch measurements on the host, in float64 / int64."""
    new = jax.tree.map(_wide, new)
    return new if total is None else jax.tree.map(lambda a, b: a + b, total, new)


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), **{f"q{int(q * 100)}": float("nan") for q in QUANTILES}}
    return {"mean": float(values.mean()), **{f"q{int(q * 100):02d}": float(np.quantile(values, q))
                                              for q in QUANTILES}}


PIXEL_VALUES = ("own", "neighbours", "positive", "negative", "untargeted", "oracle_neighbours", "group", "label")


def measure(batches: Iterable[tuple[Any, Any, Any, int]], setting: Setting, class_names: Sequence[str]
            ) -> dict[str, Any]:
    """The measurements over (probabilities, affinity logits, labels, images in the batch[, inside]) batches.

    `inside` (B, H, W) bool: each image's own pixels on the canvas (`batch_measurements`).
    Labels are 255 where a pixel is not evaluated (void, padding, filler images). Returns `summarize`'s dict
    plus 'images', 'setting' and 'code_layout_mismatches'.
    """
    sums, values, images = None, {key: [] for key in PIXEL_VALUES}, 0
    for index, batch in enumerate(batches):
        probs, logits, labels, count = batch[:4]
        inside = jnp.asarray(batch[4]) if len(batch) > 4 else None
        measured = jax.device_get(jitted_measurements(probs, logits, jnp.asarray(labels), setting, inside=inside))
        evaluated = np.asarray(measured["evaluated"])
        per_pixel = {**measured["masses"], "group": measured["group"], "label": labels}
        for key in PIXEL_VALUES:
            values[key].append(np.asarray(per_pixel[key])[evaluated])
        sums = _add(sums, {k: measured[k] for k in ("fig4", "untargeted_by_rate", "group_pixels",
                                                    "class_group_pixels", "confusions", "correct_by_group",
                                                    "layout")})
        images += int(count)
        log.info("affinity propagation study: %d images (batch %d)", images, index + 1)
    if sums is None:
        raise ValueError("no batch to measure")
    return {
        "images": images,
        "setting": {"rates": [list(r) for r in setting.rates], "lam": setting.lam, "mu": setting.mu,
                    "self_term": setting.self_term, "neighbours": 8 * len(setting.rates)},
        "class_names": list(class_names),
        **summarize(sums, {key: np.concatenate(v) for key, v in values.items()}, setting, class_names),
        "code_layout_mismatches": channel_layout_mismatches(setting.rates),
    }


def study(run, *, split: str | None = None, batch_size: int | None = None, max_images: int | None = None,
          data_source=None) -> dict[str, Any]:
    """All four measurements (module docstring) for a restored run with an affinity head, as plain data.

    On the evaluator's canvas and batches (`EvalOptions.from_config(config.data)`, `eval_batches_with_sizes`) of
    `split` (default config.data.eval_split); `max_images` stops after the batch that reaches it. Returns
    `measure`'s dict with the run's 'workdir', 'step', 'split' and the canvas mode in 'setting'.
    """
    from difnet_jax.data import pipeline  # here: the pure measurements import without the data stack
    from difnet_jax.evaluation.report import valid_mask

    setting = setting_of(run)
    config = run.config
    split = split or config.data.eval_split
    batch_size = batch_size or config.train.eval_batch_size
    if data_source is None:
        data_source = pipeline.source(config.data.name, split, config.data.data_dir)
    options = EvalOptions.from_config(config.data)
    network = model_maps(run, options)

    def batches():
        for batch in _batches(data_source, options, batch_size, max_images):
            probs, logits = network(run.variables, jnp.asarray(batch["image"]))
            yield probs, logits, batch["label"], batch["count"], valid_mask(batch["size"], *batch["label"].shape[1:])

    result = measure(batches(), setting, run.class_names)
    result["setting"]["canvas"] = options.mode
    return {"workdir": run.workdir, "step": run.step, "split": split, **result}


def _ratio(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.where(b > 0, a / np.maximum(b, 1e-12), np.nan)


def _floats(x) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, np.float64).ravel()]


def _same_direction(a: affinity.Rate, b: affinity.Rate) -> bool:
    return bool(np.sign(a[0]) == np.sign(b[0]) and np.sign(a[1]) == np.sign(b[1]))


def layout_of_trained_head(sums: dict[str, np.ndarray], setting: Setting) -> dict[str, Any]:
    """Which offset's targets each predicted channel matches best: Pearson correlation of g(a) with the targets.

    `sums` (`batch_measurements`' 'layout'): per (channel c, offset o) the sums of g_c, g_c^2 and g_c * t_o over
    o's valid pairs, and per offset the number of valid pairs n and of positives t. A permutation of the head's
    channels against the loss's would show as channels whose best match among the 8 offsets of their own rate is
    another offset (and offsets best predicted by another channel). Across rates, an offset in the same direction
    at another distance may match better (the targets of (0, 6) and (0, 8) are strongly correlated).
    """
    n, t = sums["n"][None, :], sums["t"][None, :]
    covariance = n * sums["gt"] - sums["g"] * t
    spread = (n * sums["gg"] - sums["g"] ** 2) * (n * t - t ** 2)
    correlation = np.nan_to_num(_ratio(covariance, np.sqrt(np.maximum(spread, 0.0))), nan=-1.0)
    offsets = setting.offsets
    within_rate_best, channel_for_offset, overall_best = [], [], []
    for c in range(len(offsets)):
        first = 8 * (c // 8)
        within_rate_best.append(first + int(correlation[c, first: first + 8].argmax()))
        channel_for_offset.append(first + int(correlation[first: first + 8, c].argmax()))
        overall_best.append(int(correlation[c].argmax()))
    return {
        "offsets": [list(o) for o in offsets],
        "correlation": [_floats(row) for row in correlation],
        "own_offset_correlation": _floats(np.diag(correlation)),
        "best_within_rate": within_rate_best,  # per channel: the offset of its rate it matches best
        "best_channel_within_rate": channel_for_offset,  # per offset: the channel of its rate that matches it best
        "best_overall": overall_best,
        "channels": len(offsets),
        "own_offset_best_within_rate": sum(b == c for c, b in enumerate(within_rate_best)),
        "own_channel_best_within_rate": sum(b == c for c, b in enumerate(channel_for_offset)),
        "best_overall_same_direction": sum(_same_direction(offsets[c], offsets[b])
                                           for c, b in enumerate(overall_best)),
    }


def _pair_summary(sums: dict[str, Any], setting: Setting) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Fig. 4 per rate and neighbour, the same per rate and over all rates) from the summed pair counts."""
    fig4 = {key: np.asarray(v, np.float64) for key, v in sums["fig4"].items()}  # (|R|, 9) each
    pairs = fig4["positive_pairs"] + fig4["negative_pairs"]
    rate_names = [f"{r1},{r2}" for r1, r2 in setting.rates]
    fig4_out = {
        "rates": rate_names,
        "pairs": [[int(v) for v in row] for row in pairs],
        "accuracy": [_floats(r) for r in _ratio(fig4["positive_correct"] + fig4["negative_correct"], pairs)],
        "positive_accuracy": [_floats(r) for r in _ratio(fig4["positive_correct"], fig4["positive_pairs"])],
        "negative_accuracy": [_floats(r) for r in _ratio(fig4["negative_correct"], fig4["negative_pairs"])],
        "positive_mean_g": [_floats(r) for r in _ratio(fig4["positive_g"], fig4["positive_pairs"])],
        "negative_mean_g": [_floats(r) for r in _ratio(fig4["negative_g"], fig4["negative_pairs"])],
    }
    totals = {key: v.sum(1) for key, v in fig4.items()}
    untargeted = {key: np.asarray(v, np.float64) for key, v in sums["untargeted_by_rate"].items()}
    per_rate = {
        "rates": rate_names,
        "positive_pairs": _floats(totals["positive_pairs"]), "negative_pairs": _floats(totals["negative_pairs"]),
        "untargeted_pairs": _floats(untargeted["pairs"]),
        "positive_accuracy": _floats(_ratio(totals["positive_correct"], totals["positive_pairs"])),
        "negative_accuracy": _floats(_ratio(totals["negative_correct"], totals["negative_pairs"])),
        "positive_mean_g": _floats(_ratio(totals["positive_g"], totals["positive_pairs"])),
        "negative_mean_g": _floats(_ratio(totals["negative_g"], totals["negative_pairs"])),
        "untargeted_mean_g": _floats(_ratio(untargeted["g"], untargeted["pairs"])),
        "padding_pairs": _floats(untargeted["padding_pairs"]),
        "padding_mean_g": _floats(_ratio(untargeted["padding_g"], untargeted["padding_pairs"])),
        "void_mean_g": _floats(_ratio(untargeted["g"] - untargeted["padding_g"],
                                      untargeted["pairs"] - untargeted["padding_pairs"])),
    }
    all_rates = {key: float(v.sum()) for key, v in totals.items()}
    per_rate["all"] = {
        "positive_pairs": all_rates["positive_pairs"], "negative_pairs": all_rates["negative_pairs"],
        "untargeted_pairs": float(untargeted["pairs"].sum()),
        "positive_accuracy": all_rates["positive_correct"] / max(all_rates["positive_pairs"], 1),
        "negative_accuracy": all_rates["negative_correct"] / max(all_rates["negative_pairs"], 1),
        "positive_mean_g": all_rates["positive_g"] / max(all_rates["positive_pairs"], 1),
        "negative_mean_g": all_rates["negative_g"] / max(all_rates["negative_pairs"], 1),
        "untargeted_mean_g": float(untargeted["g"].sum()) / max(float(untargeted["pairs"].sum()), 1),
        "padding_pairs": float(untargeted["padding_pairs"].sum()),
        "padding_mean_g": float(untargeted["padding_g"].sum()) / max(float(untargeted["padding_pairs"].sum()), 1),
        "void_mean_g": float((untargeted["g"] - untargeted["padding_g"]).sum())
        / max(float((untargeted["pairs"] - untargeted["padding_pairs"]).sum()), 1),
    }
    return fig4_out, per_rate


def _balance(values: dict[str, np.ndarray]) -> dict[str, Any]:
    """The own / neighbour / leak masses of every evaluated pixel's propagation, over all pixels and per group."""
    group = values["group"]
    balance = {}
    for name, selected in [("all pixels", np.ones_like(group, bool))] + [(g, group == i) for i, g in
                                                                          enumerate(GROUPS)]:
        own, neighbours = values["own"][selected], values["neighbours"][selected]
        total = own + neighbours
        leak, untargeted_mass = values["negative"][selected], values["untargeted"][selected]
        balance[name] = {
            "pixels": int(selected.sum()),
            "own = lam max(p)": _quantiles(own),
            "sum g (neighbours on canvas)": _quantiles(neighbours),
            "sum g, positive pairs": _quantiles(values["positive"][selected]),
            "sum g, negative pairs (leak)": _quantiles(leak),
            "sum g, pairs without targets": _quantiles(untargeted_mass),
            "oracle: sum of its affinity": _quantiles(values["oracle_neighbours"][selected]),
            "neighbours / own": _quantiles(neighbours / np.maximum(own, 1e-12)),
            "leak share of the total mass": _quantiles(leak / np.maximum(total, 1e-12)),
            "without-target share of the total mass": _quantiles(untargeted_mass / np.maximum(total, 1e-12)),
            "pixels whose leak exceeds own": float((leak > own).mean()) if selected.any() else float("nan"),
            "pixels whose leak + without-target mass exceeds own": float((leak + untargeted_mass > own).mean())
            if selected.any() else float("nan"),
        }
    return balance


def summarize(sums: dict[str, Any], values: dict[str, np.ndarray], setting: Setting,
              class_names: Sequence[str]) -> dict[str, Any]:
    """The study's plain-data result from the summed batch measurements and the per-pixel values."""
    fig4_out, per_rate = _pair_summary(sums, setting)  # 1. Pairs (Fig. 4)
    balance = _balance(values)  # 2. Balance, over all evaluated pixels and per group.

    # 3. Ablations.
    confusions = {key: np.asarray(v, np.int64) for key, v in sums["confusions"].items()}
    miou = {key: metrics.summarize(v)["miou"] for key, v in confusions.items()}
    ablations = {variant: {"0": miou["T0"], **{str(t): miou[f"{variant}_T{t}"] for t in ITERATIONS}}
                 for variant in VARIANTS}
    pixel_accuracy = {variant: {"0": metrics.summarize(confusions["T0"])["pixel_accuracy"],
                                **{str(t): metrics.summarize(confusions[f"{variant}_T{t}"])["pixel_accuracy"]
                                   for t in ITERATIONS}} for variant in VARIANTS}
    iou = {key: metrics.iou_per_class(v) for key, v in confusions.items()}
    first, last = ITERATIONS[0], ITERATIONS[-1]
    class_group = np.asarray(sums["class_group_pixels"], np.float64)  # (K, groups)
    boundary_share = _ratio(class_group[:, 1:].sum(1), class_group.sum(1))
    class_iou = {}
    for c, name in enumerate(class_names):
        mine = values["label"] == c
        cross = (values["negative"][mine] + values["untargeted"][mine]) / np.maximum(
            values["own"][mine] + values["neighbours"][mine], 1e-12)
        class_iou[name] = {"pixels": int(class_group[c].sum()), "boundary_share": float(boundary_share[c]),
                           "cross_share": float(cross.mean()) if cross.size else float("nan"),
                           "T0": float(iou["T0"][c]),
                           **{f"{v}_T{t}": float(iou[f"{v}_T{t}"][c]) for v in ("own", "oracle") for t in ITERATIONS}}
    change = np.array([class_iou[n][f"own_T{last}"] - class_iou[n][f"own_T{first}"] for n in class_names])
    cross_share = np.array([class_iou[n]["cross_share"] for n in class_names])

    def pearson(x):
        usable = np.isfinite(change) & np.isfinite(x)
        return float(np.corrcoef(x[usable], change[usable])[0, 1]) if usable.sum() > 2 else None

    group_pixels = np.asarray(sums["group_pixels"], np.float64)
    group_accuracy = {key: dict(zip(GROUPS, _floats(_ratio(v, group_pixels)), strict=True))
                      for key, v in sums["correct_by_group"].items()}
    # Where the own-affinity propagation moves pixels: the largest growths of confusions from T0 to the last T.
    growth = confusions[f"own_T{last}"] - confusions["T0"]
    np.fill_diagonal(growth, 0)
    order = np.argsort(growth.ravel())[::-1][:10]
    k = len(class_names)
    flows = [{"truth": class_names[i // k], "predicted": class_names[i % k], "pixels_added": int(growth.ravel()[i])}
             for i in order if growth.ravel()[i] > 0]
    into = growth.sum(0)
    flows_into = {class_names[c]: int(into[c]) for c in np.argsort(into)[::-1][:3]}

    layout = {key: np.asarray(v, np.float64) for key, v in sums["layout"].items()}
    return {
        "fig4": fig4_out, "per_rate": per_rate, "balance": balance, "ablations": ablations,
        "pixel_accuracy": pixel_accuracy, "class_iou": class_iou,
        "boundary_share_vs_iou_change": {"from": first, "to": last, "pearson": pearson(boundary_share)},
        "cross_share_vs_iou_change": {"from": first, "to": last, "pearson": pearson(cross_share)},
        "group_pixels": dict(zip(GROUPS, [int(v) for v in group_pixels], strict=True)),
        "group_accuracy": group_accuracy, "own_flows": flows, "own_flows_into": flows_into,
        "layout": layout_of_trained_head(layout, setting),
    }


# ---- The report.

def _pct(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def _num(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def findings(result: dict[str, Any]) -> list[str]:
    """Plain statements read off the measurements (each with its numbers), for the report's top."""
    ab, last = result["ablations"], str(ITERATIONS[-1])
    lines = [
        f"Own affinity: mIoU {_pct(ab['own']['0'])} at T = 0 -> {_pct(ab['own'][last])} at T = {last}; "
        f"oracle -> {_pct(ab['oracle'][last])}.",
        f"Both leak paths removed (own affinity on positive pairs only): T = {last} {_pct(ab['own_no_leak'][last])}; "
        f"false positives removed alone: {_pct(ab['own_no_false_pos'][last])}; pairs without targets zeroed alone: "
        f"{_pct(ab['own_no_untargeted'][last])}; ground truth on every pair with a target, own on the rest: "
        f"{_pct(ab['truth_on_targeted'][last])}; false negatives removed: {_pct(ab['own_no_false_neg'][last])}.",
        f"Other suspects at T = {last}: thresholded {_pct(ab['own_hard'][last])}, lam scaled "
        f"{_pct(ab['own_lam_scaled'][last])}, mu = e {_pct(ab['own_mu_e'][last])}.",
    ]
    pr = result["per_rate"]["all"]
    lines.append(f"Pair accuracy (g > 0.5) over all rates: positive pairs {_pct(pr['positive_accuracy'])} %, negative "
                 f"pairs {_pct(pr['negative_accuracy'])} %; mean g: positive {_num(pr['positive_mean_g'])}, negative "
                 f"{_num(pr['negative_mean_g'])}, pairs without targets {_num(pr['untargeted_mean_g'])} "
                 f"({_pct(pr['padding_pairs'] / max(pr['untargeted_pairs'], 1))} % of these go to the canvas "
                 "padding, the rest to 255s in the image).")
    edge = result["balance"][GROUPS[2]]
    lines.append(f"Pixels {GROUPS[2]}: median own mass {_num(edge['own = lam max(p)']['q50'], 2)}, leak "
                 f"{_num(edge['sum g, negative pairs (leak)']['q50'], 2)} + without-target "
                 f"{_num(edge['sum g, pairs without targets']['q50'], 2)}, positive "
                 f"{_num(edge['sum g, positive pairs']['q50'], 2)}; leak + without-target exceeds own at "
                 f"{_pct(edge['pixels whose leak + without-target mass exceeds own'])} % of them.")
    into = result["own_flows_into"]
    if into:
        name, pixels = next(iter(into.items()))
        lines.append(f"Pixels gained by the largest receiving class from T = 0 to T = {last} (own affinity): "
                     f"{name} +{pixels}.")
    lines.append(f"Per class, IoU change T = {ITERATIONS[0]} -> {last} (own) against the share of the class's pixels "
                 f"with a negative pair: Pearson r = {_num(result['boundary_share_vs_iou_change']['pearson'], 2)}; "
                 "against the mean part of a pixel's mass that comes through negative pairs and pairs without "
                 f"targets: r = {_num(result['cross_share_vs_iou_change']['pearson'], 2)}.")
    lay = result["layout"]
    lines.append(f"Layout: brute-force check of affinity_targets against propagate: "
                 f"{'no mismatch' if not result['code_layout_mismatches'] else result['code_layout_mismatches']}; "
                 f"trained head: {lay['own_offset_best_within_rate']}/{lay['channels']} channels match their own "
                 f"offset best within their rate, {lay['own_channel_best_within_rate']}/{lay['channels']} offsets are "
                 f"matched best by their own channel.")
    return lines


def _ablation_lines(result: dict[str, Any], its: list[str]) -> list[str]:
    """Section 3: mIoU with each suspected cause removed, accuracy per pixel group, the largest flows."""
    out = []
    out += ["## 3. mIoU when one suspected cause is removed", ""]
    out += _table(["variant", "what it changes", "T = 0", *[f"T = {t}" for t in its]],
                  [[f"`{v}`", VARIANTS[v], *[_pct(result["ablations"][v][t]) for t in ["0", *its]]]
                   for v in VARIANTS], right_from=2) + [""]
    out += ["Pixel accuracy (%) per pixel group (groups by the number of negative valid pairs of the pixel over all "
            "rates):", ""]
    acc = result["group_accuracy"]
    heads = ["T0", *[f"own_T{t}" for t in its], *[f"oracle_T{t}" for t in its]]
    out += _table(["group", "pixels", "T = 0", *[f"own T = {t}" for t in its], *[f"oracle T = {t}" for t in its]],
                  [[g, result["group_pixels"][g], *[_pct(acc[h][g]) for h in heads]] for g in GROUPS]) + [""]
    flows = result["own_flows"]
    if flows:
        out += [f"Largest growths of confusion from T = 0 to T = {its[-1]} (own affinity), pixels:", ""]
        out += _table(["truth", "predicted", "pixels added"],
                      [[f["truth"], f["predicted"], f["pixels_added"]] for f in flows], right_from=2) + [""]
    return out


def _pair_lines(result: dict[str, Any]) -> list[str]:
    """Section 1: the predicted affinity's accuracy per rate and per category n_k (Fig. 4)."""
    out = []
    out += ["## 1. The predicted affinity's accuracy (Fig. 4)", "",
            "Per rate: pairs of the evaluated pixels, accuracy of g(a) > 0.5, mean g(a) = Eq. 7 with mu.", ""]
    pr = result["per_rate"]
    rows = [[rate, _num(pr["positive_pairs"][i], 0), _num(pr["negative_pairs"][i], 0),
             _num(pr["untargeted_pairs"][i], 0), _num(pr["padding_pairs"][i], 0), _pct(pr["positive_accuracy"][i]),
             _pct(pr["negative_accuracy"][i]), _num(pr["positive_mean_g"][i]), _num(pr["negative_mean_g"][i]),
             _num(pr["void_mean_g"][i]), _num(pr["padding_mean_g"][i])]
            for i, rate in enumerate(pr["rates"])]
    a = pr["all"]
    rows.append(["all", _num(a["positive_pairs"], 0), _num(a["negative_pairs"], 0), _num(a["untargeted_pairs"], 0),
                 _num(a["padding_pairs"], 0), _pct(a["positive_accuracy"]), _pct(a["negative_accuracy"]),
                 _num(a["positive_mean_g"]), _num(a["negative_mean_g"]), _num(a["void_mean_g"]),
                 _num(a["padding_mean_g"])])
    out += _table(["rate", "positive pairs", "negative pairs", "pairs without targets", "of which to the padding",
                   "positive acc. (%)", "negative acc. (%)", "mean g, positive", "mean g, negative",
                   "mean g, to 255s in the image", "mean g, to the padding"], rows) + [""]
    fig4 = result["fig4"]
    k_header = [f"n{k}" for k in range(9)]
    for key, title, fmt in (("pairs", "Valid pairs of the pixels in n_k", lambda v: str(v)),
                            ("accuracy", "Accuracy (%) on all pairs (Fig. 4)", _pct),
                            ("negative_accuracy", "Accuracy (%) on negative (cross-boundary) pairs", _pct),
                            ("negative_mean_g", "Mean g(a) on negative pairs (what leaks)", _num),
                            ("positive_accuracy", "Accuracy (%) on positive pairs", _pct),
                            ("positive_mean_g", "Mean g(a) on positive pairs", _num)):
        out += [f"{title}, per rate (rows) and category n_k (columns):", ""]
        out += _table(["rate", *k_header], [[rate, *[fmt(v) for v in fig4[key][i]]]
                                            for i, rate in enumerate(fig4["rates"])]) + [""]
    return out


def _balance_lines(result: dict[str, Any], setting: dict[str, Any]) -> list[str]:
    """Section 2: Eq. 6's balance, own term against the neighbours' mass, per pixel group."""
    out = []
    out += ["## 2. The balance of Eq. 6", "",
            f"Per evaluated pixel: the own term's mass lam * max(p) (at most {setting['lam']:g}) against the "
            f"neighbours' sum of g(a_s) over the neighbours on the canvas (at most {setting['neighbours']}), split "
            "into positive pairs, negative pairs (the leak) and pairs without targets; mean and quantiles over "
            "pixels.", ""]
    for group, stats in result["balance"].items():
        out += [f"**{group}** ({stats['pixels']} pixels; leak > own at "
                f"{_pct(stats['pixels whose leak exceeds own'])} %, leak + without-target > own at "
                f"{_pct(stats['pixels whose leak + without-target mass exceeds own'])} %)", ""]
        rows = [[name, *[_num(v, 3) for v in q.values()]] for name, q in stats.items() if isinstance(q, dict)]
        first = next(q for q in stats.values() if isinstance(q, dict))
        out += _table(["quantity", *first.keys()], rows) + [""]
    return out


def _class_lines(result: dict[str, Any], its: list[str]) -> list[str]:
    """Per class: boundary and cross shares against the IoU change."""
    out = []
    t_first, t_last = its[0], its[-1]
    out += ["## Per class: does the divergence come from small, thin classes?", "",
            "Boundary share: the fraction of the class's pixels with at least one negative pair at the rates "
            "(thin structures: close to 1). Cross share: the mean over the class's pixels of the part of Eq. 6's "
            "total mass that comes through negative pairs and pairs without targets (the oracle's is 0). Pearson r "
            f"with the IoU change own T = {t_first} -> {t_last}: boundary share "
            f"{_num(result['boundary_share_vs_iou_change']['pearson'], 2)}, cross share "
            f"{_num(result['cross_share_vs_iou_change']['pearson'], 2)}.", ""]
    rows = []
    for name, c in result["class_iou"].items():
        change = c[f"own_T{t_last}"] - c[f"own_T{t_first}"]
        rows.append([name, c["pixels"], _pct(c["boundary_share"]), _pct(c["cross_share"]), _pct(c["T0"]),
                     *[_pct(c[f"own_T{t}"]) for t in its], _pct(change), _pct(c[f"oracle_T{t_last}"])])
    out += _table(["class", "pixels", "boundary share (%)", "cross share (%)", "IoU T = 0",
                   *[f"own T = {t}" for t in its],
                   f"own T{t_last} - T{t_first}", f"oracle T = {t_last}"], rows) + [""]
    return out


def _layout_lines(result: dict[str, Any]) -> list[str]:
    """Section 4: the channel layout, in code and in the trained head."""
    out = []
    lay = result["layout"]
    out += ["## 4. Channel layout", "",
            "Code: `channel_layout_mismatches` checks by brute force, on a random label map at these rates, that "
            "channel c of `affinity_targets` (the loss's targets) and channel c of `propagate` address the same "
            f"neighbour `neighbour_offsets` gives: {len(result['code_layout_mismatches'])} mismatching channels.", "",
            "Trained head: Pearson correlation of channel c's g(a) with the targets of each offset (over that "
            "offset's valid pairs); a permutation between the head and the loss would put the best match off the "
            "channel's own offset.", ""]
    rows = []
    for c, offset in enumerate(lay["offsets"]):
        best = lay["best_within_rate"][c]
        rows.append([c, tuple(offset), _num(lay["own_offset_correlation"][c]), tuple(lay["offsets"][best]),
                     _num(lay["correlation"][c][best]), tuple(lay["offsets"][lay["best_overall"][c]]),
                     tuple(lay["offsets"][lay["best_channel_within_rate"][c]])])
    out += _table(["channel", "offset (s, t)", "r with own offset", "best offset of its rate", "its r",
                   "best offset overall", "channel of its rate best for this offset"], rows) + [""]
    out += [f"{lay['own_offset_best_within_rate']}/{lay['channels']} channels match their own offset best among "
            f"their rate's 8; {lay['own_channel_best_within_rate']}/{lay['channels']} offsets are predicted best by "
            f"their own channel; the best match over all offsets is in the channel's own direction for "
            f"{lay['best_overall_same_direction']}/{lay['channels']}.", ""]
    return out


def markdown_report(result: dict[str, Any], command: str = "", evaluator: dict[str, float] | None = None) -> str:
    """The study as Markdown: findings, ablations, pixel groups, Fig. 4, Eq. 6's balance, classes, layout."""
    setting = result["setting"]
    its = [str(t) for t in ITERATIONS]
    out = ["# Affinity propagation with the model's own affinity: why it diverges (issue 21)", ""]
    if command:
        out += ["```", command, "```", ""]
    out += [f"Run `{result.get('workdir', '?')}`, step {result.get('step', '?')}, split `{result.get('split', '?')}` "
            f"({result['images']} images, {setting.get('canvas', '?')} canvas). Rates R = "
            f"{[tuple(r) for r in setting['rates']]} ({setting['neighbours']} "
            f"neighbours), lam = {setting['lam']:g}, mu = {setting['mu']:g}, self term "
            f"{setting.get('self_term', 'current')!r} (Dilated Affinity Eq. 6-7). "
            "Every variant below is a diagnostic, not a setting of the project. Pairs *without targets*: the pixel "
            "or its neighbour is 255 (the void band along every boundary, the canvas padding); the loss never "
            "sees them and the oracle gives them 0.", "", "## Findings", ""]
    out += [f"- {line}" for line in findings(result)] + [""]
    if evaluator:
        out += ["## Cross-check with the project's evaluator (`experiments.evaluate --propagate --propagate_oracle`)",
                ""]
        rows = [["evaluator", _pct(evaluator.get("T0")), *[_pct(evaluator.get(f"propagate_T{t}")) for t in its],
                 *[_pct(evaluator.get(f"oracle_T{t}")) for t in its]],
                ["this study", _pct(result["ablations"]["own"]["0"]),
                 *[_pct(result["ablations"]["own"][t]) for t in its],
                 *[_pct(result["ablations"]["oracle"][t]) for t in its]]]
        out += _table(["mIoU (%)", "T = 0", *[f"own T = {t}" for t in its], *[f"oracle T = {t}" for t in its]],
                      rows) + [""]
    out += _ablation_lines(result, its) + _pair_lines(result) + _balance_lines(result, setting)
    out += _class_lines(result, its) + _layout_lines(result)
    return "\n".join(out)
