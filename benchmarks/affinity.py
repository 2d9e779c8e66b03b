"""Dilated Affinity's costs (papers/004): the head and loss on DeepLabv3+'s train step, propagation vs the CRF.

(a) Overhead of the affinity head and loss: the project's `train.Trainer.train_step` (forward, backward, SGD
    update) of `deeplabv3plus<D>` and `deeplabv3plus<D>_affinity` (R = {8, (12, 24), 16}, |R| = 4, 32
    channels, sqrt-weighted focal loss with statistics counted on the benchmark's random labels) on the same
    random batch of --train_batch crops of --crop. Both steps are compiled ahead of time and their runs are
    interleaved (base, affinity, base, ...) so that a shared machine's load drifts over both alike; median of
    --repeats runs each after one warm-up. Target (issue 13): under 10% more time.
(b) Inference at --size x --size, batch 1, --classes classes, float32:
    - `deeplabv3plus<D>_affinity`'s eval-mode forward (output stride 8), returning the logits and the
      affinity logits (what propagation needs), random weights (`timing.random_variables`);
    - `affinity.propagate` (Eq. 6) with --iterations iterations on random probabilities and affinities, the
      paper's 4 rates;
    - the dense CRF (`crf.dense_crf`, --crf_iterations mean-field iterations, DeepLab's parameters) on the
      same probabilities and a random image.
    Targets: propagation a small fraction of the forward pass, and far less than the CRF.

Timings use `difnet_jax.timing`; the flags --train_batch, --crop, --repeats, --max_seconds and --output are
those of `benchmarks.models` (same meaning). Appends a section to --output.

  python -m benchmarks.affinity --train_batch=2 --repeats=3 --output=/tmp/affinity_benchmark.md   # 2-core CPU
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from benchmarks import models, report
from difnet_jax import timing, train
from difnet_jax.evaluation import crf
from difnet_jax.models import affinity, build_model
from experiments.configs.variants import PAPER_AFFINITY_RATES
from experiments.configs.voc import get_config

_DEPTH = flags.DEFINE_integer("depth", 18, "ResNet depth of the DeepLabv3+ variants.")
_SIZE = flags.DEFINE_integer("size", 513, "Inference image side for (b).")
_CLASSES = flags.DEFINE_integer("classes", 21, "Classes of the propagated probabilities and the CRF.")
_ITERATIONS = flags.DEFINE_integer("iterations", 10, "Propagation iterations.")
_CRF_ITERATIONS = flags.DEFINE_integer("crf_iterations", 10, "Dense CRF mean-field iterations.")
_SKIP_OVERHEAD = flags.DEFINE_bool("skip_overhead", False, "Skip (a), the train-step overhead.")
_SKIP_INFERENCE = flags.DEFINE_bool("skip_inference", False, "Skip (b), propagation / forward / CRF.")

OVERHEAD_TARGET = 0.10


def _compiled_step(variant: str, batch_size: int, crop: int, images: np.ndarray, labels: np.ndarray):
    """(run, compile seconds, GFLOP, peak bytes, params) of the train step of `variant` on the given batch."""
    config = get_config(variant)
    config.data.crop_size = crop
    config.train.batch_size = batch_size
    stats_path = models._affinity_setup(config, labels)  # noqa: SLF001 (the shared helper of the two scripts)
    try:
        trainer = train.Trainer(config, models.NUM_CLASSES)
        holder = {"state": trainer.init(jax.random.PRNGKey(0))}
        batch = trainer.global_batch({"image": images, "label": labels})
        compiled, compile_s = models.compile_timed(trainer.train_step, holder["state"], batch)  # stats read here
    finally:
        if stats_path:
            os.remove(stats_path)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))

    def run():
        holder["state"], step_metrics = compiled(holder["state"], batch)  # the state is donated
        return step_metrics

    return run, compile_s, models._flops(compiled), report.peak_bytes(compiled), params  # noqa: SLF001


def _interleaved(runs: dict[str, Callable], repeats: int) -> dict[str, timing.Timing]:
    """One warm-up each, then `repeats` rounds of one run of each in turn: per name the median (timing.Timing)."""
    for run in runs.values():
        jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(timing.time_function(run, warmup=0, runs=1).median_s)
    return {name: timing.Timing(float(np.median(t)), float(np.std(t)), len(t)) for name, t in times.items()}


def overhead(batch_size: int, crop: int, repeats: int) -> tuple[list[dict], float]:
    """Rows (base, affinity) and the relative overhead of the affinity head and loss."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch_size, crop, crop, 3)).astype(np.float32)
    labels = rng.integers(0, models.NUM_CLASSES, (batch_size, crop, crop)).astype(np.int32)
    variants = {"base": f"deeplabv3plus{_DEPTH.value}", "affinity": f"deeplabv3plus{_DEPTH.value}_affinity"}
    rows, runs = {}, {}
    for key, variant in variants.items():
        run, compile_s, flops, peak, params = _compiled_step(variant, batch_size, crop, images, labels)
        runs[key] = run
        rows[key] = {"model": models.model_label(variant), "params": params, "compile_s": compile_s, "flops": flops,
                     "peak": peak, "batch": batch_size}
        print(f"compiled {variant}: {compile_s:.1f} s", flush=True)
    for key, measured in _interleaved(runs, repeats).items():
        rows[key].update(seconds=measured.median_s, std=measured.std_s, runs=measured.runs)
        print(f"train {rows[key]['model']}: {models._fmt_seconds(measured.median_s)}", flush=True)  # noqa: SLF001
    return list(rows.values()), rows["affinity"]["seconds"] / rows["base"]["seconds"] - 1.0


def _timed(name: str, fn, args, budget: models.Budget) -> dict:
    """One row; a fresh budget of the same limits, so that no row's FLOP rate (the memory-bound propagation's
    is far below the CRF's) estimates another's time."""
    compiled, compile_s = models.compile_timed(jax.jit(fn), *args)
    flops = models._flops(compiled)  # noqa: SLF001
    fresh = models.Budget(budget.max_seconds, budget.repeats)
    seconds, note, runs = fresh.run(lambda: compiled(*args), "float32", flops)
    print(f"{name}: compile {compile_s:.1f} s, {models._fmt_seconds(seconds)} {note}", flush=True)  # noqa: SLF001
    return {"what": name, "compile_s": compile_s, "seconds": seconds, "note": note, "runs": runs, "flops": flops,
            "peak": report.peak_bytes(compiled)}


def inference(size: int, budget: models.Budget) -> list[dict]:
    """Rows: the forward pass with the affinity head, propagation, the dense CRF (module docstring)."""
    rates = affinity.expand_rates(PAPER_AFFINITY_RATES)
    classes = _CLASSES.value
    config = get_config(f"deeplabv3plus{_DEPTH.value}_affinity")
    model = build_model(config.model, classes)
    images = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3))
    variables = timing.random_variables(model, images)

    def forward(variables, images):
        logits, intermediates = model.apply(variables, images, train=False)
        return logits, intermediates["affinity_logits"]

    rows = [_timed(f"{models.model_label(f'deeplabv3plus{_DEPTH.value}_affinity')} forward (OS 8, with the "
                   f"affinity head)", forward, (variables, images), budget)]
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    probs = jax.nn.softmax(3.0 * jax.random.normal(keys[0], (1, size, size, classes)), axis=-1)
    aff = affinity.steep_sigmoid(jax.random.normal(keys[1], (1, size, size, 8 * len(rates))))
    propagate = functools.partial(affinity.propagate, rates=rates, iterations=_ITERATIONS.value)
    rows.append(_timed(f"propagate, {_ITERATIONS.value} iterations, |R| = {len(rates)}",
                       lambda p, a: propagate(p, a), (probs, aff), budget))
    image = jax.random.uniform(keys[2], (size, size, 3), maxval=255.0)
    params = crf.CRFParams(iterations=_CRF_ITERATIONS.value)
    rows.append(_timed(f"dense CRF, {_CRF_ITERATIONS.value} iterations (sender stride "
                       f"{crf.sender_stride(size, size, params.max_senders)})",
                       lambda p, i: crf.dense_crf(p, i, params=params), (probs[0], image), budget))
    return rows


def main(argv):
    del argv
    start, load = time.perf_counter(), os.getloadavg()
    batch_size, crop, repeats = models._TRAIN_BATCH.value, models._CROP.value, models._REPEATS.value  # noqa: SLF001
    fmt = models._fmt_seconds  # noqa: SLF001
    section_body = []
    if not _SKIP_OVERHEAD.value:
        rows, extra = overhead(batch_size, crop, repeats)
        section_body += [
            f"(a) Train step (`train.Trainer.train_step`, forward + backward + SGD update, output stride 16), batch "
            f"{batch_size}, crop {crop}, float32, random images and labels; runs interleaved, median of {repeats} "
            "each after one warm-up.", "",
            "| model | params (M) | batch | compile (s) | step | images/s | GFLOP / step | peak memory (GiB) | runs |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            section_body.append(
                f"| {r['model']} | {r['params'] / 1e6:.2f} | {r['batch']} | {r['compile_s']:.1f} | {fmt(r['seconds'])} "
                f"(std {fmt(r['std'])}) | {r['batch'] / r['seconds']:.3g} | {models._fmt(r['flops'], 1e9, 0)} "  # noqa: SLF001
                f"| {models._fmt(r['peak'], models.GIB)} | {r['runs']} |")  # noqa: SLF001
        met = "met" if extra < OVERHEAD_TARGET else "missed"
        section_body += ["", f"- Affinity head + loss overhead: {100 * extra:+.1f}% of the train step (target "
                         f"< {100 * OVERHEAD_TARGET:.0f}%: {met}).", ""]
    if not _SKIP_INFERENCE.value:
        budget = models.Budget()
        rows = inference(_SIZE.value, budget)
        section_body += [
            f"(b) Inference, batch 1, {_SIZE.value}x{_SIZE.value}, {_CLASSES.value} classes, float32 (budget "
            f"{budget.max_seconds:g} s of timed runs per measurement, up to {budget.repeats} runs after warm-up).", "",
            "| what | compile (s) | time | GFLOP | GFLOP/s | peak memory (GiB) | runs | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in rows:
            section_body.append(f"| {r['what']} | {r['compile_s']:.1f} | {fmt(r['seconds'])} "
                                f"| {models._fmt(r['flops'], 1e9, 1)} | {models._rate(r)} "  # noqa: SLF001
                                f"| {models._fmt(r['peak'], models.GIB)} | {r['runs']} | {r['note']} |")  # noqa: SLF001
        forward_s, propagate_s, crf_s = (r["seconds"] for r in rows)
        if forward_s and propagate_s:
            section_body.append(f"\n- Propagation / forward pass: {propagate_s / forward_s:.2f}.")
        if crf_s and propagate_s:
            section_body.append(f"- Dense CRF / propagation: {crf_s / propagate_s:.1f}.")
    section = [*report.heading("Dilated affinity: head, loss and propagation costs", "benchmarks.affinity",
                               timing.device_description()), report.conditions(start, load), "", *section_body]
    report.append_section(models._OUTPUT.value, "\n".join(section).rstrip() + "\n")  # noqa: SLF001


if __name__ == "__main__":
    app.run(main)
