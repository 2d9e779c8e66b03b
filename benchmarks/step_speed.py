"""Issue 31, item 2: the small-model train step before and after a change, timed in ONE process, interleaved.

Each --variants entry is a way to build the project's jitted `Trainer.train_step` (`VARIANTS`: "model" is the code
as it is; the others replace a part of it at trace time by a candidate, or by the code before issue 31's changes,
`benchmarks.before_issue31`: the default compares "before_issue31" with "model"). All variants are compiled from
the same config, initial state and random batch, then run round by round (round r runs variant 1, 2, ..., each one step
on its own copy of the state): load from other jobs spreads over all of them alike, and each time is the median
of --rounds, with its ratio to the first variant's. Results: after the timed rounds every variant has taken the
same number of steps from the same state on the same batch; its loss of each round, its parameters and BatchNorm
statistics are compared with the first variant's (max |difference|; 0 = bitwise equal).

  python -m benchmarks.step_speed
  python -m benchmarks.step_speed --configs=difnet18,synthetic --rounds=15
  python -m benchmarks.step_speed --configs=pdn18_24nb_2m --crop=321 --batch=2 --variants=ynn_dot,model --rounds=5
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import before_issue31, pool_candidate
from difnet_jax import losses, optimizer, timing, train, xla_cpu
from difnet_jax.data.normalization import Normalization
from difnet_jax.models import difnet, resnet, similarity_embedding
from experiments.configs.voc import get_config

_CONFIGS = flags.DEFINE_multi_string("configs", ["difnet18,synthetic", "simdeeplab18,synthetic"],
                                     "Configs of experiments/configs/voc.py (repeat the flag for several).")
_VARIANTS = flags.DEFINE_list("variants", ["before_issue31", "model"], "Names of VARIANTS; the first is the baseline.")
_ROUNDS = flags.DEFINE_integer("rounds", 9, "Timed rounds (each runs every variant once) after one warm-up.")
_CROP = flags.DEFINE_integer("crop", 0, "Crop size (0: the config's).")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch (0: the config's).")

NUM_CLASSES = 21


@contextlib.contextmanager
def _replaced(module, name: str, replacement):
    """`module.name` replaced by `replacement` while the step is traced."""
    saved = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _flat_optimizer():
    """Each parameter group's optimizer update on one flat vector (`optax.flatten`): its elementwise ops one loop
    each instead of one per parameter array. The optimizer state's tree changes (old checkpoints would not restore)."""
    saved = optimizer._group_optimizer

    def flat(*args, **kwargs):
        inner = saved(*args, **kwargs)
        flattened = optax.flatten(inner)  # needs at least one array: a group without parameters keeps `inner`
        pick = lambda tree: flattened if jax.tree.leaves(tree) else inner  # noqa: E731
        return optax.GradientTransformation(lambda params: pick(params).init(params),
                                            lambda updates, state, params=None: pick(updates).update(updates, state,
                                                                                                     params))

    return _replaced(optimizer, "_group_optimizer", flat)


@contextlib.contextmanager
def _xla_setting(name: str):
    """The train step compiled with `difnet_jax.xla_cpu` setting `name` (its environment variable while compiling)."""
    saved = os.environ.get(xla_cpu.ENV)
    os.environ[xla_cpu.ENV] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ[xla_cpu.ENV]
        else:
            os.environ[xla_cpu.ENV] = saved


@contextlib.contextmanager
def _before_issue31():
    """All of `before_issue31`'s parts: the train step as it was before issue 31's changes (XLA's default
    compiler settings included)."""
    with _xla_setting("off"), _replaced(difnet, "SimilarityEmbedding", before_issue31.ConvBatchNormPool), \
            _replaced(losses, "cross_entropy", before_issue31.take_along_axis_cross_entropy), \
            _replaced(resnet, "_stem_max_pool", before_issue31.flax_stem_max_pool), \
            _replaced(Normalization, "apply_on_device", before_issue31.table_apply_on_device):
        yield


VARIANTS = {
    "model": contextlib.nullcontext,  # the code as it is
    "before_issue31": _before_issue31,
    # Psi conv -> BatchNorm -> pool at full resolution, as before its pool-first form
    "psi_before": lambda: _replaced(difnet, "SimilarityEmbedding", before_issue31.ConvBatchNormPool),
    "loss_before": lambda: _replaced(losses, "cross_entropy", before_issue31.take_along_axis_cross_entropy),
    "stem_pool_before": lambda: _replaced(resnet, "_stem_max_pool", before_issue31.flax_stem_max_pool),
    "normalisation_before": lambda: _replaced(Normalization, "apply_on_device", before_issue31.table_apply_on_device),
    "flat_optimizer": _flat_optimizer,
    "xla_defaults": lambda: _xla_setting("off"),  # XLA's default CPU compiler settings (difnet_jax.xla_cpu)
    "ynn_dot": lambda: _xla_setting("ynn_dot"),  # the paper sizes' setting before ynn_dot_reduce
    # Psi's adaptive max-pool replaced by a candidate of benchmarks.pool_candidate (since the pool-first Psi, only
    # where a Psi differentiates the pool itself: walks 2..5, not walk 1)
    "custom_vjp_pool": lambda: _replaced(similarity_embedding, "adaptive_max_pool",
                                         pool_candidate.custom_vjp_adaptive_max_pool),
    "sliced_pool": lambda: _replaced(similarity_embedding, "adaptive_max_pool",
                                     pool_candidate.sliced_adaptive_max_pool),
}


def _tree_diff(a, b) -> float:
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True) if np.size(x)), default=0.0)


def measure(variant_config: str, names: list[str], rounds: int) -> None:
    config = get_config(variant_config)
    config.data.crop_size = _CROP.value or config.data.crop_size
    config.train.batch_size = _BATCH.value or config.train.batch_size
    crop, batch = config.data.crop_size, config.train.batch_size
    rng = np.random.default_rng(0)
    host_batch = {"image": rng.integers(0, 256, (batch, crop, crop, 3)).astype(np.uint8),
                  "label": rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype(np.int32)}
    compiled, states, data, losses = {}, {}, None, {name: [] for name in names}
    for name in names:
        with VARIANTS[name]():
            trainer = train.Trainer(config, NUM_CLASSES)
            states[name] = trainer.init(jax.random.PRNGKey(0))
            data = trainer.global_batch(host_batch)
            start = time.perf_counter()
            compiled[name] = trainer.train_step.lower(states[name], data).compile()
        print(f"{variant_config} {name}: compile {time.perf_counter() - start:.1f} s", flush=True)
    for name in names:  # warm-up: one step each
        states[name], metrics = compiled[name](states[name], data)
        losses[name].append(float(metrics["loss"]))
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            states[name], metrics = compiled[name](states[name], data)
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - start)
            losses[name].append(float(metrics["loss"]))
    base = float(np.median(times[names[0]]))
    print(f"\n{variant_config} (crop {crop}, batch {batch}), {rounds} rounds, load average at the end "
          f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}:")
    print("| variant | median step | min - max | / first | steps/s vs first | losses (all rounds) vs first "
          "| state after the rounds vs first |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        t = np.array(times[name])
        loss_diff = float(np.max(np.abs(np.array(losses[name]) - np.array(losses[names[0]]))))
        state_diff = _tree_diff((states[name].params, states[name].batch_stats),
                                (states[names[0]].params, states[names[0]].batch_stats))
        print(f"| {name} | {np.median(t) * 1e3:.0f} ms | {t.min() * 1e3:.0f} - {t.max() * 1e3:.0f} ms "
              f"| {np.median(t) / base:.3f} | {base / np.median(t):.3f}x | {loss_diff:.1e} | {state_diff:.1e} |")
    print(f"losses of {names[0]}: {' '.join(f'{v:.6f}' for v in losses[names[0]])}", flush=True)


def main(argv):
    del argv
    unknown = [name for name in _VARIANTS.value if name not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    print(timing.device_description(), " ".join(sys.argv[1:]),
          f"load average at the start {' / '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    for variant_config in _CONFIGS.value:
        measure(variant_config, _VARIANTS.value, _ROUNDS.value)
    jnp.zeros(()).block_until_ready()


if __name__ == "__main__":
    app.run(main)
