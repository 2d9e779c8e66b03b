"""Validation pictures: a fixed handful of validation images drawn at each evaluation.

`ValidationPictures` draws image | ground truth | prediction, followed by the panels the model's
family draws (`Family.picture_maps`): by default its extra predictions (PDN's diffusion layers);
DifNet's seed and last walk; DeepLabv3+'s affinity head as the mean affinity to the 8 neighbours
at the first rate (bright = same class as the neighbours). One jit call per
evaluation. Training logs them to TensorBoard (`run_log.EventLog`); `studies.compare` draws
the same examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageDraw, ImageFont

from difnet_jax.data import pipeline
from difnet_jax.drawing import visualize
from difnet_jax.evaluation.evaluator import EvalOptions, network_size
from difnet_jax.models.family import Family

NUM_PICTURES = 4  # validation images drawn at each evaluation
PICTURE_TAG = "val/pictures"  # + "/<index in the split>"
HEADER_HEIGHT = 14  # pixels of the panel-name strip above each panel


def example_indices(num_examples: int, count: int) -> list[int]:
    """`count` indices spread evenly over a split of `num_examples` (the first and the last included)."""
    if num_examples <= 0 or count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, num_examples - 1, min(count, num_examples)).round()})


def largest_network_input(options: EvalOptions) -> int:
    """The longest side the evaluation feeds the network at once: the "pad" canvas, else the window."""
    return options.eval_size if options.mode == "pad" else options.window


def shrink_to_fit(image: np.ndarray, label: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (bilinear) and label (nearest) resized so that the longer side is at most `max_side`."""
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, label
    scale = max_side / max(height, width)
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


def validation_examples(data_source, count: int, max_side: int) -> tuple[list[int], list[np.ndarray],
                                                                         list[np.ndarray]]:
    """(indices, images (H, W, 3) uint8, labels (H, W) uint8) of `example_indices`, shrunk to `max_side`."""
    indices, images, labels = example_indices(len(data_source), count), [], []
    for index in indices:
        element = data_source[index]
        label = element["label"][..., 0] if element["label"].ndim == 3 else element["label"]
        image, label = shrink_to_fit(np.asarray(element["image"], np.uint8), np.asarray(label, np.uint8), max_side)
        images.append(image)
        labels.append(label)
    return indices, images, labels


def picture_maps(model, family: Family | None, variables: dict[str, Any], images: jax.Array
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """({panel: class indices (B, h, w)}, {panel: values in [0, 1] (B, h, w)}) of whichever outputs exist."""
    logits, intermediates = model.apply(variables, images, train=False)
    labels, heat = {"prediction": logits.argmax(-1)}, {}
    if family is not None:
        panels, heat = family.picture_maps(intermediates)
        labels.update({name: head.argmax(-1) for name, head in panels.items()})
    return labels, heat


def _resize_nearest(values: np.ndarray, height: int, width: int) -> np.ndarray:
    if values.shape == (height, width):
        return values
    rows = np.minimum((np.arange(height) * values.shape[0] / height).astype(int), values.shape[0] - 1)
    cols = np.minimum((np.arange(width) * values.shape[1] / width).astype(int), values.shape[1] - 1)
    return values[np.ix_(rows, cols)]


def _with_header(panel: np.ndarray, name: str) -> np.ndarray:
    header = Image.new("RGB", (panel.shape[1], HEADER_HEIGHT), "white")
    ImageDraw.Draw(header).text((2, 1), name, fill="black", font=ImageFont.load_default())
    return np.concatenate([np.asarray(header), panel], axis=0)


def strip(panels: Mapping[str, np.ndarray], gap: int = 2) -> np.ndarray:
    """Named (H, W, 3) uint8 panels side by side, each under its name, `gap` white pixels apart."""
    columns = []
    for name, panel in panels.items():
        columns.append(_with_header(panel, name))
        columns.append(np.full((columns[-1].shape[0], gap, 3), 255, np.uint8))
    return np.concatenate(columns[:-1], axis=1)


class ValidationPictures:
    """A fixed handful of validation images drawn at each evaluation (module docstring).

    Images larger than what the evaluation feeds the network at once (`largest_network_input`)
    are shrunk to fit; all are padded to one 8k + 1 canvas. `render` runs on every process
    (the variables are global arrays); only its result's use is process 0's.
    """

    def __init__(self, model, family: Family | None, data_source, options: EvalOptions, *,
                 count: int = NUM_PICTURES, mesh: Mesh | None = None):
        self.indices, self.images, self.labels = validation_examples(data_source, count,
                                                                     largest_network_input(options))
        if not self.images:
            self._canvas = None
            return
        height = network_size(max(image.shape[0] for image in self.images))
        width = network_size(max(image.shape[1] for image in self.images))
        norm = options.normalization
        canvas = np.stack([pipeline.normalize(pipeline.pad_to(image, label, height, width, norm)[0], norm)
                           for image, label in zip(self.images, self.labels)])
        mesh = mesh or Mesh(np.array(jax.devices()), ("data",))
        replicated = NamedSharding(mesh, P())
        self._canvas = jax.make_array_from_callback(canvas.shape, replicated, lambda index: canvas[index])
        self._panel_names: tuple[list[str], list[str]] = ([], [])

        def maps(variables, images):  # lists, in the panels' order (a dict output would come back sorted)
            labels, heat = picture_maps(model, family, variables, images)
            self._panel_names = (list(labels), list(heat))  # known when traced
            return list(labels.values()), list(heat.values())

        self._maps = jax.jit(maps, out_shardings=replicated)

    def render(self, variables: dict[str, Any]) -> dict[str, np.ndarray]:
        """{'val/pictures/<index>': (H', W', 3) uint8 picture} for the current variables."""
        if self._canvas is None:
            return {}
        label_maps, heat_maps = jax.device_get(self._maps(variables, self._canvas))
        labels, heat = (dict(zip(names, maps)) for names, maps in zip(self._panel_names, (label_maps, heat_maps)))
        height, width = self._canvas.shape[1:3]
        pictures = {}
        for row, (index, image, label) in enumerate(zip(self.indices, self.images, self.labels)):
            h, w = label.shape
            panels = {"image": image, "ground truth": visualize.colorize(label)}
            for name, values in labels.items():
                panels[name] = visualize.colorize(_resize_nearest(values[row], height, width)[:h, :w])
            for name, values in heat.items():
                grey = np.clip(_resize_nearest(values[row], height, width)[:h, :w] * 255 + 0.5, 0, 255)
                panels[name] = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
            pictures[f"{PICTURE_TAG}/{index}"] = strip(panels)
        return pictures
