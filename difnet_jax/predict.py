"""Segmenting image files of any size with a trained run, and writing the results as PNGs.

Per input image NAME.EXT, two files in the output folder:
- NAME.png: the label map as an indexed ("P" mode) PNG with the VOC palette, pixel
  value = class index;
- NAME_overlay.png: image | colour-coded prediction blended over the image.
An image is padded (mean colour) to the run's eval canvas, eval_size x eval_size, so
that one compiled program serves every image, and the prediction is cropped back.
An image whose longer side exceeds eval_size is first resized down (bilinear) so that
it fits, and its prediction resized back to the original size (nearest). Both resizes stay PIL's (issue 23):
OpenCV's antialiased downscale (INTER_AREA, a box filter) differs from PIL's BILINEAR (a triangle filter) by up
to 4-6 grey levels (mean 0.2-0.4) on 700x500 to 4000x3000 images fitted to 513 or 1025, more than rounding, for
0.4 to 6 ms less (2.8 -> 2.4 ms, 13 -> 7 ms, 43 -> 38 ms) once per image beside a network forward; OpenCV's
INTER_NEAREST upscale uses another pixel grid than PIL's NEAREST (and INTER_NEAREST_EXACT missed 711 of 12 M
pixels at 4000x3000), at the same speed.

A folder's inputs are its image files by extension (`IMAGE_SUFFIXES`); other files are
counted and left alone. Refusals (a missing input, existing outputs, an output that would
replace an input) are `user_errors` (UserError), checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from difnet_jax.data import pipeline
from difnet_jax.data.normalization import Normalization
from difnet_jax.drawing import visualize
from difnet_jax.evaluation.evaluator import network_size
from difnet_jax.user_errors import ArgumentError, ExistingOutputError, MissingPathError

log = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


@dataclasses.dataclass(frozen=True)
class Inputs:
    images: list[str]  # the files to segment
    skipped: list[str]  # files of the folder that are not images by extension


def find_inputs(path: str) -> Inputs:
    """The file `path` (whatever its name), or the image files directly inside the folder `path` (sorted,
    hidden ones left out; the others in `skipped`). MissingPathError if `path` does not exist."""
    if not os.path.exists(path):
        raise MissingPathError(f"input {path!r} does not exist: pass an image file or a folder of images")
    if not os.path.isdir(path):
        return Inputs([path], [])
    names = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
    is_image = {n: n.lower().endswith(IMAGE_SUFFIXES) for n in names}
    return Inputs([os.path.join(path, n) for n in names if is_image[n]],
                  [os.path.join(path, n) for n in names if not is_image[n]])


def list_inputs(path: str) -> list[str]:
    """`find_inputs(path).images`."""
    return find_inputs(path).images


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


def segment(probabilities_fn: Callable[[np.ndarray], jax.Array], image: np.ndarray, eval_size: int,
            normalization: Normalization) -> np.ndarray:
    """(H, W) uint8 class indices of `image` (H, W, 3) uint8.

    `probabilities_fn` maps images normalised by `normalization` (the run's config.data.normalization),
    (1, S, S, 3), S = network_size(eval_size), to class scores or probabilities (1, S, S, K).
    """
    height, width = image.shape[:2]
    canvas = network_size(eval_size)
    scaled = image
    if max(height, width) > eval_size:  # very large: resize down so that it fits the canvas
        scale = eval_size / max(height, width)
        size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    padded, _ = pipeline.pad_to(scaled, np.zeros(scaled.shape[:2], np.uint8), canvas, canvas, normalization)
    scores = probabilities_fn(pipeline.normalize(padded, normalization)[None])
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


def check_outputs(inputs: Sequence[str], output_dir: str, force: bool = False) -> None:
    """ArgumentError if an output would replace one of the inputs (whatever `force`); ExistingOutputError
    naming the outputs that exist unless `force`. Reads only: nothing is created."""
    names = output_names(inputs)
    sources = {os.path.realpath(p) for p in inputs}
    replaced = [p for path in inputs for p in output_paths(output_dir, names[path]) if os.path.realpath(p) in sources]
    if replaced:
        raise ArgumentError("an output would replace an input image; choose another --output: " + ", ".join(replaced))
    clashes = existing_outputs(inputs, output_dir)
    if clashes and not force:
        raise ExistingOutputError(f"Refusing to overwrite {len(clashes)} file(s) (pass --force to allow): "
                                  + ", ".join(clashes))


def _save_png(picture: Image.Image, path: str) -> None:
    """Complete or not at all: written beside `path`, then renamed (an interrupt leaves no half-written PNG)."""
    try:
        picture.save(path + ".partial", format="PNG")
        os.replace(path + ".partial", path)
    finally:
        if os.path.exists(path + ".partial"):
            os.remove(path + ".partial")


def predict_files(probabilities_fn: Callable[[np.ndarray], jax.Array], inputs: Sequence[str], output_dir: str, *,
                  eval_size: int, normalization: Normalization, force: bool = False) -> PredictSummary:
    """Segments each input and writes its label map and overlay; unreadable inputs are logged and skipped.

    Refuses first, writing nothing (`check_outputs`): ExistingOutputError (a FileExistsError) if any
    output exists and not `force`, ArgumentError (a ValueError) if an output would replace an input.
    """
    check_outputs(inputs, output_dir, force)
    names = output_names(inputs)
    os.makedirs(output_dir, exist_ok=True)
    summary = PredictSummary()
    for index, path in enumerate(inputs):
        try:
            image = load_image(path)
        except ValueError as error:
            log.error("skipped %s", error)
            summary.failed.append((path, str(error)))
            continue
        labels = segment(probabilities_fn, image, eval_size, normalization)
        label_path, overlay_path = output_paths(output_dir, names[path])
        _save_png(visualize.indexed_image(labels), label_path)
        _save_png(Image.fromarray(visualize.side_by_side_overlay(image, labels)), overlay_path)
        summary.written += [label_path, overlay_path]
        log.info("%d/%d %s (%dx%d) -> %s", index + 1, len(inputs), path, image.shape[1], image.shape[0], label_path)
    return summary
