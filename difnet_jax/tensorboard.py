"""TensorBoard event files beside metrics.jsonl, written without TensorFlow; validation pictures.

Writer: the `tensorboard` package's own pieces, its protos (`tensorboard.compat.proto`) and its
record framing (`tensorboard.summary.writer.record_writer`, the code under PyTorch's
SummaryWriter). That package is what a user installs anyway to view the events, and it holds
the reader the tests check them with; it needs no TensorFlow, and a second writer package
(tensorboardX) would only duplicate its protos. Each record is appended to the session's file
and the file closed again, so there is no background thread to close and a killed run loses
nothing it logged.

- `EventLog`: scalars and images of WORKDIR/events.out.tfevents.<time>.<host>.<pid>.<n>.difnet_jax,
  one file per session; a tag is written only at steps after the last one already logged
  (`last_steps` of metrics.jsonl), so a resumed run appends without repeating steps.
- `scalar_tags`: a metrics.jsonl record -> {tag: value}; the tags are the record's keys, a
  nested dict joined with '/', e.g. 'val/iou/background'.
- `ValidationPictures`: a fixed handful of validation images (`example_indices`), drawn at each
  evaluation as image | ground truth | prediction, followed by whichever of these the model's
  intermediates hold: DifNet's 'seed' and last of its 'walks', the family's extra predictions
  (PDN's diffusion layers), and 'affinity_logits' as the mean affinity to the 8 neighbours at
  the first rate (bright = same class as the neighbours). One jit call per evaluation.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image, ImageDraw, ImageFont
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from difnet_jax import visualize
from difnet_jax.data import pipeline
from difnet_jax.evaluator import EvalOptions, network_size
from difnet_jax.models.family import Family

log = logging.getLogger(__name__)

NUM_PICTURES = 4  # validation images drawn at each evaluation
PICTURE_TAG = "val/pictures"  # + "/<index in the split>"
HEADER_HEIGHT = 14  # pixels of the panel-name strip above each panel
NOT_LOGGED = ("step", "time")  # metrics.jsonl keys that are no scalar of their own
_SESSIONS = itertools.count()  # event files of this process: two sessions in one second get two files


def scalar_tags(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's numbers by tag ('val/iou' -> {'val/iou/<class>': ...}); 'step', 'time' and nulls left out."""
    tags = {}
    for key, value in record.items():
        if not prefix and key in NOT_LOGGED:
            continue
        if isinstance(value, Mapping):
            tags.update(scalar_tags(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            tags[f"{prefix}{key}"] = float(value)
    return tags


def last_steps(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Tag -> the last step some record logged it at."""
    steps: dict[str, int] = {}
    for record in records:
        for tag in scalar_tags(record):
            steps[tag] = max(steps.get(tag, -1), int(record["step"]))
    return steps


def _png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


class EventLog:
    """Appends scalars and images to this session's event file in `logdir`, skipping steps already logged.

    `logged` maps each tag to the last step earlier sessions wrote it at (`last_steps`): a
    tag is written only at later steps. Images go with the record they come with: written
    when at least one of its scalars is. The file is created at the first write.
    """

    def __init__(self, logdir: str, logged: Mapping[str, int] | None = None):
        self.logdir = logdir
        self.logged = dict(logged or {})
        self.path: str | None = None

    def write(self, step: int, scalars: Mapping[str, float], images: Mapping[str, np.ndarray] | None = None) -> None:
        new = {tag: value for tag, value in scalars.items() if step > self.logged.get(tag, -1)}
        if not new:
            return
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=value) for tag, value in new.items()]
        for tag, picture in (images or {}).items():
            height, width = picture.shape[:2]
            values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=_png(picture))))
        self._append([event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=values))])
        self.logged.update(dict.fromkeys(new, step))

    def _append(self, events: list[event_pb2.Event]) -> None:
        if self.path is None:
            name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}."
                    f"{next(_SESSIONS):03d}.difnet_jax")
            self.path = os.path.join(self.logdir, name)
            events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"), *events]
        with open(self.path, "ab") as f:
            writer = RecordWriter(f)
            for event in events:
                writer.write(event.SerializeToString())


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
    labels = {"prediction": logits.argmax(-1)}
    if "seed" in intermediates:
        labels["seed"] = intermediates["seed"].argmax(-1)
    if intermediates.get("walks"):
        labels[f"walk {len(intermediates['walks'])}"] = intermediates["walks"][-1].argmax(-1)
    if family is not None:
        for name, head in family.extra_predictions(intermediates).items():
            labels[name] = head.argmax(-1)
    heat = {}
    if "affinity_logits" in intermediates:  # channels 8k + n: rate k, neighbour n (difnet_jax.affinity)
        heat["affinity, rate 1"] = jax.nn.sigmoid(intermediates["affinity_logits"][..., :8].astype(jnp.float32)
                                                  ).mean(-1)
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
        canvas = np.stack([pipeline.normalize(pipeline.pad_to(image, label, height, width)[0])
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
