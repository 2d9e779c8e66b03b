"""The one evaluator: confusion matrices of a model over a split, for the training loop and `experiments.evaluate`.

- Canvas (`EvalOptions.mode`, config.data.eval_mode): "pad" pads every image bottom/right to
  eval_size x eval_size (label 255 there), DifNet's protocol (Sec. 5.1); "whole" pads each
  batch to its largest image (rounded up to 32k + 1, so few programs are compiled);
  "sliding" does the same and then runs crop-sized windows `stride` apart over the canvas,
  averaging the softmax probabilities where windows overlap (Cityscapes' 2048x1024 images,
  ADE20K's up to about 2,000 px). A window that covers the canvas is exactly "whole".
- Multi-scale + flip (`multiscale_probabilities`): the canvas is resized by each scale
  (bilinear, aligned corners), padded to the next 8k + 1 size, and, with `flip`, also
  mirrored; the probabilities are resized back and averaged. Scale 1.0 without flip is the
  protocol itself.
- Heads: besides the final output, every named prediction of the model's family
  (`Family.extra_predictions`, e.g. PDN's diffusion layers) gets its own confusion matrix,
  as does every refinement (e.g. affinity propagation with T iterations), so one pass
  reports them all. A refinement runs once on the whole canvas in every mode: under
  sliding windows it reads the windows' probabilities and model maps (e.g. affinity
  logits) stitched to the canvas (`stitch_windows`).
- Compiled functions are memoised per (model, family, options, maps read) at module level,
  like big_vision's evaluators: two `Evaluator`s of equal modules and options (the training
  loop's and `evaluate_workdir`'s) compile once.
- Multi-host: every host reads the same batches and feeds its share of each global batch,
  like training; confusion matrices come back replicated. A host-side postprocess (the
  dense CRF) and saving the predictions need the pixels on one host (single process).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from difnet_jax.constants import EVAL_MODES, IGNORE_LABEL, OUTPUT_STRIDE
from difnet_jax.data import pipeline
from difnet_jax.data.normalization import Normalization
from difnet_jax.data.normalization import of_config as normalization_of
from difnet_jax.evaluation import metrics
from difnet_jax.models.family import Family
from difnet_jax.models.resize import resize_bilinear

log = logging.getLogger(__name__)

FINAL = "final"  # the head name of the model's own output
CANVAS_MULTIPLE = 32  # "whole"/"sliding" canvases are rounded up to a multiple of this (+1): few shapes


def network_size(size: int) -> int:
    """The smallest 8k + 1 >= size: the seed grid's corners then sit on the image's corners."""
    return OUTPUT_STRIDE * max(-(-(size - 1) // OUTPUT_STRIDE), 0) + 1


def canvas_size(size: int) -> int:
    """The "whole"/"sliding" canvas side for images up to `size` pixels: a multiple of 32, plus 1."""
    return CANVAS_MULTIPLE * max(-(-(size - 1) // CANVAS_MULTIPLE), 1) + 1


def _softmax(logits):
    return jax.tree.map(lambda x: jax.nn.softmax(x.astype(jnp.float32), axis=-1), logits)


def multiscale_probabilities(logits_fn: Callable[[jax.Array], Any], images: jax.Array, *,
                             scales: Sequence[float] = (1.0,), flip: bool = False,
                             probabilities_fn: Callable[[jax.Array], Any] | None = None) -> Any:
    """Mean softmax of `logits_fn` over `scales` x (identity[, horizontal flip]), at the input size.

    Args:
      logits_fn: normalised images (B, h, w, 3) -> logits (B, h, w, K), or a dict of such
        heads, any h, w = 8k + 1.
      images: normalised images (B, H, W, 3); padding, if any, is part of them.
      scales: resize factors of the images.
      flip: also run on the mirrored images (their outputs are mirrored back).
      probabilities_fn: used instead of softmax(logits_fn) when given (sliding windows).

    Returns:
      (B, H, W, K) float32 probabilities (a dict of them when logits_fn returns a dict).
    """
    probabilities_fn = probabilities_fn or (lambda x: _softmax(logits_fn(x)))
    height, width = images.shape[1:3]
    total, count = None, 0
    for scale in scales:
        size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
        scaled = images if size == (height, width) else resize_bilinear(images, size)
        padding = ((0, 0), (0, network_size(size[0]) - size[0]), (0, network_size(size[1]) - size[1]), (0, 0))
        for mirrored in (False, True) if flip else (False,):
            inputs = scaled[:, :, ::-1] if mirrored else scaled
            probabilities = jax.tree.map(lambda p, size=size: p[:, : size[0], : size[1]],
                                         probabilities_fn(jnp.pad(inputs, padding)))
            if mirrored:
                probabilities = jax.tree.map(lambda p: p[:, :, ::-1], probabilities)
            if size != (height, width):
                probabilities = jax.tree.map(lambda p: resize_bilinear(p, (height, width)), probabilities)
            total = probabilities if total is None else jax.tree.map(jnp.add, total, probabilities)
            count += 1
    return jax.tree.map(lambda t: t / count, total)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window origins along an axis of `length` >= `window`: every `stride`, the last flush with the end."""
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


Offset = tuple[int, int]  # (s, t): a pair map's channel relates pixel (i, j) to (i + s, j + t)


def pair_mask(window: int, offsets: Sequence[Offset]) -> np.ndarray:
    """(window, window, C) float32: 1 where channel c's neighbour (i + s_c, j + t_c) lies inside the window."""
    index = np.arange(window)
    inside = lambda shift: (index + shift >= 0) & (index + shift < window)
    return np.stack([inside(s)[:, None] & inside(t)[None, :] for s, t in offsets], -1).astype(np.float32)


def stitch_windows(outputs_fn: Callable[[jax.Array], tuple[Any, Mapping[str, jax.Array]]], images: jax.Array, *,
                   window: int, stride: int, pair_offsets: Mapping[str, Sequence[Offset]] | None = None
                   ) -> tuple[Any, dict[str, jax.Array]]:
    """`outputs_fn` of `window` x `window` crops `stride` apart, stitched to the images' size.

    outputs_fn: crops (B, window, window, 3) -> (pixel outputs, pair maps): the first a pytree
    of (B, window, window, C) maps of each pixel (the heads' probabilities), averaged over the
    windows that hold the pixel; the second {name: (B, window, window, C)} logits of pixel
    pairs, channel c relating pixel p to p + pair_offsets[name][c] (affinity logits).

    A pair map is averaged over the windows that hold *both* pixels of the pair: a window that
    holds p but not its neighbour predicts the pair without having seen the neighbour (it sees
    the window's edge), and training never supervises such pairs (`affinity.affinity_targets`
    marks a neighbour outside the crop invalid), so those predictions are left out. Where no
    window holds both pixels (the neighbour is off the canvas, or windows overlap by less than
    the offset) the stitched logit is -inf: affinity 0 under any sigmoid, so the pair adds
    nothing to propagation, as the oracle's invalid pairs and off-image neighbours do. The
    averaging is over logits (the model's output), the probabilities' over softmax outputs.

    The images are padded (with 0, the mean colour after normalisation) to at least the window;
    every pixel is covered by at least one window. When one window covers the images the pixel
    outputs are `outputs_fn(images)`'s, and so are the pair maps wherever the neighbour is inside.
    """
    pair_offsets = {name: tuple(map(tuple, offsets)) for name, offsets in (pair_offsets or {}).items()}
    batch, height, width, _ = images.shape
    padded_h, padded_w = max(height, window), max(width, window)
    images = jnp.pad(images, ((0, 0), (0, padded_h - height), (0, padded_w - width), (0, 0)))
    masks = {name: pair_mask(window, offsets) for name, offsets in pair_offsets.items()}
    total, pair_total, count = None, {}, jnp.zeros((padded_h, padded_w), jnp.float32)
    pair_count = {name: jnp.zeros((padded_h, padded_w, mask.shape[-1]), jnp.float32) for name, mask in masks.items()}
    for top in window_starts(padded_h, window, stride):
        for left in window_starts(padded_w, window, stride):
            crop, pairs = outputs_fn(images[:, top : top + window, left : left + window])
            if set(pairs) != set(masks):
                raise ValueError(f"pair maps {sorted(pairs)} differ from the declared {sorted(masks)}")
            if total is None:
                total = jax.tree.map(lambda p: jnp.zeros((batch, padded_h, padded_w, p.shape[-1]), p.dtype), crop)
                pair_total = {name: jnp.zeros((batch, padded_h, padded_w, mask.shape[-1]), jnp.float32)
                              for name, mask in masks.items()}
            rows, cols = slice(top, top + window), slice(left, left + window)
            total = jax.tree.map(lambda t, p, rows=rows, cols=cols: t.at[:, rows, cols].add(p), total, crop)
            count = count.at[rows, cols].add(1.0)
            for name, mask in masks.items():
                if pairs[name].shape[1:] != mask.shape:
                    raise ValueError(f"pair map {name!r} is {pairs[name].shape[1:]}; the window and its "
                                     f"{mask.shape[-1]} offsets need {mask.shape}")
                pair_total[name] = pair_total[name].at[:, rows, cols].add(mask * pairs[name].astype(jnp.float32))
                pair_count[name] = pair_count[name].at[rows, cols].add(mask)
    pixels = jax.tree.map(lambda t: (t / count[None, :, :, None])[:, :height, :width], total)
    stitched = {name: jnp.where(pair_count[name] > 0, pair_total[name] / jnp.maximum(pair_count[name], 1.0),
                                -jnp.inf)[:, :height, :width] for name in masks}
    return pixels, stitched


def sliding_window_probabilities(probabilities_fn: Callable[[jax.Array], Any], images: jax.Array, *, window: int,
                                 stride: int) -> Any:
    """Probabilities of `window` x `window` crops `stride` apart, averaged where they overlap (`stitch_windows`).

    When one window covers the images this is `probabilities_fn(images)` itself.
    """
    return stitch_windows(lambda x: (probabilities_fn(x), {}), images, window=window, stride=stride)[0]


def heads_and_intermediates(model, family: Family | None, variables: dict[str, Any],
                            images: jax.Array) -> tuple[dict[str, jax.Array], Mapping[str, Any]]:
    """(`head_logits`, the model's intermediates) of one forward pass in eval mode."""
    logits, intermediates = model.apply(variables, images, train=False)
    heads = {FINAL: logits}
    if family is not None:
        for name, head in family.extra_predictions(intermediates).items():
            heads[name] = resize_bilinear(head.astype(jnp.float32), images.shape[1:3])
    return heads, intermediates


def head_logits(model, family: Family | None, variables: dict[str, Any], images: jax.Array) -> dict[str, jax.Array]:
    """{'final': the model's logits, head: each of the family's extra predictions resized to the images}."""
    return heads_and_intermediates(model, family, variables, images)[0]


@functools.partial(jax.jit, static_argnames=("model", "scales", "flip"))
def model_probabilities(model, variables: dict[str, Any], images: jax.Array, scales: tuple[float, ...] = (1.0,),
                        flip: bool = False) -> jax.Array:
    """`multiscale_probabilities` of the final output of any family's model in eval mode, jit-compiled."""
    logits_fn = lambda x: model.apply(variables, x, train=False)[0]
    return multiscale_probabilities(logits_fn, images, scales=scales, flip=flip)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How a split is evaluated (see the module docstring)."""

    mode: str = "pad"
    eval_size: int = 505  # the "pad" canvas
    window: int = 321  # "sliding": the window side (the training crop)
    stride: int = 214  # "sliding": pixels between windows
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    # How images become the network's input (config.data.normalization): required, so that no path feeds another.
    normalization: Normalization = dataclasses.field(kw_only=True)

    def __post_init__(self):
        if self.mode not in EVAL_MODES:
            raise ValueError(f"evaluation mode must be one of {EVAL_MODES}, got {self.mode!r}")

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, **overrides) -> EvalOptions:
        """The options config.data describes (configs saved before eval_mode / normalization existed: "pad",
        "imagenet")."""
        settings = {"mode": data.get("eval_mode", "pad"), "eval_size": data.eval_size, "window": data.crop_size,
                    "stride": data.get("eval_stride", data.crop_size * 2 // 3),
                    "normalization": normalization_of(data)}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        settings["scales"] = tuple(float(s) for s in settings.get("scales", (1.0,)))
        return cls(**settings)

    def canvas(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The (height, width) a batch of images of `sizes` is padded to."""
        if self.mode == "pad":
            return self.eval_size, self.eval_size
        height = canvas_size(max([h for h, _ in sizes] or [1]))
        width = canvas_size(max([w for _, w in sizes] or [1]))
        if self.mode == "sliding":
            height, width = max(height, self.window), max(width, self.window)
        return height, width


def eval_batches_with_sizes(data_source, *, batch_size: int, options: EvalOptions) -> Iterator[dict[str, np.ndarray]]:
    """Padded batches in order with each image's 'size' (h, w) and 'id'; void fillers have size (0, 0).

    The canvas is `options.canvas` of the batch's sizes; "pad" refuses an image larger than its canvas,
    naming it. Images are padded with, and normalised by, `options.normalization`.
    """
    for start in range(0, len(data_source), batch_size):
        elements = [data_source[i] for i in range(start, min(start + batch_size, len(data_source)))]
        sizes = [tuple(e["image"].shape[:2]) for e in elements]
        height, width = options.canvas(sizes)
        images, labels, ids = [], [], []
        for offset, element in enumerate(elements):
            raw_id = element.get("id", str(start + offset))
            ids.append(raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id))
            image, label = element["image"], element["label"]
            label = label[..., 0] if label.ndim == 3 else label
            if image.shape[0] > height or image.shape[1] > width:
                raise ValueError(f"image {ids[-1]!r} is {image.shape[:2]}, larger than the evaluation canvas "
                                 f"{height}x{width}: raise data.eval_size or use data.eval_mode=whole|sliding")
            image, label = pipeline.pad_to(image, label, height, width, options.normalization)
            images.append(pipeline.normalize(image, options.normalization))
            labels.append(label.astype(np.int32))
        count = len(images)
        while len(images) < batch_size:
            images.append(np.zeros((height, width, 3), np.float32))
            labels.append(np.full((height, width), IGNORE_LABEL, np.int32))
            sizes.append((0, 0))
        yield {"image": np.stack(images), "label": np.stack(labels), "size": np.asarray(sizes, np.int32),
               "id": np.asarray(ids), "count": count}


@dataclasses.dataclass
class EvalResult:
    confusion: np.ndarray  # of the final output (after the CRF, if any)
    num_images: int
    seconds: float
    postprocess_seconds: float = 0.0
    head_confusions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # extra heads, refinements
    predictions: np.ndarray | None = None  # (num_images, H, W) uint8, padded canvas
    labels: np.ndarray | None = None
    sizes: np.ndarray | None = None
    ids: np.ndarray | None = None


Reads = tuple[tuple[str, tuple[Offset, ...] | None], ...]  # (intermediate, its pair offsets or None)


@dataclasses.dataclass(frozen=True)
class Refinement:
    """A head computed from the final probabilities, once, on the whole canvas (affinity propagation, its oracle).

    refine: (final probabilities, maps, images, labels) -> refined probabilities, all on the
        canvas; `maps` holds the model intermediates named in `reads` at single scale,
        stitched under sliding windows (`stitch_windows`).
    reads: (name, offsets) of each intermediate `refine` reads: offsets None for a map of
        pixels, else the neighbour offset (s, t) of each channel: a map of pixel pairs'
        logits (affinity logits, `affinity.neighbour_offsets` order).
    A plain callable given to `Evaluator` is a Refinement that reads no intermediates.
    """

    refine: Callable[[jax.Array, Mapping[str, jax.Array], jax.Array, jax.Array], jax.Array]
    reads: Reads = ()

    def __post_init__(self):
        reads = tuple((str(name), None if offsets is None else tuple((int(s), int(t)) for s, t in offsets))
                      for name, offsets in self.reads)
        object.__setattr__(self, "reads", reads)  # hashable: part of the memoised functions' key

    def __call__(self, probabilities, maps, images, labels):
        return self.refine(probabilities, maps, images, labels)


def _memoised(builder, *key):
    """builder(*key) from its module-level cache; built afresh when the key is unhashable."""
    try:
        hash(key)
    except TypeError:
        return builder.__wrapped__(*key)
    return builder(*key)


@functools.lru_cache(maxsize=16)
def _network_function(model, family: Family | None, options: EvalOptions, reads: Reads) -> Callable:
    """jit (variables, images) -> ({head: probabilities}, {name: map of `reads`}) on the options' canvas.

    One function per (model, family, options, reads) for the process, like big_vision's
    evaluators: Linen modules and the options compare by value, so equal ones share it.
    """
    if reads and (options.scales != (1.0,) or options.flip):
        raise ValueError("model maps (refinements) are read at single scale, unflipped")
    pixel_maps = tuple(name for name, offsets in reads if offsets is None)
    pair_offsets = {name: offsets for name, offsets in reads if offsets is not None}

    def outputs(variables, images):
        heads, intermediates = heads_and_intermediates(model, family, variables, images)
        missing = sorted(set(dict(reads)) - set(intermediates))
        if missing:
            raise ValueError(f"refinements read intermediates {missing} the model does not return "
                             f"(it returns {sorted(intermediates)})")
        maps = lambda names: {name: intermediates[name].astype(jnp.float32) for name in names}
        return (_softmax(heads), maps(pixel_maps)), maps(pair_offsets)

    def network(variables, images):
        outputs_fn = functools.partial(outputs, variables)
        if options.mode == "sliding":
            outputs_fn = functools.partial(stitch_windows, outputs_fn, window=options.window, stride=options.stride,
                                           pair_offsets=pair_offsets)
        (heads, pixels), pairs = multiscale_probabilities(None, images, scales=options.scales, flip=options.flip,
                                                          probabilities_fn=outputs_fn)
        return heads, {**pixels, **pairs}

    return jax.jit(network)


@functools.lru_cache(maxsize=16)
def _refine_function(refinements: tuple[tuple[str, Refinement], ...]) -> Callable:
    """jit (final probabilities, maps, images, labels) -> {name: refined probabilities}."""
    return jax.jit(lambda final, maps, images, labels: {name: refinement(final, maps, images, labels)
                                                        for name, refinement in refinements})


@functools.lru_cache(maxsize=16)
def _confusion_function(num_classes: int, replicated: NamedSharding) -> Callable:
    """jit (labels, heads, keep) -> ({head: confusion matrix}, final predictions uint8 if keep)."""

    def confusions(labels, heads, keep: bool):
        predictions = {name: jnp.argmax(p, axis=-1) for name, p in heads.items()}
        matrices = {name: metrics.confusion_matrix(labels, p, num_classes) for name, p in predictions.items()}
        return matrices, (predictions[FINAL].astype(jnp.uint8) if keep else None)

    return jax.jit(confusions, static_argnames=("keep",), out_shardings=replicated)


class Evaluator:
    """Confusion matrices of a model over a split, for every head, on the run's device mesh.

    One instance serves the training loop (`Trainer.evaluator`) and `evaluate_workdir`:
    same canvas, same batches, same arithmetic, so both report the same mIoU for the same
    checkpoint. `refinements` add heads computed from the final probabilities and the
    single-scale model maps they read (affinity propagation, its ground-truth oracle), in
    every canvas mode. Its compiled functions are shared with every equal Evaluator
    (`_network_function`).
    """

    def __init__(self, model, family: Family | None, num_classes: int, options: EvalOptions, *,
                 data_sharding: NamedSharding | None = None,
                 refinements: Mapping[str, Refinement | Callable] | None = None,
                 postprocess: Callable[[jax.Array, np.ndarray, np.ndarray], jax.Array] | None = None):
        self.model, self.family, self.num_classes, self.options = model, family, num_classes, options
        self.refinements = {name: r if isinstance(r, Refinement) else Refinement(r)
                            for name, r in (refinements or {}).items()}
        self.postprocess = postprocess
        if self.refinements and (options.scales != (1.0,) or options.flip):
            raise ValueError(f"refinements (--propagate, --propagate_oracle) need single-scale, unflipped evaluation, "
                             f"not scales {list(options.scales)}{' + flip' if options.flip else ''}: drop "
                             "--scales/--flip (every eval mode works)")
        reads: dict[str, Any] = {}
        for refinement in self.refinements.values():
            for name, offsets in refinement.reads:
                if reads.setdefault(name, offsets) != offsets:
                    raise ValueError(f"refinements read intermediate {name!r} with different offsets")
        self.reads: Reads = tuple(sorted(reads.items()))
        mesh = data_sharding.mesh if data_sharding is not None else jax.sharding.Mesh(np.array(jax.devices()),
                                                                                     ("data",))
        self.data_sharding = data_sharding or NamedSharding(mesh, P("data"))
        self._network = _memoised(_network_function, model, family, options, self.reads)
        self._refine = _memoised(_refine_function, tuple(self.refinements.items())) if self.refinements else None
        self._confusions = _memoised(_confusion_function, num_classes, NamedSharding(mesh, P()))

    def _heads(self, variables, images, labels):
        """Every head's probabilities on the canvas: the model's, then each refinement's (on the whole canvas)."""
        heads, maps = self._network(variables, images)
        if self._refine is not None:
            heads = {**heads, **self._refine(heads[FINAL], maps, images, labels)}
        return heads

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.data_sharding, local)

    def evaluate(self, variables: dict[str, Any], data_source, *, batch_size: int, keep_predictions: bool = False,
                 log_every: int = 5, log_progress: bool = True) -> EvalResult:
        """Summed confusion matrices over `data_source`; `batch_size` is global (all hosts)."""
        hosts = jax.process_count()
        if (self.postprocess is not None or keep_predictions) and hosts > 1:
            raise NotImplementedError("the dense CRF and --save_predictions need a single-process evaluation")
        if batch_size % jax.device_count():
            raise ValueError(f"evaluation batch size {batch_size} must be divisible by the "
                             f"{jax.device_count()} devices")
        per_host, offset = batch_size // hosts, jax.process_index() * (batch_size // hosts)
        confusions: dict[str, np.ndarray] = {}
        kept: dict[str, list] = {"predictions": [], "labels": [], "sizes": [], "ids": []}
        total, done, post_seconds, start = len(data_source), 0, 0.0, time.perf_counter()
        for batch_index, batch in enumerate(eval_batches_with_sizes(data_source, batch_size=batch_size,
                                                                    options=self.options)):
            images = self._global(batch["image"][offset : offset + per_host])
            labels = self._global(batch["label"][offset : offset + per_host])
            heads = self._heads(variables, images, labels)
            if self.postprocess is not None:
                post_start = time.perf_counter()
                refined = jax.block_until_ready(self.postprocess(heads[FINAL], batch["image"], batch["size"]))
                heads[FINAL] = jax.device_put(refined, self.data_sharding)
                post_seconds += time.perf_counter() - post_start
            batch_confusions, predictions = self._confusions(labels, heads, keep=keep_predictions)
            for name, matrix in batch_confusions.items():
                confusions[name] = confusions.get(name, 0) + np.asarray(matrix, np.int64)
            count = batch["count"]
            done += count
            if keep_predictions:
                kept["predictions"].append(np.asarray(predictions)[:count])
                kept["labels"].append(batch["label"][:count].astype(np.uint8))
                kept["sizes"].append(batch["size"][:count])
                kept["ids"].append(batch["id"][:count])
            if log_progress and ((batch_index + 1) % log_every == 0 or done == total):
                elapsed = time.perf_counter() - start
                log.info("evaluated %d/%d images (%.0f%%), %.1fs, ETA %.0fs, running mIoU %.4f", done, total,
                         100.0 * done / total, elapsed, elapsed / done * (total - done),
                         metrics.summarize(confusions[FINAL])["miou"])
        if not confusions:
            raise ValueError("the evaluation split is empty")
        final = confusions.pop(FINAL)
        result = EvalResult(final, done, time.perf_counter() - start, post_seconds, head_confusions=confusions)
        if keep_predictions and done and len({p.shape for p in kept["predictions"]}) == 1:
            result.predictions = np.concatenate(kept["predictions"])
            result.labels = np.concatenate(kept["labels"])
            result.sizes = np.concatenate(kept["sizes"])
            result.ids = np.concatenate(kept["ids"])
        elif keep_predictions and done:
            log.warning("predictions of different canvas sizes are not saved (eval_mode=%s)", self.options.mode)
        return result


def head_mious(result: EvalResult) -> dict[str, float]:
    """mIoU of every extra head and refinement, the numbers in their names in numeric order (oracle_T3 before
    oracle_T10; jit hands the heads back sorted as strings)."""
    def numeric_order(name: str) -> list:  # text and digits alternate: ['oracle_T', 10, '']
        return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]

    return {name: metrics.summarize(result.head_confusions[name])["miou"]
            for name in sorted(result.head_confusions, key=numeric_order)}
