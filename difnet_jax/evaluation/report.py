"""The evaluation reports, the refinements and the dense CRF an evaluation adds, and the CRF's timing.

`difnet_jax.evaluate_run.evaluate_workdir` restores a checkpoint and runs the same `evaluator.Evaluator` as the
training loop (canvas modes, multi-scale + flip, extra heads and refinements are options
of that one path), optionally followed by the dense CRF (`difnet_jax.evaluation.crf`) on the final
probabilities, on the image pixels only. Reports: JSON and Markdown with mIoU, pixel
accuracy, per-class IoU, each head's mIoU and the confusion matrix, written to
WORKDIR (or `output_dir`)/eval_<split>_step<N>[_whole|_sliding][_ms][_flip][_crf][_propagate].{json,md};
that folder is checked for writing before the evaluation starts. The JSON always holds
the whole confusion matrix; the Markdown holds it up to `MARKDOWN_MATRIX_MAX` classes (a
wider table is unreadable: ADE20K has 150) and beyond that the largest confusions.
`report_text` is the short form printed on the terminal: per-class IoU, heads, and the
final mIoU and pixel accuracy as its last line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import timing
from difnet_jax.data.normalization import Normalization
from difnet_jax.evaluation import crf, metrics
from difnet_jax.evaluation.evaluator import (
    EvalOptions,
    EvalResult,
    Refinement,
    eval_batches_with_sizes,
)
from difnet_jax.models import affinity, family_of
from difnet_jax.user_errors import ArgumentError

log = logging.getLogger(__name__)


def unnormalize(images: np.ndarray, normalization: Normalization) -> np.ndarray:
    """Inverse of `pipeline.normalize`: RGB colours on 0..255 (float32)."""
    return normalization.invert(images)



def valid_mask(sizes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, height, width) bool: True on each image's own (h, w) top-left region."""
    rows = np.arange(height)[None, :, None] < sizes[:, 0, None, None]
    cols = np.arange(width)[None, None, :] < sizes[:, 1, None, None]
    return rows & cols



def crf_postprocess(params: crf.CRFParams, normalization: Normalization
                    ) -> Callable[[jax.Array, np.ndarray, np.ndarray], jax.Array]:
    """(probabilities, images normalised by `normalization`, sizes) -> dense-CRF marginals, image by image."""

    def postprocess(probabilities, images, sizes):
        colours = unnormalize(np.asarray(images), normalization)
        valid = valid_mask(sizes, *colours.shape[1:3])
        return jnp.stack([
            crf.dense_crf(probabilities[i], colours[i], valid[i], params=params) for i in range(len(colours))
        ])

    return postprocess



def check_propagation_sweep(lams: Sequence[float], self_terms: Sequence[str], iterations: Sequence = (),
                            oracle_iterations: Sequence = ()) -> None:
    """ArgumentError naming the flag and value unless each lambda is a number >= 0 (Eq. 6) and each self term one of
    `affinity.SELF_TERMS`, and a sweep has iteration counts to apply to (`propagation_refinements`)."""
    for lam in lams:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam < np.inf:
            raise ArgumentError(f"--propagate_lambda={lam!r} is invalid: expected numbers >= 0 (Eq. 6's lambda)")
    for term in self_terms:
        if term not in affinity.SELF_TERMS:
            raise ArgumentError(f"--propagate_self_term={term!r} is invalid: expected some of {affinity.SELF_TERMS}")
    if (lams or self_terms) and not (iterations or oracle_iterations):
        raise ArgumentError("--propagate_lambda and --propagate_self_term need --propagate or --propagate_oracle "
                            "(the iteration counts T to apply them at)")


def _propagation_heads(prefix: str, counts: Sequence[int], lams: Sequence[float], self_terms: Sequence[str],
                       sweep: bool):
    """(head name, T, lambda, self term) per combination, T in numeric order; `sweep` names lambda and self term."""
    for t in sorted(set(counts)):
        for lam in lams:
            for term in self_terms:
                yield f"{prefix}_T{t}" + (f"_lam{lam:g}_{term}" if sweep else ""), t, lam, term


def propagation_refinements(model: ml_collections.ConfigDict, iterations: Sequence[int | str] = (),
                            oracle_iterations: Sequence[int | str] = (), *, lam: float | None = None,
                            mu: float | None = None, lams: Sequence[float] = (),
                            self_terms: Sequence[str] = ()) -> dict[str, Refinement]:
    """Affinity propagation (Dilated Affinity, Eq. 6-7) as evaluator heads, one per iteration count T.

    'propagate_T<T>' refines the final probabilities with the model's own predicted affinity
    (`intermediates['affinity_logits']` through the steep sigmoid mu^x / (1 + mu^x)), at the
    rates of its affinity head; 'oracle_T<T>' with the ground-truth affinity of the labels
    (Tables 3-4, "refine with ground truth"), which works for any model, at the model's affinity
    rates or else the paper's best set R = {8, (12, 24), 16}. Pairs touching void or padding
    have affinity 0 in the oracle. lambda, mu, the self term (`affinity.propagate`) and the iteration
    count "paper" are the model family's propagation settings (`Family.propagation`:
    config.model.deeplabv3plus.propagation_*, the paper's 6, 7, 10 and "current"), or the paper's for a model
    without an affinity head; `lam`/`mu` override. `lams` and `self_terms` (lambda being "selected by
    cross-validation", Sec. 3.3) make one head per (T, lambda, self term), named
    'propagate_T<T>_lam<lambda:g>_<self term>' / 'oracle_T<T>_lam<lambda:g>_<self term>'; an empty one takes the
    settings' value. Heads come in numeric order of T.
    """
    check_propagation_sweep(lams, self_terms, iterations, oracle_iterations)
    settings = family_of(model).propagation(model)
    if iterations and settings is None:
        raise ValueError(f"--propagate needs a model with an affinity head (a *_affinity variant); {model.name!r} "
                         "has none. --propagate_oracle works for every model.")
    settings = settings or affinity.Propagation(affinity.expand_rates(affinity.BEST_RATES))
    model_rates = oracle_rates = settings.rates
    mu = settings.mu if mu is None else mu
    sweep = bool(lams or self_terms)
    lams = tuple(lams) or (settings.lam if lam is None else lam,)
    self_terms = tuple(self_terms) or (settings.self_term,)
    iterations, oracle_iterations = ([settings.iterations if t == "paper" else int(t) for t in counts]
                                     for counts in (iterations, oracle_iterations))
    reads = (("affinity_logits", [o for rate in model_rates for o in affinity.neighbour_offsets(rate)]),)

    def own(t: int, lam: float, term: str) -> Refinement:  # reads the affinity logits, stitched under sliding windows
        return Refinement(lambda probs, intermediates, images, labels: affinity.propagate(
            probs, affinity.steep_sigmoid(intermediates["affinity_logits"], mu), model_rates, lam=lam, iterations=t,
            self_term=term), reads=reads)

    def oracle(t: int, lam: float, term: str) -> Callable:
        return lambda probs, intermediates, images, labels: affinity.propagate(
            probs, affinity.ground_truth_affinity(labels, oracle_rates), oracle_rates, lam=lam, iterations=t,
            self_term=term)

    refinements: dict[str, Refinement] = {}
    for prefix, counts, make in (("propagate", iterations, own), ("oracle", oracle_iterations, oracle)):
        for name, t, weight, term in _propagation_heads(prefix, counts, lams, self_terms, sweep):
            refinements[name] = make(t, weight, term)
    return refinements


def report_basename(split: str, step: int, scales: Sequence[float], flip: bool, use_crf: bool,
                    mode: str = "pad") -> str:
    """eval_<split>_step<N>[_whole|_sliding][_ms][_flip][_crf]."""
    name = f"eval_{split}_step{step}"
    if mode != "pad":
        name += f"_{mode}"
    if tuple(scales) != (1.0,):
        name += "_ms"
    if flip:
        name += "_flip"
    if use_crf:
        name += "_crf"
    return name


def build_report(confusion: np.ndarray, class_names: Sequence[str], **settings) -> dict[str, Any]:
    """The report's dict: `settings` (step, split, scales, ...) plus the metrics and the confusion matrix."""
    summary = metrics.summarize(confusion, list(class_names))
    return {
        **settings,
        "miou": summary["miou"],
        "pixel_accuracy": summary["pixel_accuracy"],
        "iou": summary["iou"],
        "class_names": list(class_names),
        "confusion_matrix": np.asarray(confusion, np.int64).tolist(),
    }


MARKDOWN_MATRIX_MAX = 25  # classes up to which the Markdown report shows the whole confusion matrix
LARGEST_CONFUSIONS = 20  # off-diagonal entries it lists instead, beyond that


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}"


def _fraction(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.4f}"


def largest_confusions(confusion, count: int = LARGEST_CONFUSIONS) -> list[tuple[int, int, int, float]]:
    """(ground truth k, predicted j, pixels, share of k's pixels) of the `count` largest off-diagonal entries."""
    matrix = np.asarray(confusion, np.int64)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:count]  # ties: in row-major order
    rows = matrix.sum(axis=1)
    return [(int(k), int(j), int(off[k, j]), off[k, j] / rows[k])
            for k, j in zip(*np.unravel_index(flat, off.shape)) if off[k, j] > 0]


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: settings, summary, per-class IoU table, and the confusion matrix
    (up to MARKDOWN_MATRIX_MAX classes; else its LARGEST_CONFUSIONS largest off-diagonal entries)."""
    scales = report.get("scales", [1.0])
    mode = report.get("eval_mode", "pad")
    canvas = (f"padded to {report.get('eval_size')}x{report.get('eval_size')} (label 255)" if mode == "pad" else
              "each batch padded to its largest image" + (
                  f", {report.get('window')}x{report.get('window')} windows every {report.get('stride')} px, "
                  "overlaps averaged" if mode == "sliding" else ""))
    protocol = (f"single scale, {canvas}" if list(scales) == [1.0] and not report.get("flip") else
                f"scales {', '.join(str(s) for s in scales)}{' + flip' if report.get('flip') else ''}, "
                f"mean softmax, {canvas}")
    lines = [
        f"# Evaluation: {report.get('model', '?')} on {report.get('dataset', '?')}/{report.get('split', '?')}, "
        f"step {report.get('step', '?')}",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| workdir | `{report.get('workdir', '')}` |",
        f"| checkpoint step | {report.get('step', '?')} |",
        f"| images | {report.get('num_images', '?')} |",
        f"| protocol | {protocol} |",
        f"| dense CRF | {'no' if not report.get('crf') else str(report['crf'].get('iterations')) + ' iterations'} |",
        f"| device | {report.get('device', '?')} |",
        f"| time | {report.get('seconds', float('nan')):.1f} s |",
    ]
    timed = report.get("timing", {})
    for key, label in (("crf_seconds_per_image", "dense CRF per image"),
                       ("part_seconds_per_image", f"{timed.get('part')} per image, same size")):
        if key in timed:
            lines.append(f"| {label} | {1000 * timed[key]:.1f} ms |")
    lines += [
        "",
        f"**mIoU {_percent(report['miou'])} %**, pixel accuracy {_percent(report['pixel_accuracy'])} %",
        "",
    ]
    if report.get("heads"):
        lines += ["| head | mIoU (%) |", "| --- | ---: |"]
        lines += [f"| {name} | {_percent(value)} |" for name, value in report["heads"].items()]
        lines.append("")
    lines += [
        "## Per-class IoU",
        "",
        "| # | class | IoU (%) |",
        "| ---: | --- | ---: |",
    ]
    lines += [f"| {k} | {name} | {_percent(report['iou'][name])} |" for k, name in enumerate(report["class_names"])]
    confusion = report["confusion_matrix"]
    if len(confusion) > MARKDOWN_MATRIX_MAX:
        lines += [
            "",
            "## Largest confusions",
            "",
            f"The whole {len(confusion)}x{len(confusion)} confusion matrix is in the JSON report "
            "(`confusion_matrix`; rows: ground truth, columns: prediction).",
            "",
            "| ground truth | predicted as | pixels | % of its pixels |",
            "| --- | --- | ---: | ---: |",
        ]
        names = report["class_names"]
        lines += [f"| {k} {names[k]} | {j} {names[j]} | {pixels} | {_percent(share)} |"
                  for k, j, pixels, share in largest_confusions(confusion)]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Confusion matrix",
        "",
        "Pixels; rows: ground truth, columns: prediction, numbered as in the table above.",
        "",
        "| gt \\ pred | " + " | ".join(str(k) for k in range(len(confusion))) + " |",
        "| --- |" + " ---: |" * len(confusion),
    ]
    lines += [f"| {k} {report['class_names'][k]} | " + " | ".join(str(v) for v in row) + " |"
              for k, row in enumerate(confusion)]
    return "\n".join(lines) + "\n"


def report_text(report: dict[str, Any]) -> str:
    """What `experiments.evaluate` prints: a class | IoU table, each head's mIoU, and last the final mIoU and
    pixel accuracy (fractions, as in the training log). The confusion matrix stays in the files."""
    names = report["class_names"]
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{report.get('model', '?')} on {report.get('dataset', '?')}/{report.get('split', '?')}, "
             f"step {report.get('step', '?')}, {report.get('num_images', '?')} images:",
             f"{'class':<{width}} | IoU", f"{'-' * width}-|-------"]
    lines += [f"{name:<{width}} | {_fraction(report['iou'][name])}" for name in names]
    for name, value in (report.get("heads") or {}).items():
        lines.append(f"head {name}: mIoU {_fraction(value)}")
    timing_ = report.get("timing") or {}
    if "crf_seconds_per_image" in timing_:
        part = (f" ({timing_['part']} on the same canvas: {1000 * timing_['part_seconds_per_image']:.1f} ms)"
                if "part_seconds_per_image" in timing_ else "")
        lines.append(f"dense CRF: {1000 * timing_['crf_seconds_per_image']:.1f} ms per image{part}")
    lines.append(f"mIoU {_fraction(report['miou'])}, pixel accuracy {_fraction(report['pixel_accuracy'])}")
    return "\n".join(lines)


def write_report(report: dict[str, Any], directory: str, basename: str) -> tuple[str, str]:
    """Writes DIRECTORY/BASENAME.json and .md (each complete or not at all: written beside, then renamed);
    returns their paths."""
    json_path = os.path.join(directory, basename + ".json")
    md_path = os.path.join(directory, basename + ".md")
    for path, text in ((json_path, json.dumps(report, indent=2)), (md_path, report_markdown(report))):
        try:
            with open(path + ".partial", "w") as f:
                f.write(text)
            os.replace(path + ".partial", path)
        finally:  # an interrupt or a full disk leaves no .partial file either
            if os.path.exists(path + ".partial"):
                os.remove(path + ".partial")
    return json_path, md_path


def save_predictions(result: EvalResult, path: str) -> None:
    """predictions, labels (padded canvases, uint8; 255 = void or padding), sizes (h, w) and ids as .npz."""
    np.savez_compressed(path, predictions=result.predictions, labels=result.labels, sizes=result.sizes,
                        ids=result.ids)


def check_propagation_options(model: ml_collections.ConfigDict, propagate: Sequence[int] = (),
                              propagate_oracle: Sequence[int] = (), scales: Sequence[float] = (1.0,),
                              flip: bool = False) -> None:
    """ArgumentError, before anything loads, for propagation the run cannot do: --propagate on a model without
    an affinity head, or either kind with --scales/--flip (refinements read single-scale, unflipped maps)."""
    if propagate and family_of(model).propagation(model) is None:
        raise ArgumentError(f"--propagate needs a model with an affinity head (a *_affinity variant); this run's "
                            f"{model.name!r} has none: --propagate_oracle works for every model, or leave "
                            "--propagate out")
    given = ([f"--scales={','.join(f'{s:g}' for s in scales)}"] if tuple(scales) != (1.0,) else []) + (
        ["--flip"] if flip else [])
    if (propagate or propagate_oracle) and given:
        raise ArgumentError(f"--propagate / --propagate_oracle need single-scale, unflipped evaluation, not "
                            f"{' '.join(given)}: drop it, or evaluate it in a separate command")


def crf_timing(params: crf.CRFParams, options: EvalOptions, num_classes: int, data_source, runs: int = 5,
               model: ml_collections.ConfigDict | None = None) -> dict:
    """Median seconds per image of the dense CRF on the first image's canvas (`options.mode`'s), and of the part
    of `model` its family times beside it (`Family.timed_part`: DifNet's cascade) on the eval_size canvas."""
    batch = next(eval_batches_with_sizes(data_source, batch_size=1, options=options))
    colours = unnormalize(batch["image"], options.normalization)[0]
    height, width = colours.shape[:2]
    valid = valid_mask(batch["size"], height, width)[0]
    probabilities = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (height, width, num_classes)))
    crf_time = timing.time_function(
        lambda p: crf.dense_crf(p, colours, valid, params=params), probabilities, warmup=1, runs=runs)
    timed = {"crf_seconds_per_image": crf_time.median_s, "crf_std_s": crf_time.std_s,
             "crf_sender_stride": crf.sender_stride(height, width, params.max_senders)}
    timed_part = family_of(model).timed_part if model is not None else None
    if timed_part is not None:
        part, part_time = timed_part(model, options.eval_size, num_classes, runs)
        timed.update(part=part, part_seconds_per_image=part_time.median_s, part_std_s=part_time.std_s)
    return timed
