"""Trains and evaluates a segmentation model: a thin entry point over `train_and_evaluate`.

  python -m experiments.voc --config=experiments/configs/voc.py:difnet18,synthetic --workdir=runs/difnet18

Several hosts: run the same command on every host with --distributed (TPU pods, SLURM and
other clusters JAX detects by itself) or with --coordinator_address/--num_processes/--process_id.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags
from ml_collections import config_flags

from difnet_jax.config_checks import check_config
from experiments import cli

log = logging.getLogger(__name__)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, with :ARG.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a manual multi-host run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a manual multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a manual multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])
cli.mark_flags_as_nonempty(["workdir"])


def main():
    config = _CONFIG.value
    check_config(config)  # Before anything else: a bad value must cost nothing (not even this import).
    from difnet_jax import train
    from difnet_jax.backbone_weights import pretraining

    if _DISTRIBUTED.value or _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if jax.process_index() == 0:  # Other hosts log warnings only.
        for name in ("difnet_jax", __name__):
            logging.getLogger(name).setLevel(logging.INFO)
    if not os.path.isdir(os.path.join(_WORKDIR.value, "checkpoints")):  # a fresh run: its backbone weights first
        pretraining.ensure_weights(config.model, config.data.data_dir)  # `pretrained`: made once, when missing
    result = train.train_and_evaluate(config, _WORKDIR.value)
    if "stopped_by" in result:  # train_and_evaluate said where it stopped and what to do
        return
    log.info("Final validation mIoU %.4f (pixel accuracy %.4f) at step %d; workdir %s",
             result["val/miou"], result["val/pixel_accuracy"], result["step"], _WORKDIR.value)


def run() -> None:
    cli.run(main, info_loggers=())  # main logs INFO on process 0 only


if __name__ == "__main__":
    run()
