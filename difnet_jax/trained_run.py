"""A trained run rebuilt from its workdir, and the same run as a Python object for notebooks.

`load_run(workdir)` -> `Run` (config, class names, trainer, restored state) is what evaluation,
prediction and the studies take; `difnet_jax.load(workdir)` -> `TrainedModel` wraps it for
notebooks and scripts:

    import difnet_jax
    model = difnet_jax.load("runs/difnet18_synthetic")    # the latest checkpoint; step=N for another
    labels = model.predict(image)                          # (H, W) uint8 class indices of an (H, W, 3) uint8 image
    probabilities = model.probabilities(image)             # (H, W, K) float32
    walks = model.intermediates(image)["walks"]            # DifNet's y_1..y_T on the seed grid

Images are RGB uint8 arrays, one (H, W, 3) or a batch (B, H, W, 3) of one size; each call pads
them (mean colour, bottom/right) to the network size 8k + 1 of each side
(`evaluator.network_size`), runs `evaluator.model_probabilities` (the evaluation's own
arithmetic, optionally multi-scale and flipped) and crops back. It runs on whatever devices
JAX has; a new image size compiles once.

`train_and_evaluate` writes WORKDIR/config.json (`ConfigDict.to_json_best_effort`) and
Orbax checkpoints under WORKDIR/checkpoints/<step>; `load_run` reads both back for
evaluation, prediction and the mechanism study.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds

import difnet_jax.data  # noqa: F401  (registers the builders)
from difnet_jax import config_compat, train, workdir_lock
from difnet_jax.config_checks import check_config
from difnet_jax.data import normalization, pipeline
from difnet_jax.evaluation.evaluator import model_probabilities, network_size
from difnet_jax.models import dataset_facts
from difnet_jax.run_log import MetricsLog, format_seconds
from difnet_jax.user_errors import ArgumentError, MissingPathError

log = logging.getLogger(__name__)


def load_config(workdir: str, defaults: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The run's config from WORKDIR/config.json (lists stand where the config had tuples).

    Keys missing from the file (added to the configs after the run was trained) are
    taken from `defaults`, e.g. `get_config(saved['arg'])`; the file wins everywhere else.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        _require_workdir(workdir)
        raise MissingPathError(f"{path} not found: {workdir!r} is not the workdir of a run trained with "
                               "python -m experiments.voc (or pass --config)")
    with open(path) as f:
        saved = config_compat.upgrade_saved(json.load(f))
    if defaults is not None:
        saved = _fill_missing(saved, defaults.to_dict())
    return ml_collections.ConfigDict(saved)


def _require_workdir(workdir: str) -> None:
    if not os.path.isdir(workdir):
        raise MissingPathError(f"workdir {workdir!r} does not exist: pass the workdir of a trained run")


def _fill_missing(saved: dict, defaults: dict) -> dict:
    merged = dict(saved)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = list(value) if isinstance(value, tuple) else value
            log.info("config.json has no %r; using the default %r", key, value)
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _fill_missing(merged[key], value)
    return merged


def dataset_class_names(config: ml_collections.ConfigDict) -> list[str]:
    """Class names from the dataset builder's metadata; the dataset need not be prepared."""
    builder = tfds.builder(pipeline.builder_name(config.data.name), data_dir=config.data.data_dir or None,
                           file_format="array_record")
    return list(builder.info.metadata["class_names"])


@dataclasses.dataclass(frozen=True)
class Run:
    """A restored run: its config, model, variables and the checkpoint step."""

    workdir: str
    config: ml_collections.ConfigDict
    trainer: train.Trainer
    state: train.TrainState
    step: int
    class_names: list[str]

    @property
    def model(self):
        return self.trainer.model

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.state.params, "batch_stats": self.state.batch_stats}


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None, step: int | None = None) -> Run:
    """Restores checkpoint `step` (default: the latest) of the run in `workdir`.

    A missing workdir, a workdir without checkpoints and a step it lacks are user errors
    (`user_errors`), raised before the model is built.
    """
    _require_workdir(workdir)
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise MissingPathError(_no_checkpoints(workdir, config))
    config = config if config is not None else load_config(workdir)
    check_config(config)
    manager = train.checkpoint_manager(workdir, config)
    steps = sorted(manager.all_steps())
    if not steps:
        raise MissingPathError(_no_checkpoints(workdir, config))
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ArgumentError(f"no checkpoint for step {step} in {workdir!r}; its steps: "
                            f"{', '.join(map(str, steps))} (leave the step out for the latest)")
    class_names = dataset_class_names(config)
    # the facts the run trained with: read as in training (from the stats file, or stored with the dataset)
    trainer = train.Trainer(config, len(class_names), facts=dataset_facts(config.model))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))
    manager.close()
    log.info("Restored %s-%d from %s at step %d.", config.model.name, config.model.depth, workdir, step)
    return Run(workdir=workdir, config=config, trainer=trainer, state=restored["state"], step=int(step),
               class_names=class_names)


def _no_checkpoints(workdir: str, config: ml_collections.ConfigDict | None) -> str:
    """Why `workdir` has no checkpoint: a training there has not reached its first one yet, or none ran."""
    holder = workdir_lock.training_in(workdir)
    if holder is None:
        return f"no checkpoints in {workdir!r}: train a run there first (python -m experiments.voc)"
    try:
        train_cfg = (config if config is not None else load_config(workdir)).train
        first = min(train_cfg.checkpoint_every, train_cfg.num_steps)
    except (OSError, ValueError, KeyError, AttributeError):  # config.json not written yet
        return (f"no checkpoints in {workdir!r} yet: a training is running there ({workdir_lock.describe(holder)}) "
                "and has not saved its first checkpoint: evaluate once it has")
    records = MetricsLog.read(workdir) if os.path.isfile(os.path.join(workdir, "metrics.jsonl")) else []
    rates = [r for r in records if r.get("steps_per_sec")]
    when = ""
    if rates and rates[-1]["step"] < first:
        last = rates[-1]
        seconds = (first - last["step"]) / last["steps_per_sec"]
        when = f", in about {format_seconds(seconds)} at step {last['step']}'s {last['steps_per_sec']:.2f} steps/s"
    return (f"no checkpoints in {workdir!r} yet: a training is running there ({workdir_lock.describe(holder)}); its "
            f"first checkpoint comes at step {first} (config.train.checkpoint_every={train_cfg.checkpoint_every}"
            f"{when}) or when it is stopped: evaluate then")


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """(B, H, W, 3) uint8 and whether a single image was given; ValueError naming the shape or dtype."""
    array = np.asarray(images)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"images must be (H, W, 3) or (B, H, W, 3) RGB arrays, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {array.dtype}")
    return (array[None], True) if array.ndim == 3 else (array, False)


class TrainedModel:
    """A restored run (`load`): segments images, exposes the model's intermediates.

    Attributes: `config` (the run's ConfigDict), `class_names`, `step` (the checkpoint's),
    `model` (the Linen module), `variables` ({'params', 'batch_stats'}), `run` (the
    `Run`, for code that takes one, e.g. `mechanism.run_study`).
    """

    def __init__(self, run: Run):
        self.run = run
        self._forward = jax.jit(lambda variables, images: run.model.apply(variables, images, train=False))

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.run.config

    @property
    def class_names(self) -> list[str]:
        return self.run.class_names

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def model(self):
        return self.run.model

    @property
    def variables(self) -> dict[str, Any]:
        return self.run.variables

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(self.run.state.params))

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.model.name}-{self.config.model.depth} on {self.config.data.name}, "
                f"step {self.step}, {len(self.class_names)} classes, workdir {self.run.workdir!r})")

    def _network_input(self, batch: np.ndarray) -> jax.Array:
        height, width = batch.shape[1:3]
        blank = np.zeros((height, width), np.uint8)
        norm = normalization.of_config(self.config.data)  # the run's input: imagenet or caffe_bgr
        padded = [pipeline.pad_to(image, blank, network_size(height), network_size(width), norm)[0] for image in batch]
        return jnp.asarray(pipeline.normalize(np.stack(padded), norm))

    def probabilities(self, images: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = False
                      ) -> np.ndarray:
        """Softmax probabilities (H, W, K) or (B, H, W, K) float32, averaged over `scales` (and flips)."""
        batch, single = _as_batch(images)
        height, width = batch.shape[1:3]
        probabilities = model_probabilities(self.model, self.variables, self._network_input(batch),
                                            tuple(float(s) for s in scales), flip)
        probabilities = np.asarray(jax.device_get(probabilities[:, :height, :width]), np.float32)
        return probabilities[0] if single else probabilities

    def predict(self, images: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = False) -> np.ndarray:
        """Class indices (H, W) or (B, H, W) uint8: the argmax of `probabilities`."""
        return self.probabilities(images, scales=scales, flip=flip).argmax(-1).astype(np.uint8)

    def intermediates(self, images: np.ndarray) -> dict[str, Any]:
        """The model's intermediates dict as numpy arrays (single scale), e.g. DifNet's 'seed', 'walks', 'mu',
        'beta', PDN's 'layer_logits', DeepLabv3+'s 'affinity_logits'.

        Maps cover the padded input, network_size(H) x network_size(W), the image in its
        top-left corner (a stride-8 grid: (network_size - 1) / 8 + 1 cells a side). For one
        image the per-image maps (arrays of 3 or more axes) lose their batch axis.
        """
        batch, single = _as_batch(images)
        _, intermediates = jax.device_get(self._forward(self.variables, self._network_input(batch)))
        if single:
            intermediates = jax.tree.map(lambda x: x[0] if np.ndim(x) >= 3 else x, intermediates)
        return intermediates


def load(workdir: str, step: int | None = None, *, config: ml_collections.ConfigDict | None = None
         ) -> TrainedModel:
    """The run in `workdir` at checkpoint `step` (default: the latest), with its config.json unless `config`."""
    return TrainedModel(load_run(workdir, config, step))
