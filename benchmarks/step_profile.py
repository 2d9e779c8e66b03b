"""Where a train step's time goes: XLA CPU's per-operation profile of the project's jitted train step, by category.

For each --variants config (default: the synthetic DifNet-18 and Sim-DeepLab-18), the project's
`Trainer.train_step` on random uint8 images and labels at the config's crop and batch is compiled (with the
`difnet_jax.xla_cpu` setting the project chooses, or --setting), run --steps times under `jax.profiler.trace`,
and every XLA operation the CPU runtime executed (its thunks, one trace event each) is put in a category from
the HLO instruction's source (`metadata.op_name`: the flax module path and the jax primitive) and its opcode:

  - convolution: convolutions (and their YNNPACK fusions), forward and backward;
  - cascade: DifNet's diffusion (`Diffusion` modules: the similarity matmuls, softmax, the walks), fwd and bwd;
  - normalisation: BatchNorm's statistics, normalisation and their gradients;
  - optimizer: everything after the gradient (optax's SGD, weight decay, momentum; the norms of the metrics);
  - loss / upsampling / other: the rest (bilinear upsampling of the logits, cross-entropy, ReLUs, pooling, ...).

The profile's operation times are summed over the threads that ran them and scaled to the step's wall time
(so the fractions are of the step). Under a YNNPACK setting (the project's choice is `ynn_dot_reduce`) on 2 threads
the library's convolutions are mostly not in the trace (a DifNet-18 step at crop 321 under `ynn_dot`, 2026-12-07:
4.3 s of operations seen for a 6.9 s step, convolution 4 %; on one core they are: SP6 in BENCHMARKS.md): profile
with `--setting=default`, or read the fractions as of the visible operations only. Achieved FLOP/s: XLA's
`cost_analysis()` FLOPs of the step / its median time, against this machine's dense float32 4096^2 matmul rate
measured in the same process (as benchmarks.cascade).
Host overhead (--loop): the training loop's parts as `experiments.voc` runs them, on the config's real train loader
(the prepared dataset, 0 workers): the loader's time per batch alone, the compiled step waited for at each step,
and the loop as train.py runs it (next batch, `global_batch`, the step, then a wait for the previous step's metrics,
so one step is queued behind the running one); their difference is what the host adds to a step.

  python -m benchmarks.step_profile
  python -m benchmarks.step_profile --variants=difnet18 --crop=321 --batch=2 --steps=2
  python -m benchmarks.step_profile --loop --variants=difnet18,synthetic     # the host's share of the loop
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from difnet_jax import timing, train, xla_cpu
from experiments.configs.voc import get_config

_VARIANTS = flags.DEFINE_multi_string("variants", ["difnet18,synthetic", "simdeeplab18,synthetic"],
                                      "A config of voc.py, e.g. difnet18,synthetic (repeat the flag for several).")
_CROP = flags.DEFINE_integer("crop", 0, "Crop (0: the config's).")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch (0: the config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Profiled steps (after warm-up).")
_SETTING = flags.DEFINE_string("setting", "", "A difnet_jax.xla_cpu.SETTINGS name (empty: the project's choice).")
_LOOP = flags.DEFINE_bool("loop", False, "Time the training loop's host parts on the real loader instead of profiling.")
CATEGORIES = ("convolution", "cascade", "Psi adaptive max-pool", "normalisation", "optimizer",
              "loss / upsampling / other")


def categorise(opcode: str, op_name: str, calls: str) -> str:
    if "convolution" in opcode or "conv_general_dilated" in op_name or "convolution" in calls:
        return "convolution"
    if not re.search(r"jvp\(|transpose\(", op_name):  # outside value_and_grad: the update and the metrics
        return "optimizer"
    if re.search(r"diffuse|[Dd]iffusion|cascade", op_name):
        return "cascade"
    if re.search(r"/psi\d/(gather|scatter|reduce_max|max|slice|concatenate|select|eq|pad)", op_name):
        return "Psi adaptive max-pool"
    if re.search(r"/(bn\d*|\w*_bn|BatchNorm\w*)/", op_name):
        return "normalisation"
    return "loss / upsampling / other"


def hlo_table(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """instruction name -> (opcode, op_name, called computations' text) of the optimized HLO."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
        if m and line.rstrip().endswith("{"):
            current = m.group(1)
            computations[current] = []
        elif current is not None:
            computations[current].append(line)
    table = {}
    for lines in computations.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+(?: \S+)*? ([\w\-]+)\(", line)
            if not m:
                continue
            name, opcode = m.group(1), m.group(2)
            op_name = re.search(r'op_name="([^"]*)"', line)
            called = re.findall(r"calls=%?([\w.\-]+)", line)
            calls = " ".join(" ".join(computations.get(c, [])) for c in called)
            if not op_name and called:  # a fusion's metadata: its root's
                inner = re.search(r'op_name="([^"]*)"', calls)
                op_name = inner
            table[name] = (opcode, op_name.group(1) if op_name else "", calls)
    return table


def profile(variant: str) -> None:
    config = get_config(variant)
    if _CROP.value:
        config.data.crop_size = _CROP.value
    if _BATCH.value:
        config.train.batch_size = _BATCH.value
    crop, batch = config.data.crop_size, config.train.batch_size
    setting = _SETTING.value or xla_cpu.choice(config.model)
    trainer = train.Trainer(config, 21)
    state = trainer.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    data = trainer.global_batch({"image": rng.integers(0, 256, (batch, crop, crop, 3)).astype(np.uint8),
                                 "label": rng.integers(0, 21, (batch, crop, crop)).astype(np.int32)})
    compiled = trainer.train_step.lower(state, data).compile()  # with the setting of difnet_jax.xla_cpu
    flops = compiled.cost_analysis()
    flops = (flops[0] if isinstance(flops, list | tuple) else flops).get("flops", 0.0)
    for _ in range(2):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(_STEPS.value):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))

    table = hlo_table(compiled.as_text())
    trace_dir = tempfile.mkdtemp(prefix="step_profile_")
    with jax.profiler.trace(trace_dir):
        for _ in range(_STEPS.value):
            state, metrics = compiled(state, data)
            jax.block_until_ready(metrics)
    from jax._src.profiler import ProfileData  # jaxlib's reader of the trace's XSpace

    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    data_ = ProfileData.from_file(path)
    by_category, by_op, unmatched = collections.Counter(), collections.Counter(), collections.Counter()
    for plane in data_.planes:
        for line in plane.lines:
            for event in line.events:
                name = event.name
                if name not in table:
                    unmatched[name] += event.duration_ns
                    continue
                opcode, op_name, calls = table[name]
                by_category[categorise(opcode, op_name, calls)] += event.duration_ns
                by_op[(name, opcode, op_name[-90:])] += event.duration_ns
    total = sum(by_category.values())
    print(f"\n{variant}: crop {crop}, batch {batch}, setting {setting}: step {step_s * 1e3:.0f} ms "
          f"(min {min(times) * 1e3:.0f}), {flops / 1e9:.1f} GFLOP/step, {flops / step_s / 1e9:.1f} GFLOP/s")
    print(f"profiled operation time: {total / 1e6 / _STEPS.value:.0f} ms a step (summed over threads)")
    for category in CATEGORIES:
        print(f"  {category}: {by_category[category] / max(total, 1):.1%}")
    print("  top operations:")
    for (name, opcode, op_name), ns in by_op.most_common(25):
        print(f"    {ns / max(total, 1):6.1%} {name} {opcode} {op_name}")
    print("  unmatched trace events (not XLA operations: runtime, Python):")
    for name, ns in unmatched.most_common(8):
        print(f"    {ns / 1e6 / _STEPS.value:8.1f} ms/step {name[:100]}")


def _seconds_each(n: int, call) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def loop_overhead(variant: str) -> None:
    """The host's share of train.py's loop: loader, synced step, pipelined loop (module docstring)."""
    from difnet_jax.data import pipeline

    config = get_config(variant)
    data, steps = config.data, _STEPS.value
    builder = pipeline.prepare(data.name, data.data_dir, data.manual_dir)
    batches = iter(train.train_loader_of(config, pipeline.source(data.name, data.get("train_split", "train"),
                                                                  data.data_dir)))
    for _ in range(3):  # the reader's threads started
        next(batches)
    load_s = _seconds_each(steps, lambda: next(batches))
    trainer = train.Trainer(config, len(pipeline.class_names(builder)))
    box = {"state": trainer.init(jax.random.PRNGKey(0)), "metrics": None}
    batch = trainer.global_batch(next(batches))
    compiled = trainer.train_step.lower(box["state"], batch).compile()

    def synced():
        box["state"], metrics = compiled(box["state"], batch)
        jax.block_until_ready(metrics)

    def pipelined():  # train.py: the next batch while the previous step runs, then wait for that step's metrics
        box["state"], metrics = compiled(box["state"], trainer.global_batch(next(batches)))
        jax.block_until_ready(box["metrics"])
        box["metrics"] = metrics

    for _ in range(2):
        synced()
    step_s = _seconds_each(steps, synced)
    loop_s = _seconds_each(steps, pipelined)
    jax.block_until_ready(box["metrics"])
    print(f"\n{variant}: crop {data.crop_size}, batch {config.train.batch_size}, {steps} steps each:")
    print(f"  loader alone {load_s * 1e3:.1f} ms a batch; step waited for {step_s * 1e3:.0f} ms; "
          f"the loop {loop_s * 1e3:.0f} ms a step: the host adds {(loop_s / step_s - 1):+.1%} "
          f"(the loader is {load_s / step_s:.1%} of a step)")


def main(argv):
    del argv
    if _SETTING.value:
        os.environ[xla_cpu.ENV] = _SETTING.value  # what the Trainer's jit compiles with
    print(timing.device_description(), " ".join(sys.argv[1:]))
    if _LOOP.value:
        for variant in _VARIANTS.value:
            loop_overhead(variant)
        return
    a = jnp.asarray(np.random.default_rng(0).normal(size=(4096, 4096)), jnp.float32)
    matmul = jax.jit(lambda a: a @ a).lower(a).compile()
    jax.block_until_ready(matmul(a))
    t = timing.time_function(matmul, a, warmup=1, runs=5)
    print(f"dense float32 4096^2 matmul: {2 * 4096**3 / t.median_s / 1e9:.1f} GFLOP/s")
    for variant in _VARIANTS.value:
        profile(variant)


if __name__ == "__main__":
    app.run(main)
