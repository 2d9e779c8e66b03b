"""Segmenting image files of any size with a trained run, and writing the results as PNGs.

Per input image NAME.EXT, two files in the output folder:
- NAME.png: the label map as an indexed ("P" mode) PNG with the VOC palette, pixel
  value = class index;
- NAME_overlay.png: image | colour-coded prediction blended over the image.
An image is padded (mean colour) to the run's eval canvas, eval_size x eval_size, so
that one compiled program serves every image, and the prediction is cropped back.
An image whose longer side exceeds eval_size is first resized down (bilinear) so that
it fits, and its prediction resized back to the original size (nearest).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from difnet_jax import visualize
from difnet_jax.data import pipeline
from difnet_jax.evaluation.evaluator import network_size

log = logging.getLogger(__name__)


def list_inputs(path: str) -> list[str]:
    """The file `path`, or every file directly inside the folder `path` (sorted, hidden ones left out)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith("."))
        return [os.path.join(path, n) for n in names if os.path.isfile(os.path.join(path, n))]
    return [path]


def output_names(inputs: Sequence[str]) -> dict[str, str]:
    """Input path -> output stem: the file name without extension, plus the extension where two stems clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in inputs]
    clashing = {s for s in stems if stems.count(s) > 1}
    names = {}
    for path, stem in zip(inputs, stems):
        if stem in clashing:
            stem = os.path.basename(path).replace(".", "_")
        names[path] = stem
    return names


def output_paths(output_dir: str, stem: str) -> tuple[str, str]:
    """(label map PNG, overlay PNG) of one input."""
    return os.path.join(output_dir, stem + ".png"), os.path.join(output_dir, stem + "_overlay.png")


def load_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied; ValueError naming the file if it is not an image."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable image ({error})") from error


def segment(probabilities_fn: Callable[[np.ndarray], jax.Array], image: np.ndarray, eval_size: int) -> np.ndarray:
    """(H, W) uint8 class indices of `image` (H, W, 3) uint8.

    `probabilities_fn` maps normalised images (1, S, S, 3), S = network_size(eval_size),
    to class scores or probabilities (1, S, S, K).
    """
    height, width = image.shape[:2]
    canvas = network_size(eval_size)
    scaled = image
    if max(height, width) > eval_size:  # very large: resize down so that it fits the canvas
        scale = eval_size / max(height, width)
        size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    padded, _ = pipeline.pad_to(scaled, np.zeros(scaled.shape[:2], np.uint8), canvas, canvas)
    scores = probabilities_fn(pipeline.normalize(padded)[None])
    labels = np.asarray(jax.device_get(scores[0].argmax(-1)), np.uint8)[: scaled.shape[0], : scaled.shape[1]]
    if scaled is not image:
        labels = np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))
    return labels


@dataclasses.dataclass
class PredictSummary:
    written: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (input, reason)


def existing_outputs(inputs: Sequence[str], output_dir: str) -> list[str]:
    """The output files that predicting `inputs` would overwrite."""
    names = output_names(inputs)
    return [p for path in inputs for p in output_paths(output_dir, names[path]) if os.path.exists(p)]


def predict_files(probabilities_fn: Callable[[np.ndarray], jax.Array], inputs: Sequence[str], output_dir: str, *,
                  eval_size: int, force: bool = False) -> PredictSummary:
    """Segments each input and writes its label map and overlay; unreadable inputs are logged and skipped.

    Refuses (FileExistsError, nothing written) if any output exists and not `force`,
    and (ValueError) if an output would replace one of the inputs, whatever `force`.
    """
    names = output_names(inputs)
    sources = {os.path.realpath(p) for p in inputs}
    replaced = [p for path in inputs for p in output_paths(output_dir, names[path]) if os.path.realpath(p) in sources]
    if replaced:
        raise ValueError("an output would replace an input image; choose another --output: " + ", ".join(replaced))
    clashes = existing_outputs(inputs, output_dir)
    if clashes and not force:
        raise FileExistsError("would overwrite (pass --force to allow): " + ", ".join(clashes))
    os.makedirs(output_dir, exist_ok=True)
    summary = PredictSummary()
    for index, path in enumerate(inputs):
        try:
            image = load_image(path)
        except ValueError as error:
            log.error("skipped %s", error)
            summary.failed.append((path, str(error)))
            continue
        labels = segment(probabilities_fn, image, eval_size)
        label_path, overlay_path = output_paths(output_dir, names[path])
        visualize.indexed_image(labels).save(label_path)
        Image.fromarray(visualize.side_by_side_overlay(image, labels)).save(overlay_path)
        summary.written += [label_path, overlay_path]
        log.info("%d/%d %s (%dx%d) -> %s", index + 1, len(inputs), path, image.shape[1], image.shape[0], label_path)
    return summary
