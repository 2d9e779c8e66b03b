"""Run in a subprocess by test_scaling.py: trains the same steps on 1 and 8 simulated CPU devices (one image per
device: the most shards the global batch allows, so BN statistics and gradients are averaged over the most places;
2 devices, a subset of that reduction, cost a third of the test's time and were dropped).

The initial state is made once (on 1 device) and placed on each mesh, replicated as `Trainer.init`
places it: what is compared is the train steps (each mesh compiling its own initialiser too would
cost a third more of the test's time).

Prints one JSON line: the max differences of params and BN statistics against 1 device (per array,
relative to its largest value where that exceeds 1),
and the per-step losses of each device count.
"""

import json
import sys

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before any backend is initialised

import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from difnet_jax import train  # noqa: E402
from experiments.configs.voc import get_config  # noqa: E402


def run(num_devices, initial=None, steps=3):
    config = get_config("difnet18,synthetic")
    config.model.width = 8
    config.model.aspp_rates = (1, 2)
    config.data.crop_size = 33
    config.train.batch_size = 8
    # SGD, not the synthetic AdamW: Adam turns rounding-level gradient differences of near-zero
    # gradients into full-size updates, which would hide what this compares.
    config.train.optimizer = "sgd"
    config.train.lr = 0.05
    trainer = train.Trainer(config, 21, mesh=Mesh(np.array(jax.devices()[:num_devices]), ("data",)))
    if initial is None:
        state = trainer.init(jax.random.PRNGKey(0))
        initial = jax.device_get(state)
    else:
        state = jax.device_put(initial, trainer.state_sharding)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 33, 33, 3)).astype(np.float32),
             "label": rng.integers(0, 21, (8, 33, 33)).astype(np.int32)}
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, trainer.global_batch(batch))
        losses.append(float(metrics["loss"]))
    return jax.device_get((state.params, state.batch_stats)), losses, initial


def main():
    assert jax.device_count() == 8, jax.devices()
    reference, reference_losses, initial = run(1)
    result = {"losses": {1: reference_losses}, "max_diff": {}}
    for n in (8,):
        tree, losses, _ = run(n, initial)
        diffs = jax.tree.map(
            lambda a, b: float(np.abs(np.asarray(a) - b).max() / max(1.0, np.abs(b).max())), tree, reference
        )
        result["max_diff"][n] = max(jax.tree.leaves(diffs))
        result["losses"][n] = losses
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
