"""Training throughput and inference latency of DifNet and Sim-DeepLab, float32 vs bfloat16 compute.

For each model (built from experiments/configs/voc.py, 21 classes, width 64, the paper's defaults) and
each compute dtype (`config.model.dtype`; parameters stay float32):
  - training: the project's `train.Trainer` (its jitted `train_step`: forward, backward, SGD update, BN
    statistics) on a random batch of --train_batch crops of --crop; compiled ahead of time, so compile
    time is reported apart from the step time (median of --repeats steps after warm-up); images/s =
    batch / step time.
  - inference: the eval-mode forward pass (`mechanism.forward`, one jit, logits upsampled to the input)
    at batch 1 and --eval_size x --eval_size (505: the paper's Table 4), median of --repeats runs after
    warm-up (`timing.time_function`), with the trained-for-a-few-steps variables.
Peak memory is XLA's compiled `memory_analysis()`: temp + arguments + outputs - aliased (the train step
donates its state). GFLOP is XLA's `cost_analysis()` of the compiled program. Timed runs of one
measurement are kept within --max_seconds: estimated beforehand from the FLOPs at the last measured
rate (same dtype if any) and not run beyond it; after the first (warm-up) call, fewer repeats, or that
call alone, as marked. Appends a section to --output.

  python -m benchmarks.models    # on an accelerator: batch 16, both dtypes, all four models
  python -m benchmarks.models --train_batch=2 --repeats=2 --output=/tmp/models_benchmark.md   # 2-core CPU
  python -m benchmarks.models --models=difnet50 --dtypes=bfloat16 --eval_size=513
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from benchmarks import report
from difnet_jax import mechanism, timing, train
from experiments.configs.voc import get_config

_MODELS = flags.DEFINE_list("models", ["difnet18", "difnet50", "simdeeplab18", "simdeeplab50"],
                            "Variants of experiments/configs/voc.py.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes (config.model.dtype).")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 16, "Global batch of the train step (the paper's: 16).")
_CROP = flags.DEFINE_integer("crop", 321, "Training crop size.")
_EVAL_SIZE = flags.DEFINE_integer("eval_size", 505, "Inference image side (batch 1).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs after the warm-up; the median is reported.")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 120.0, "Budget of the timed runs of one measurement (compile excluded): estimated beyond it "
    "from FLOPs, not timed; fewer repeats (or the first call alone) where the first call says they do not fit.")
_SKIP_TRAIN = flags.DEFINE_bool("skip_train", False, "Time inference only.")
_SKIP_EVAL = flags.DEFINE_bool("skip_eval", False, "Time training only.")
_OUTPUT = flags.DEFINE_string("output", "BENCHMARKS.md", "Markdown file the section is appended to.")

NUM_CLASSES = 21
GIB = 2**30
NAMES = {"difnet": "DifNet", "simdeeplab": "Sim-DeepLab"}


def model_label(variant: str) -> str:
    config = get_config(variant)
    return f"{NAMES[config.model.name]}-{config.model.depth}"


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def compile_timed(jitted, *args):
    """(compiled, seconds of lower + compile)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


class Budget:
    """Keeps the timed runs of a measurement within --max_seconds, from FLOPs and then from the first call."""

    def __init__(self):
        self.seconds_per_flop: dict[str, float] = {}  # dtype -> last measured

    def estimate(self, dtype: str, flops: float | None) -> float | None:
        rate = self.seconds_per_flop.get(dtype) or next(iter(self.seconds_per_flop.values()), None)
        return None if rate is None or flops is None else rate * flops

    def run(self, run: Callable, dtype: str, flops: float | None) -> tuple[float | None, str, int]:
        """(median seconds or None, note, timed runs); the first call of `run` is the (first) warm-up."""
        budget, estimate = _MAX_SECONDS.value, self.estimate(dtype, flops)
        if estimate is not None and estimate > budget:
            return None, f"not timed (est. {estimate:.0f} s a run)", 0
        start = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - start
        if flops:
            self.seconds_per_flop[dtype] = first / flops
        if 2 * first > budget:  # no room for a second warm-up and one run
            return first, "first call only, no warm-up", 1
        runs = max(1, min(_REPEATS.value, int(budget / first) - 1))
        measured = timing.time_function(run, warmup=1, runs=runs)  # warm-ups: the call above and this one
        if flops:
            self.seconds_per_flop[dtype] = measured.median_s / flops
        note = "" if runs == _REPEATS.value else f"{runs} of {_REPEATS.value} runs (budget)"
        return measured.median_s, note, runs


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}"


def measure(variant: str, dtype: str, budget: Budget) -> tuple[dict, dict]:
    """(training row, inference row) of one model and dtype."""
    config = get_config(variant)
    config.model.dtype = dtype
    config.data.crop_size = _CROP.value
    config.train.batch_size = _TRAIN_BATCH.value
    label = model_label(variant)
    trainer = train.Trainer(config, NUM_CLASSES)
    holder = {"state": trainer.init(jax.random.PRNGKey(0))}
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    base = {"model": label, "dtype": dtype, "params": params}

    train_row = dict(base, batch=_TRAIN_BATCH.value)
    if not _SKIP_TRAIN.value:
        rng = np.random.default_rng(0)
        batch = trainer.global_batch({
            "image": rng.normal(size=(_TRAIN_BATCH.value, _CROP.value, _CROP.value, 3)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, (_TRAIN_BATCH.value, _CROP.value, _CROP.value)).astype(np.int32),
        })
        compiled, compile_s = compile_timed(trainer.train_step, holder["state"], batch)
        flops = _flops(compiled)

        def step():
            holder["state"], step_metrics = compiled(holder["state"], batch)  # the state is donated
            return step_metrics

        seconds, note, runs = budget.run(step, dtype, flops)
        train_row.update(compile_s=compile_s, seconds=seconds, note=note, runs=runs, flops=flops,
                         peak=report.peak_bytes(compiled))
        print(f"train {label} {dtype}: compile {compile_s:.1f} s, step {_fmt_seconds(seconds)} {note}", flush=True)

    eval_row = dict(base, size=_EVAL_SIZE.value)
    if not _SKIP_EVAL.value:
        model = trainer.model
        state = holder["state"]
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        images = jax.random.normal(jax.random.PRNGKey(1), (1, _EVAL_SIZE.value, _EVAL_SIZE.value, 3))
        compiled, compile_s = compile_timed(mechanism.forward, model, variables, images)
        flops = _flops(compiled)
        seconds, note, runs = budget.run(lambda: compiled(variables, images), dtype, flops)
        eval_row.update(compile_s=compile_s, seconds=seconds, note=note, runs=runs, flops=flops,
                        peak=report.peak_bytes(compiled))
        print(f"eval {label} {dtype}: compile {compile_s:.1f} s, latency {_fmt_seconds(seconds)} {note}", flush=True)
    return train_row, eval_row


def _rate(row: dict) -> str:
    """Achieved GFLOP/s (XLA's count)."""
    return "" if row["seconds"] is None or row["flops"] is None else f"{row['flops'] / row['seconds'] / 1e9:.1f}"


def train_table(rows: list[dict]) -> list[str]:
    lines = ["| model | dtype | params (M) | batch | compile (s) | step | images/s | GFLOP / step | GFLOP/s | "
             "peak memory (GiB) | runs | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        rate = "" if r["seconds"] is None else f"{r['batch'] / r['seconds']:.3g}"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['params'] / 1e6:.1f} | {r['batch']} | {r['compile_s']:.1f} "
                     f"| {_fmt_seconds(r['seconds'])} | {rate} | {_fmt(r['flops'], 1e9, 0)} | {_rate(r)} "
                     f"| {_fmt(r['peak'], GIB)} | {r['runs']} | {r['note']} |")
    return lines


def eval_table(rows: list[dict]) -> list[str]:
    lines = ["| model | dtype | compile (s) | latency | GFLOP | GFLOP/s | peak memory (GiB) | runs | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['compile_s']:.1f} | {_fmt_seconds(r['seconds'])} "
                     f"| {_fmt(r['flops'], 1e9, 0)} | {_rate(r)} | {_fmt(r['peak'], GIB)} | {r['runs']} "
                     f"| {r['note']} |")
    return lines


def ratios(rows: list[dict], what: str) -> list[str]:
    """bfloat16 time / float32 time per model."""
    by_key = {(r["model"], r["dtype"]): r.get("seconds") for r in rows}
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        f32, bf16 = by_key.get((model, "float32")), by_key.get((model, "bfloat16"))
        if f32 and bf16:
            lines.append(f"- {model} {what}: bfloat16 / float32 time {bf16 / f32:.2f}.")
    return lines


def main(argv):
    del argv
    start = time.perf_counter()
    load = os.getloadavg()
    device = timing.device_description()
    budget = Budget()
    train_rows, eval_rows = [], []
    for variant in _MODELS.value:
        for dtype in _DTYPES.value:
            train_row, eval_row = measure(variant, dtype, budget)
            if not _SKIP_TRAIN.value:
                train_rows.append(train_row)
            if not _SKIP_EVAL.value:
                eval_rows.append(eval_row)

    paper = mechanism.PAPER_TIMES
    command = " ".join(["python -m benchmarks.models", *sys.argv[1:]])
    section = [
        f"## Models: training throughput and inference latency ({datetime.date.today()}, {platform.node()}, "
        f"{device})",
        "",
        f"Command: `{command}`",
        "",
        f"{report.conditions(start, load)} Models from "
        f"experiments/configs/voc.py ({NUM_CLASSES} classes, width 64, diffusion backend `auto`), random init; "
        "parameters float32, compute in the dtype shown. Compile: lower + compile of the jitted function, apart "
        f"from the timings; time: median of the runs shown after warm-up (budget {_MAX_SECONDS.value:g} s of timed "
        "runs per measurement). Peak memory: XLA's compiled `memory_analysis()`, temp + arguments + outputs - "
        "aliased. GFLOP: XLA's `cost_analysis()`.",
        "",
    ]
    if train_rows:
        section += [f"Training: `train.Trainer.train_step` (forward + backward + SGD update), crop {_CROP.value}, "
                    "random images and labels.", "", *train_table(train_rows), "", *ratios(train_rows, "train step")]
        section += [""] if section[-1] else []
    if eval_rows:
        section += [f"Inference: eval-mode forward (`mechanism.forward`), batch 1, {_EVAL_SIZE.value}x"
                    f"{_EVAL_SIZE.value}. The paper's Table 4 (GTX 1080, 505x505): DifNet-50 "
                    f"{1e3 * (paper['seed'] + paper['similarity'] + paper['diffusion']):.0f} ms (seed "
                    f"{1e3 * paper['seed']:.0f} + similarity {1e3 * paper['similarity']:.0f} + diffusion "
                    f"{1e3 * paper['diffusion']:.0f} ms), Sim-DeepLab-101 {1e3 * paper['simdeeplab']:.0f} ms.", "",
                    *eval_table(eval_rows), "", *ratios(eval_rows, "inference")]
    report.append_section(_OUTPUT.value, "\n".join(section).rstrip() + "\n")

if __name__ == "__main__":
    app.run(main)
