"""Evaluation of a trained run: the paper's protocol, multi-scale + flip inference, reports.

- Protocol (Sec. 5.1): single scale, every image padded bottom/right to eval_size x
  eval_size (label 255 there), mIoU from the confusion matrix (`metrics`).
- Multi-scale + flip (`multiscale_probabilities`): the padded canvas is resized by
  each scale (bilinear, aligned corners), padded to the next 8k + 1 size, and, with
  `flip`, also mirrored; the softmax probabilities are resized back to the canvas
  and averaged over scales and flips. Scale 1.0 without flip is the protocol itself.
- Optional dense CRF on the probabilities (`difnet_jax.crf`), on the image pixels only.
- Reports: JSON and Markdown with mIoU, pixel accuracy, per-class IoU and the
  confusion matrix, written to WORKDIR/eval_<split>_step<N>[_ms][_flip][_crf].{json,md}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import crf, mechanism, metrics, restore, timing
from difnet_jax.constants import OUTPUT_STRIDE
from difnet_jax.data import pipeline
from difnet_jax.models.resize import resize_bilinear

log = logging.getLogger(__name__)



def network_size(size: int) -> int:
    """The smallest 8k + 1 >= size: the seed grid's corners then sit on the image's corners."""
    return OUTPUT_STRIDE * max(-(-(size - 1) // OUTPUT_STRIDE), 0) + 1


def multiscale_probabilities(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array, *,
                             scales: Sequence[float] = (1.0,), flip: bool = False) -> jax.Array:
    """Mean softmax of `logits_fn` over `scales` x (identity[, horizontal flip]), at the input size.

    Args:
      logits_fn: normalised images (B, h, w, 3) -> logits (B, h, w, K), any h, w = 8k + 1.
      images: normalised images (B, H, W, 3); padding, if any, is part of them.
      scales: resize factors of the images.
      flip: also run on the mirrored images (their outputs are mirrored back).

    Returns:
      (B, H, W, K) float32 probabilities.
    """
    height, width = images.shape[1:3]
    total, count = 0.0, 0
    for scale in scales:
        size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        scaled = images if size == (height, width) else resize_bilinear(images, size)
        padding = ((0, 0), (0, network_size(size[0]) - size[0]), (0, network_size(size[1]) - size[1]), (0, 0))
        for mirrored in (False, True) if flip else (False,):
            inputs = scaled[:, :, ::-1] if mirrored else scaled
            logits = logits_fn(jnp.pad(inputs, padding))[:, : size[0], : size[1]]
            probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            if mirrored:
                probabilities = probabilities[:, :, ::-1]
            if size != (height, width):
                probabilities = resize_bilinear(probabilities, (height, width))
            total, count = total + probabilities, count + 1
    return total / count


@functools.partial(jax.jit, static_argnames=("model", "scales", "flip"))
def model_probabilities(model, variables: dict[str, Any], images: jax.Array, scales: tuple[float, ...] = (1.0,),
                        flip: bool = False) -> jax.Array:
    """`multiscale_probabilities` of a DifNet / Sim-DeepLab in eval mode, jit-compiled."""
    logits_fn = lambda x: model.apply(variables, x, train=False)[0]
    return multiscale_probabilities(logits_fn, images, scales=scales, flip=flip)


def unnormalize(images: np.ndarray) -> np.ndarray:
    """Inverse of `pipeline.normalize`: colours on 0..255 (float32)."""
    return images * pipeline.IMAGENET_STD + pipeline.IMAGENET_MEAN


def eval_batches_with_sizes(data_source, *, batch_size: int, eval_size: int) -> Iterator[dict[str, np.ndarray]]:
    """`pipeline.eval_batches` plus each image's 'size' (h, w) and 'id'; void fillers have size (0, 0)."""
    transform = pipeline.EvalTransform(eval_size)
    for start in range(0, len(data_source), batch_size):
        images, labels, sizes, ids = [], [], [], []
        for index in range(start, min(start + batch_size, len(data_source))):
            element = data_source[index]
            example = transform.map(element)
            images.append(example["image"])
            labels.append(example["label"])
            sizes.append(element["image"].shape[:2])
            raw_id = element.get("id", str(index))
            ids.append(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id))
        count = len(images)
        while len(images) < batch_size:
            images.append(np.zeros((eval_size, eval_size, 3), np.float32))
            labels.append(np.full((eval_size, eval_size), pipeline.IGNORE_LABEL, np.int32))
            sizes.append((0, 0))
        yield {"image": np.stack(images), "label": np.stack(labels), "size": np.asarray(sizes, np.int32),
               "id": np.asarray(ids), "count": count}


def valid_mask(sizes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, height, width) bool: True on each image's own (h, w) top-left region."""
    rows = np.arange(height)[None, :, None] < sizes[:, 0, None, None]
    cols = np.arange(width)[None, None, :] < sizes[:, 1, None, None]
    return rows & cols


def crf_postprocess(params: crf.CRFParams) -> Callable[[jax.Array, np.ndarray, np.ndarray], jax.Array]:
    """(probabilities, normalised images, sizes) -> dense-CRF marginals, image by image."""

    def postprocess(probabilities, images, sizes):
        colours = unnormalize(np.asarray(images))
        valid = valid_mask(sizes, *colours.shape[1:3])
        return jnp.stack([
            crf.dense_crf(probabilities[i], colours[i], valid[i], params=params) for i in range(len(colours))
        ])

    return postprocess


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _batch_confusion(labels, probabilities, num_classes: int):
    predictions = jnp.argmax(probabilities, axis=-1)
    return metrics.confusion_matrix(labels, predictions, num_classes), predictions.astype(jnp.uint8)


@dataclasses.dataclass
class EvalResult:
    confusion: np.ndarray
    num_images: int
    seconds: float
    postprocess_seconds: float = 0.0
    predictions: np.ndarray | None = None  # (num_images, eval_size, eval_size) uint8, padded canvas
    labels: np.ndarray | None = None
    sizes: np.ndarray | None = None
    ids: np.ndarray | None = None


def evaluate_split(probabilities_fn: Callable[[np.ndarray], jax.Array], data_source, *, num_classes: int,
                   batch_size: int, eval_size: int, postprocess=None, keep_predictions: bool = False,
                   log_every: int = 5) -> EvalResult:
    """Confusion matrix of `probabilities_fn` (normalised images -> (B, H, W, K)) over a split.

    `postprocess(probabilities, images, sizes)`, e.g. `crf_postprocess`, refines the
    probabilities before the argmax. Logs progress every `log_every` batches.
    """
    confusion = np.zeros((num_classes, num_classes), np.int64)
    kept: dict[str, list] = {"predictions": [], "labels": [], "sizes": [], "ids": []}
    total = len(data_source)
    done, post_seconds, start = 0, 0.0, time.perf_counter()
    for batch_index, batch in enumerate(eval_batches_with_sizes(data_source, batch_size=batch_size,
                                                                eval_size=eval_size)):
        probabilities = probabilities_fn(batch["image"])
        if postprocess is not None:
            post_start = time.perf_counter()
            probabilities = jax.block_until_ready(postprocess(probabilities, batch["image"], batch["size"]))
            post_seconds += time.perf_counter() - post_start
        batch_confusion, predictions = _batch_confusion(batch["label"], probabilities, num_classes)
        confusion += np.asarray(batch_confusion, np.int64)
        count = batch["count"]
        done += count
        if keep_predictions:
            kept["predictions"].append(np.asarray(predictions)[:count])
            kept["labels"].append(batch["label"][:count].astype(np.uint8))
            kept["sizes"].append(batch["size"][:count])
            kept["ids"].append(batch["id"][:count])
        if (batch_index + 1) % log_every == 0 or done == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / done * (total - done)
            log.info("evaluated %d/%d images (%.0f%%), %.1fs, ETA %.0fs, running mIoU %.4f", done, total,
                     100.0 * done / total, elapsed, eta, metrics.summarize(confusion)["miou"])
    result = EvalResult(confusion, done, time.perf_counter() - start, post_seconds)
    if keep_predictions and done:
        result.predictions = np.concatenate(kept["predictions"])
        result.labels = np.concatenate(kept["labels"])
        result.sizes = np.concatenate(kept["sizes"])
        result.ids = np.concatenate(kept["ids"])
    return result


def report_basename(split: str, step: int, scales: Sequence[float], flip: bool, use_crf: bool) -> str:
    """eval_<split>_step<N>[_ms][_flip][_crf]."""
    name = f"eval_{split}_step{step}"
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


def _percent(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: settings, summary, per-class IoU table and the confusion matrix."""
    scales = report.get("scales", [1.0])
    protocol = (f"single scale, padded to {report.get('eval_size')}x{report.get('eval_size')} (label 255)"
                if list(scales) == [1.0] and not report.get("flip") else
                f"scales {', '.join(str(s) for s in scales)}{' + flip' if report.get('flip') else ''}, "
                f"mean softmax, canvas {report.get('eval_size')}x{report.get('eval_size')}")
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
    for key, label in (("crf_seconds_per_image", "dense CRF per image"),
                       ("diffusion_seconds_per_image", "DifNet diffusion (cascade) per image, same size")):
        if key in report.get("timing", {}):
            lines.append(f"| {label} | {1000 * report['timing'][key]:.1f} ms |")
    lines += [
        "",
        f"**mIoU {_percent(report['miou'])} %**, pixel accuracy {_percent(report['pixel_accuracy'])} %",
        "",
        "## Per-class IoU",
        "",
        "| # | class | IoU (%) |",
        "| ---: | --- | ---: |",
    ]
    lines += [f"| {k} | {name} | {_percent(report['iou'][name])} |" for k, name in enumerate(report["class_names"])]
    confusion = report["confusion_matrix"]
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


def write_report(report: dict[str, Any], directory: str, basename: str) -> tuple[str, str]:
    """Writes DIRECTORY/BASENAME.json and .md; returns their paths."""
    json_path = os.path.join(directory, basename + ".json")
    md_path = os.path.join(directory, basename + ".md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    with open(md_path, "w") as f:
        f.write(report_markdown(report))
    return json_path, md_path


def save_predictions(result: EvalResult, path: str) -> None:
    """predictions, labels (padded canvases, uint8; 255 = void or padding), sizes (h, w) and ids as .npz."""
    np.savez_compressed(path, predictions=result.predictions, labels=result.labels, sizes=result.sizes,
                        ids=result.ids)


def evaluate_workdir(workdir: str, *, config: ml_collections.ConfigDict | None = None, step: int | None = None,
                     split: str | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                     crf_params: crf.CRFParams | None = None, save_predictions_npz: bool = False,
                     batch_size: int | None = None, log_every: int = 5) -> tuple[dict[str, Any], list[str]]:
    """Restores a run, evaluates `split` (default: config.data.eval_split) and writes the report.

    Returns (report, written paths). With `crf_params` the report's 'timing' holds the
    dense CRF's time per image and, for comparison, the time of DifNet's cascade of
    five random walks on the seed grid of the same canvas.
    """
    if jax.process_count() > 1:
        raise NotImplementedError("evaluate on one host (it uses all of that host's devices)")
    run = restore.load_run(workdir, config, step)
    config = run.config
    split = split or config.data.eval_split
    eval_size = config.data.eval_size
    batch_size = batch_size or config.train.eval_batch_size
    if batch_size % jax.device_count():
        raise ValueError(f"batch size {batch_size} must be divisible by the {jax.device_count()} devices")
    data_source = pipeline.source(config.data.name, split, config.data.data_dir)
    scales = tuple(float(s) for s in scales)
    variables = run.variables

    def probabilities_fn(images):
        images = jax.device_put(images, run.trainer.data_sharding)
        return model_probabilities(run.model, variables, images, scales, flip)

    log.info("Evaluating %s step %d on %s/%s (%d images), scales %s%s%s.", workdir, run.step, config.data.name,
             split, len(data_source), scales, ", flip" if flip else "", ", dense CRF" if crf_params else "")
    result = evaluate_split(
        probabilities_fn, data_source, num_classes=len(run.class_names), batch_size=batch_size,
        eval_size=eval_size, postprocess=crf_postprocess(crf_params) if crf_params else None,
        keep_predictions=save_predictions_npz, log_every=log_every,
    )
    report = build_report(
        result.confusion, run.class_names, workdir=os.path.abspath(workdir),
        model=f"{config.model.name}-{config.model.depth}", dataset=config.data.name, split=split, step=run.step,
        num_images=result.num_images, eval_size=eval_size, scales=list(scales), flip=flip,
        crf=crf_params.as_dict() if crf_params else None, seconds=result.seconds,
        device=timing.device_description(),
    )
    if crf_params:
        report["timing"] = crf_timing(crf_params, eval_size, len(run.class_names), data_source)
    basename = report_basename(split, run.step, scales, flip, crf_params is not None)
    paths = list(write_report(report, workdir, basename))
    if save_predictions_npz:
        paths.append(os.path.join(workdir, basename + "_predictions.npz"))
        save_predictions(result, paths[-1])
    log.info("%s: mIoU %.4f, pixel accuracy %.4f; wrote %s", basename, report["miou"], report["pixel_accuracy"],
             ", ".join(paths))
    return report, paths


def crf_timing(params: crf.CRFParams, eval_size: int, num_classes: int, data_source, runs: int = 5) -> dict:
    """Median seconds per image of the dense CRF on the first image's canvas, and of DifNet's cascade."""
    batch = next(eval_batches_with_sizes(data_source, batch_size=1, eval_size=eval_size))
    colours = unnormalize(batch["image"])[0]
    valid = valid_mask(batch["size"], eval_size, eval_size)[0]
    probabilities = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (eval_size, eval_size, num_classes)))
    crf_time = timing.time_function(
        lambda p: crf.dense_crf(p, colours, valid, params=params), probabilities, warmup=1, runs=runs)
    cascade_time = mechanism.time_cascade(eval_size, num_classes, runs=runs)
    return {"crf_seconds_per_image": crf_time.median_s, "crf_std_s": crf_time.std_s,
            "crf_sender_stride": crf.sender_stride(eval_size, eval_size, params.max_senders),
            "diffusion_seconds_per_image": cascade_time.median_s, "diffusion_std_s": cascade_time.std_s}
