"""Trains and evaluates a segmentation model: a thin entry point over `train_and_evaluate`.

  python -m experiments.voc --config=experiments/configs/voc.py:difnet18,synthetic --workdir=/tmp/difnet18
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from difnet_jax import train
from difnet_jax.config_checks import check_config

log = logging.getLogger(__name__)
_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, with :ARG.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for name in ("difnet_jax", __name__):
        logging.getLogger(name).setLevel(logging.INFO)
    config = _CONFIG.value
    check_config(config)
    result = train.train_and_evaluate(config, _WORKDIR.value)
    log.info("Final validation mIoU %.4f (pixel accuracy %.4f) at step %d; workdir %s",
                 result["val/miou"], result["val/pixel_accuracy"], result["step"], _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
