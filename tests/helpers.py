"""What several test modules build the same way (no test module imports another): the tiny config of the
shared runs and an affinity-statistics file for building models with a Dilated Affinity head."""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from experiments.configs.voc import get_config

TINY = "synthetic_shapes/tiny"


def tiny_config(data_dir: str, arg: str = "difnet18,synthetic") -> ml_collections.ConfigDict:
    """`arg` at test size: width 8, two ASPP rates, the tiny dataset, crop 33, batch 4."""
    config = get_config(arg)
    config.model.width = 8
    config.model.aspp_rates = (1, 2)
    config.data.name = TINY
    config.data.data_dir = data_dir
    config.data.crop_size = 33
    config.train.batch_size = 4
    config.train.eval_batch_size = 8
    config.train.log_every = 2
    return config


def write_affinity_stats(model: ml_collections.ConfigDict, directory: str) -> str:
    """Points a DeepLabv3+ affinity head at statistics of its own (an all-background label map), so that its
    build needs no prepared dataset; returns the file."""
    from difnet_jax.models import affinity

    own = model.deeplabv3plus
    rates = affinity.expand_rates(tuple(own.affinity_rates))
    stats = affinity.count_neighbours(np.zeros((1, 41, 41), np.int32), rates)
    path = os.path.join(directory, "affinity_stats.json")
    with open(path, "w") as f:
        json.dump({"rates": affinity.stats_to_json(stats)}, f)
    own.affinity_stats = path
    return path
