"""A trained run rebuilt from its workdir: config.json, the class names, a restored checkpoint.

`train_and_evaluate` writes WORKDIR/config.json (`ConfigDict.to_json_best_effort`) and
Orbax checkpoints under WORKDIR/checkpoints/<step>; `load_run` reads both back for
evaluation, prediction and the mechanism study.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
import tensorflow_datasets as tfds

import difnet_jax.data  # noqa: F401  (registers the builders)
from difnet_jax import config_compat, train
from difnet_jax.config_checks import check_config
from difnet_jax.data import pipeline

log = logging.getLogger(__name__)


def load_config(workdir: str, defaults: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
    """The run's config from WORKDIR/config.json (lists stand where the config had tuples).

    Keys missing from the file (added to the configs after the run was trained) are
    taken from `defaults`, e.g. `get_config(saved['arg'])`; the file wins everywhere else.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or a workdir written by experiments.voc")
    with open(path) as f:
        saved = config_compat.upgrade_saved(json.load(f))
    if defaults is not None:
        saved = _fill_missing(saved, defaults.to_dict())
    return ml_collections.ConfigDict(saved)


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
    """Restores checkpoint `step` (default: the latest) of the run in `workdir`."""
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(f"no checkpoints in {workdir!r}: train a run there first (python -m experiments.voc)")
    config = config if config is not None else load_config(workdir)
    check_config(config)
    class_names = dataset_class_names(config)
    trainer = train.Trainer(config, len(class_names))
    manager = train.checkpoint_manager(workdir, config)
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {workdir!r}/checkpoints")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {workdir!r}; available: {steps}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))
    manager.close()
    log.info("Restored %s-%d from %s at step %d.", config.model.name, config.model.depth, workdir, step)
    return Run(workdir=workdir, config=config, trainer=trainer, state=restored["state"], step=int(step),
               class_names=class_names)
