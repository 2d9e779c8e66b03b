"""XLA CPU compiler settings for the train step (issue 31), applied per compiled program.

XLA's CPU backend (jaxlib 0.10.2) can hand matrix products, convolutions and reductions to YNNPACK instead of its own
emitters (`xla_cpu_experimental_ynn_fusion_type`). Measured on an Intel Xeon with AVX-512 (BENCHMARKS.md, "XLA CPU
settings, the DifNet peer and the small-model step" and "YNNPACK's reductions"): YNNPACK's dot fusions alone
(`ynn_dot`) take the paper-size train step (width 64, crop 321) to 0.62x of XLA's default time, but make the
synthetic configs' step (width 16, crop 81) 1.38x slower: under the dot-only fusion type XLA rewrites each large
reduction (a BatchNorm's statistics and their gradients) into a tree of reduce-windows (window 2x32x32) that runs
5-8x slower than the whole reduce XLA keeps by default (a sum over (2, 161, 161, 64): 2.4 ms against 0.4 ms). With
YNNPACK's reduce fusion type as well (`ynn_dot_reduce`) the reduce stays whole and the step is faster at every size
measured: DifNet-18 at crop 321 2341 ms against `ynn_dot`'s 2577 (Sim-DeepLab-18 1147 against 1288; XC6); the
synthetic DifNet-18 step 0.95x of XLA's default on one core and 0.97x on two (Sim-DeepLab-18 0.94x, 0.91x; XC8,
XC9); DeepLabv3+-18 with and without Dilated Affinity 0.84x and 0.78x, PDN-18 1.02x (SS13); the cascade no
slower than `ynn_dot` (XC7). So `auto` is `ynn_dot_reduce` for every config, given to each jitted train step as
`jax.jit(..., compiler_options=...)`: no XLA_FLAGS, nothing to set before jax starts, and only on the CPU backend.
The evaluator and the benchmarks' own jits keep XLA's defaults (DifNet-18's eval forward gains nothing: 0.99-1.02x
at 505 and at the synthetic size).

Results: the settings change the order of float32 sums only (tests/test_xla_cpu.py: losses and gradients agree
to float32 noise on a small model; a training's mIoU over seeds: BENCHMARKS.md).

Off switch: the environment variable DIFNET_XLA_CPU: `off` (XLA's defaults), `auto` (the default: AUTO_SETTING),
or the name of one of SETTINGS (e.g. `ynn_dot`). A config may also set `config.model.xla_cpu` to the same values
(read with `.get`, default `auto`); the environment variable wins.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from difnet_jax.user_errors import ConfigError

ENV = "DIFNET_XLA_CPU"
_YNN = "xla_cpu_experimental_ynn_fusion_type"
DOT, ELTWISE, REDUCE = "LIBRARY_FUSION_TYPE_DOT", "LIBRARY_FUSION_TYPE_ELTWISE", "LIBRARY_FUSION_TYPE_REDUCE"

# name -> XLA debug options of one compilation (what benchmarks.xla_cpu compares)
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ynn_dot": {_YNN: DOT},
    "ynn_dot_reduce": {_YNN: f"{DOT},{REDUCE}"},
    "ynn_dot_eltwise": {_YNN: f"{DOT},{ELTWISE}"},
    "ynn_dot_eltwise_reduce": {_YNN: f"{DOT},{ELTWISE},{REDUCE}"},
    "xnn_graph": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "onednn": {"xla_cpu_use_onednn": True},
}

# `auto`: the fastest setting measured at both the paper's and the synthetic configs' sizes (module docstring)
AUTO_SETTING = "ynn_dot_reduce"


def choice(model_config: Any = None) -> str:
    """The name of the setting for a model config: DIFNET_XLA_CPU, then `model_config.xla_cpu`, then `auto`
    (AUTO_SETTING)."""
    requested = os.environ.get(ENV) or (model_config.get("xla_cpu", None) if model_config is not None else None)
    requested = (requested or "auto").strip()
    if requested == "off":
        return "default"
    if requested == "auto":
        return AUTO_SETTING
    if requested not in SETTINGS:
        raise ConfigError(f"{ENV} / model.xla_cpu={requested!r}: use one of off, auto, {', '.join(SETTINGS)}")
    return requested


def compiler_options(model_config: Any = None) -> dict[str, Any] | None:
    """`jax.jit(..., compiler_options=...)` for a model config: None off the CPU backend or for XLA's defaults."""
    if jax.default_backend() != "cpu":
        return None
    return dict(SETTINGS[choice(model_config)]) or None
