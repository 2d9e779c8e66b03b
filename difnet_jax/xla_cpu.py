"""XLA CPU compiler settings chosen from a config's sizes (issue 31), applied per compiled program.

XLA's CPU backend (jaxlib 0.10.2) can hand matrix products and convolutions to YNNPACK instead of its default
Eigen path (`xla_cpu_experimental_ynn_fusion_type`). Measured on an Intel Xeon with AVX-512 (BENCHMARKS.md,
"XLA CPU settings, the DifNet peer and the small-model step"): at the paper's sizes (width 64, crop 321) YNNPACK's
dot fusions take the train step to 0.73x (DifNet-18) and 0.65x (Sim-DeepLab-18) of XLA's default time, while at the
synthetic configs' sizes (width 16, crop 81) they make DifNet-18's step 1.38x slower, and they do not speed up the
eval forward (0.99x at 505). So the setting is chosen
from the model's width (`compiler_options`), and given to each jitted program as `jax.jit(...,
compiler_options=...)`: no XLA_FLAGS, nothing to set before jax starts, and only on the CPU backend.

Results: the settings change the order of float32 sums only (tests/test_xla_cpu.py: losses and gradients agree
to float32 noise on a small model).

Off switch: the environment variable DIFNET_XLA_CPU: `off` (XLA's defaults everywhere), `auto` (the default:
by the sizes), or the name of one of SETTINGS for every program (e.g. `ynn_dot`). A config may also set
`config.model.xla_cpu` to the same values (read with `.get`, default `auto`); the environment variable wins.
"""

from __future__ import annotations

import os
from typing import Any

import jax

ENV = "DIFNET_XLA_CPU"
_YNN = "xla_cpu_experimental_ynn_fusion_type"
DOT, ELTWISE, REDUCE = "LIBRARY_FUSION_TYPE_DOT", "LIBRARY_FUSION_TYPE_ELTWISE", "LIBRARY_FUSION_TYPE_REDUCE"

# name -> XLA debug options of one compilation (what benchmarks.xla_cpu compares)
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "ynn_dot": {_YNN: DOT},
    "ynn_dot_eltwise": {_YNN: f"{DOT},{ELTWISE}"},
    "ynn_dot_eltwise_reduce": {_YNN: f"{DOT},{ELTWISE},{REDUCE}"},
    "xnn_graph": {"xla_cpu_experimental_xnn_graph_fusion_mode": "XNN_GRAPH_FUSION_MODE_GREEDY"},
    "onednn": {"xla_cpu_use_onednn": True},
}

# `auto`: YNNPACK's dot fusions from this backbone width up (chosen from the measurements, module docstring)
MIN_YNN_WIDTH = 32
AUTO_SETTING = "ynn_dot"


def choice(model_config: Any = None, *, width: int | None = None) -> str:
    """The name of the setting for a model config (or a backbone width): DIFNET_XLA_CPU, then
    `model_config.xla_cpu`, then `auto` (AUTO_SETTING from MIN_YNN_WIDTH up, else `default`)."""
    requested = os.environ.get(ENV) or (model_config.get("xla_cpu", None) if model_config is not None else None)
    requested = (requested or "auto").strip()
    if requested == "off":
        return "default"
    if requested != "auto":
        if requested not in SETTINGS:
            raise ValueError(f"{ENV} / model.xla_cpu={requested!r}: one of off, auto, {', '.join(SETTINGS)}")
        return requested
    if width is None:
        width = model_config.get("width", 64) if model_config is not None else 64
    return AUTO_SETTING if width >= MIN_YNN_WIDTH else "default"


def compiler_options(model_config: Any = None, *, width: int | None = None) -> dict[str, Any] | None:
    """`jax.jit(..., compiler_options=...)` for a model config: None off the CPU backend or for XLA's defaults."""
    if jax.default_backend() != "cpu":
        return None
    return dict(SETTINGS[choice(model_config, width=width)]) or None
