"""Wall-clock timing of jitted functions on the current device (Table 4 of the paper).

Also the pieces every timing script shares: `forward` (one jitted eval-mode forward of any family),
`random_variables` (weights of a model's shapes without compiling its init); DifNet's cascade alone is
timed by `models.difnet.time_cascade`.

Each function is run `warmup` times (compilation included) and then `runs` times,
blocking until its outputs are ready; the median and the spread are reported.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
    median_s: float
    std_s: float
    runs: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def time_function(fn: Callable, *args, warmup: int = 2, runs: int = 10) -> Timing:
    """Median and standard deviation of `fn(*args)` in seconds, after `warmup` calls."""
    for _ in range(max(warmup, 1)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return Timing(float(np.median(times)), float(np.std(times)), runs)


def device_description() -> str:
    """E.g. 'NVIDIA H100 80GB HBM3 (gpu)' or 'AMD EPYC 7B13, 2 cores (cpu, jax 0.10.2)'."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        name = f"{_cpu_model()}, {cores} cores"
    else:
        name = device.device_kind
    return f"{name} ({device.platform}, jax {jax.__version__})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_grid_size(size: int) -> int:
    """Cells of the output-stride-8 grid along a side of `size` pixels (conv1, max-pool, layer2 strides)."""
    for _ in range(3):
        size = (size - 1) // 2 + 1
    return size


@functools.partial(jax.jit, static_argnames=("model",))
def forward(model: nn.Module, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """The logits of a whole DifNet or Sim-DeepLab, eval mode."""
    return model.apply(variables, images, train=False)[0]


def random_variables(model: nn.Module, images: jax.Array) -> dict[str, Any]:
    """Variables of `model`'s shapes: He-normal kernels, unit BN statistics; for timing, with no init to compile."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
    leaves, treedef = jax.tree.flatten_with_path(shapes)
    values = []
    for i, (path, leaf) in enumerate(leaves):
        name = str(path[-1])
        if "var" in name or "scale" in name:
            values.append(jnp.ones(leaf.shape, leaf.dtype))
        elif "mean" in name or "bias" in name:
            values.append(jnp.zeros(leaf.shape, leaf.dtype))
        else:
            std = (2.0 / max(int(np.prod(leaf.shape[:-1])), 1)) ** 0.5
            values.append(std * jax.random.normal(jax.random.PRNGKey(i), leaf.shape, leaf.dtype))
    return jax.tree.unflatten(treedef, values)
