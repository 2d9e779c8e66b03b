"""The config of a trained run for the evaluation, prediction and mechanism CLIs.

--config if given, else WORKDIR/config.json with any key added to the configs since
the run was trained filled in from `experiments/configs/voc.py:<the run's arg>`.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import voc


def run_config(workdir: str, config: ml_collections.ConfigDict | None = None,
               data_dir: str | None = None) -> ml_collections.ConfigDict:
    """The run's config; `data_dir` overrides config.data.data_dir (where the TFDS data is)."""
    from difnet_jax.trained_run import load_config  # here: the CLIs' flag errors cost no import
    if config is None:
        config = load_config(workdir)
        if "arg" in config:
            config = load_config(workdir, defaults=voc.get_config(config.arg))
    if data_dir is not None:
        config.data.data_dir = data_dir  # an existing key: allowed on a locked config too
    return config
