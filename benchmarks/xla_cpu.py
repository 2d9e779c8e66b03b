"""XLA CPU settings compared per kind of step: which library fusions are fastest, and do they change results.

Each setting is a set of XLA debug options given to one compilation (`lowered.compile(compiler_options=...)`),
so every setting is compiled and timed in ONE process, its runs alternating with the others' (round r times
setting 1, 2, ..., then round r + 1): load from other jobs spreads over all settings alike; each cell is the
median of --rounds timed calls after one warm-up, with the spread (min-max), and its time / the default's.
Results: each setting's outputs against the default's (max |difference| / max |default|, over the loss and
metrics of one train step from the same state, or the logits, or the cascade's value and gradients).

Kinds (--kinds): `paper_train` (DifNet-18 of experiments/configs/voc.py, crop 321, batch 2: the project's jitted
`Trainer.train_step`), `synthetic_train` (`difnet18,synthetic` and `simdeeplab18,synthetic`: width 16, crop 81,
batch 16), `synthetic_eval` and `paper_eval` (eval-mode forward, `timing.forward`: 97x97 batch 20 / 505x505
batch 1), `cascade` (fwd+bwd of the 5-walk dense and chunked cascades of `benchmarks.cascade`, N = 1,681 and 121,
B = 1 and 16), `conv` (one 3x3 convolution, dilation 2, 41x41, batch 2, 512 channels, fwd+bwd: issue 31's).

  python -m benchmarks.xla_cpu --output=/tmp/xla_cpu.md
  python -m benchmarks.xla_cpu --kinds=synthetic_train --settings=default,ynn_dot --rounds=9
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import report
from benchmarks.cascade_problem import CHANNELS, CLASSES, WALKS
from difnet_jax import timing, train, xla_cpu
from difnet_jax.models import diffusion
from experiments.configs.voc import get_config

KINDS = ("conv", "synthetic_train", "synthetic_eval", "cascade", "paper_train", "paper_eval")
_KINDS = flags.DEFINE_list("kinds", list(KINDS), "What to time (module docstring).")
_SETTINGS = flags.DEFINE_list("settings", list(xla_cpu.SETTINGS), "Settings of difnet_jax.xla_cpu.SETTINGS.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (each runs every setting once) after one warm-up.")
_PAPER_ROUNDS = flags.DEFINE_integer("paper_rounds", 3, "Rounds for the paper-size kinds (seconds a call).")
_OUTPUT = flags.DEFINE_string("output", "BENCHMARKS.md", "Markdown file the section is appended to.")

NUM_CLASSES = 21


def _rel_diff(a, b) -> float:
    """max |a - b| over all leaves / the largest |b| of all leaves (a tiny leaf, e.g. a gradient made by
    cancellation, is judged against the outputs' scale, not its own)."""
    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    scale = max(float(np.max(np.abs(y))) for _, y in pairs)
    return max(float(np.max(np.abs(x - y))) for x, y in pairs) / max(scale, 1e-30)


def _train_case(variant: str, crop: int | None = None, batch: int | None = None):
    """(label, lowered train step, make_args, result_of) of a config's train step on random data."""
    config = get_config(variant)
    if crop:
        config.data.crop_size = crop
    if batch:
        config.train.batch_size = batch
    crop, batch = config.data.crop_size, config.train.batch_size
    num_classes = NUM_CLASSES  # synthetic_shapes: 20 classes + background, as VOC
    trainer = train.Trainer(config, num_classes)
    state0 = trainer.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    data = trainer.global_batch({"image": rng.integers(0, 256, (batch, crop, crop, 3)).astype(np.uint8),
                                 "label": rng.integers(0, num_classes, (batch, crop, crop)).astype(np.int32)})
    lowered = trainer.train_step.lower(state0, data)
    holders = {}

    def make_run(name, compiled):
        holders[name] = jax.tree.map(jnp.copy, state0)

        def run():
            holders[name], metrics = compiled(holders[name], data)  # the state is donated
            return metrics
        return run

    def result_of(compiled):  # one step from the same state: the loss and metrics
        _, metrics = compiled(jax.tree.map(jnp.copy, state0), data)
        return metrics

    label = f"{variant} train step (crop {crop}, batch {batch})"
    return label, lowered, make_run, result_of


def _eval_case(variant: str, size: int, batch: int):
    config = get_config(variant)
    num_classes = NUM_CLASSES  # synthetic_shapes: 20 classes + background, as VOC
    trainer = train.Trainer(config, num_classes)
    images = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3))
    variables = timing.random_variables(trainer.model, images)
    lowered = timing.forward.lower(trainer.model, variables, images)

    def make_run(name, compiled):
        return lambda: compiled(variables, images)

    return (f"{variant} eval forward ({size}x{size}, batch {batch})", lowered, make_run,
            lambda compiled: compiled(variables, images))


def _cascade_case(backend: str, batch: int, n: int):
    rng = np.random.default_rng(0)
    args = (jnp.asarray(rng.normal(size=(batch, n, CLASSES)), jnp.float32),
            [jnp.asarray(rng.normal(size=(batch, n, CHANNELS)), jnp.float32) for _ in range(WALKS)],
            jnp.zeros(WALKS), jnp.zeros(WALKS))

    def loss(seed, psis, mu_logits, beta_logits):
        y, _ = diffusion.cascade(seed, psis, mu_logits, beta_logits, backend)
        return (y**2).sum()

    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(*args)
    return (f"cascade {backend} fwd+bwd (N = {n:,}, B = {batch})", lowered,
            lambda name, compiled: (lambda: compiled(*args)), lambda compiled: compiled(*args))


def _conv_case():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 41, 41, 512)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 512, 512)) * 0.02, jnp.float32)

    def f(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y**2)

    lowered = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, w)
    return ("3x3 conv dilation 2, 41x41, batch 2, 512 -> 512, fwd+bwd", lowered,
            lambda name, compiled: (lambda: compiled(x, w)), lambda compiled: compiled(x, w))


def cases(kind: str):
    if kind == "conv":
        yield _conv_case
    elif kind == "synthetic_train":
        yield lambda: _train_case("difnet18,synthetic")
        yield lambda: _train_case("simdeeplab18,synthetic")
    elif kind == "synthetic_eval":
        yield lambda: _eval_case("difnet18,synthetic", 97, 20)
        yield lambda: _eval_case("simdeeplab18,synthetic", 97, 20)
    elif kind == "cascade":
        for backend, batch, n in (("dense", 16, 121), ("chunked", 1, 1681), ("dense", 1, 1681)):
            yield lambda backend=backend, batch=batch, n=n: _cascade_case(backend, batch, n)
    elif kind == "paper_train":
        yield lambda: _train_case("difnet18", 321, 2)
        yield lambda: _train_case("simdeeplab18", 321, 2)
    elif kind == "paper_eval":
        yield lambda: _eval_case("difnet18", 505, 1)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def measure(case, settings: list[str], rounds: int) -> list[str]:
    label, lowered, make_run, result_of = case()
    compiled, compile_s, runs = {}, {}, {}
    for name in settings:
        start = time.perf_counter()
        try:
            compiled[name] = lowered.compile(compiler_options=xla_cpu.SETTINGS[name])
        except Exception as error:  # noqa: BLE001 (an option this jaxlib refuses)
            print(f"{label}: {name} does not compile: {str(error)[:200]}", flush=True)
            continue
        compile_s[name] = time.perf_counter() - start
    texts = {name: c.as_text() for name, c in compiled.items()}
    reference = result_of(compiled["default"]) if "default" in compiled else None
    diffs = {name: (_rel_diff(result_of(c), reference) if reference is not None else float("nan"))
             for name, c in compiled.items()}
    for name, c in compiled.items():
        runs[name] = make_run(name, c)
        jax.block_until_ready(runs[name]())  # warm-up
    times = {name: [] for name in compiled}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    base = np.median(times["default"]) if "default" in times else None
    lines = [f"{label}:", "",
             "| setting | compile (s) | median | min - max | / default | results vs default | program |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name in compiled:
        t = np.array(times[name])
        ratio = f"{np.median(t) / base:.2f}" if base else ""
        lines.append(f"| {name} | {compile_s[name]:.1f} | {_ms(np.median(t))} | {_ms(t.min())} - {_ms(t.max())} "
                     f"| {ratio} | {diffs[name]:.1e} | {_same(name, texts)} |")
        print(f"{label}: {name} compile {compile_s[name]:.1f} s, median {_ms(np.median(t))} ({ratio})", flush=True)
    return lines + [""]


def _same(name: str, texts: dict[str, str]) -> str:
    """Whether XLA compiled the same program as for the default (the option changed nothing here)."""
    if name == "default" or "default" not in texts:
        return ""
    return "the default's (option without effect)" if texts[name] == texts["default"] else "changed"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.2f} ms"


def main(argv):
    del argv
    for flag, names, known in (("--settings", _SETTINGS.value, xla_cpu.SETTINGS), ("--kinds", _KINDS.value, KINDS)):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise app.UsageError(f"{flag}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    os.environ[xla_cpu.ENV] = "off"  # the Trainer's jit carries no setting of its own: each compile names one
    start, load = time.perf_counter(), os.getloadavg()
    section_body = []
    for kind in _KINDS.value:
        rounds = _PAPER_ROUNDS.value if kind.startswith("paper") else _ROUNDS.value
        for case in cases(kind):
            section_body += measure(case, _SETTINGS.value, rounds)
    settings = "; ".join(f"{name}: `{xla_cpu.SETTINGS[name] or 'none'}`" for name in _SETTINGS.value)
    section = [*report.heading("XLA CPU settings", "benchmarks.xla_cpu", timing.device_description()),
               f"{report.conditions(start, load)} Settings: {settings}. Each time: "
               "rounds alternating the settings in one process, median and min - max.", "", *section_body]
    report.append_section(_OUTPUT.value, "\n".join(section).rstrip() + "\n")


if __name__ == "__main__":
    app.run(main)
