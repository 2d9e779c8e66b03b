"""Wall-clock timing of jitted functions on the current device (Table 4 of the paper).

Each function is run `warmup` times (compilation included) and then `runs` times,
blocking until its outputs are ready; the median and the spread are reported.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable

import jax
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
