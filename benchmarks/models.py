"""Training throughput and inference latency of every model family, float32 vs bfloat16 compute.

Families: DifNet, Sim-DeepLab, PDN (24NB/8NB, 1M/2M) and DeepLabv3+ (with and without Dilated Affinity's
head and loss; the affinity variant's sqrt weighting reads statistics counted from the benchmark's own
random labels, written to a temporary file). For each model (built from experiments/configs/voc.py, 21
classes, width 64, the paper's defaults) and
each compute dtype (`config.model.dtype`; parameters stay float32):
  - training: the project's `train.Trainer` (its jitted `train_step`: forward, backward, SGD update, BN
    statistics) on a random batch of --train_batch crops of --crop; compiled ahead of time, so compile
    time is reported apart from the step time (median of --repeats steps after warm-up); images/s =
    batch / step time.
  - inference: the eval-mode forward pass (`timing.forward`, one jit, logits upsampled to the input)
    at batch 1 and --eval_size x --eval_size (505: the paper's Table 4), median of --repeats runs after
    warm-up (`timing.time_function`), with the trained-for-a-few-steps variables.
Peak memory is XLA's compiled `memory_analysis()`: temp + arguments + outputs - aliased (the train step
donates its state). GFLOP is XLA's `cost_analysis()` of the compiled program. Timed runs of one
measurement are kept within --max_seconds: estimated beforehand from the FLOPs at the last measured
rate (same dtype if any) and not run beyond it; after the first (warm-up) call, fewer repeats, or that
call alone, as marked. Appends a section to --output.

With --pdn_module, also PDN's diffusion module on its own (`pdn.DiffusionModule(--module_neighbors)`, d =
--module_d, batch 1, random input): forward on the --eval_size input's feature grid (505 -> 64x64) and
forward + backward (gradient of the sum of every layer's depth map w.r.t. the module's parameters and its
input) on the --crop's grid (321 -> 41x41), both also on the other grid, against the atrous ResNet backbone
of --module_depths at the same input sizes (forward eval-mode at --eval_size; forward + backward train-mode
at --crop, gradient of the sum of layer4 w.r.t. the parameters): the module's time as a fraction of the
backbone's. The paper (PDN, Sec. 5) says 24NB-1M adds under a third of ResNet-101's time.

  python -m benchmarks.models    # on an accelerator: batch 16, both dtypes, all four models
  python -m benchmarks.models --train_batch=2 --repeats=2 --output=/tmp/models_benchmark.md   # 2-core CPU
  python -m benchmarks.models --models=difnet50 --dtypes=bfloat16 --eval_size=513
  python -m benchmarks.models --models=difnet18 --dtypes=float32 --train_batch=2 --repeats=3 --skip_eval \
      --peer_repo=/work/.mirror/sdujump+DifNet/repo/.git --peer_python=/tmp/torchvenv/bin/python   # + the authors'
  python -m benchmarks.models --models=simdeeplab18,pdn18_24nb_1m --dtypes=float32 --train_batch=1 \
      --repeats=1 --max_seconds=30 --pdn_module --output=/tmp/pdn.md   # PDN rows and the module on a 2-core CPU
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import report
from difnet_jax import timing, train
from difnet_jax.models import affinity, family_of, pdn
from difnet_jax.models.resnet import ResNet
from difnet_jax.studies import difnet_mechanism
from experiments.configs.voc import get_config

_MODELS = flags.DEFINE_list("models", ["difnet18", "difnet50", "simdeeplab18", "simdeeplab50", "pdn18_24nb_1m",
                                       "pdn18_24nb_2m", "pdn50_24nb_1m", "pdn50_24nb_2m", "deeplabv3plus18",
                                       "deeplabv3plus18_affinity"],
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
_PDN_MODULE = flags.DEFINE_bool("pdn_module", False, "Also time PDN's diffusion module alone against the backbone.")
_MODULE_NEIGHBORS = flags.DEFINE_integer("module_neighbors", 24, "The module's neighbourhood (8 or 24).")
_MODULE_D = flags.DEFINE_integer("module_d", 256, "The module's feature width d.")
_MODULE_DEPTHS = flags.DEFINE_list("module_depths", ["18", "50", "101"], "Backbone depths the module is set against.")
_PEER_REPO = flags.DEFINE_string(
    "peer_repo", "", "github.com/sdujump/DifNet (a checkout, or a git directory such as the fetch tool's mirror): "
    "adds the DifNet authors' PyTorch train step (benchmarks/torch_peer.py) at the same crop and batch, beside each "
    "float32 DifNet training row. Nothing of theirs is copied into the project.")
_PEER_PYTHON = flags.DEFINE_string("peer_python", "python3", "A Python with torch, for --peer_repo (a separate venv).")

NUM_CLASSES = 21
GIB = 2**30


def model_label(variant: str) -> str:
    """E.g. 'DifNet-50', 'PDN-18 24NB-2M', 'DeepLabv3+-18 + affinity' (the family's `label`)."""
    model = get_config(variant).model
    return family_of(model).label(model)


def _affinity_setup(config, labels: np.ndarray) -> str | None:
    """For a DeepLabv3+ with the affinity head (whose bias starts from the statistics, whatever the weighting):
    counts them on `labels`, writes them to a temporary JSON file and points the config at it; returns the path
    (None when nothing was needed)."""
    propagation = family_of(config.model).propagation(config.model)  # the affinity head's rates, if it has one
    if propagation is None:
        return None
    stats = affinity.count_neighbours(labels, propagation.rates)
    handle, path = tempfile.mkstemp(suffix=".json", prefix="affinity_stats_")
    with os.fdopen(handle, "w") as f:
        json.dump({"rates": affinity.stats_to_json(stats)}, f)
    config.model[config.model.name].affinity_stats = path
    return path


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
    """Keeps the timed runs of a measurement within max_seconds, from FLOPs and then from the first call."""

    def __init__(self, max_seconds: float | None = None, repeats: int | None = None):
        self.seconds_per_flop: dict[str, float] = {}  # dtype -> last measured
        self.max_seconds = _MAX_SECONDS.value if max_seconds is None else max_seconds
        self.repeats = _REPEATS.value if repeats is None else repeats

    def estimate(self, dtype: str, flops: float | None) -> float | None:
        rate = self.seconds_per_flop.get(dtype) or next(iter(self.seconds_per_flop.values()), None)
        return None if rate is None or flops is None else rate * flops

    def run(self, run: Callable, dtype: str, flops: float | None) -> tuple[float | None, str, int]:
        """(median seconds or None, note, timed runs); the first call of `run` is the (first) warm-up."""
        budget, estimate = self.max_seconds, self.estimate(dtype, flops)
        if estimate is not None and estimate > budget:
            return None, f"not timed (est. {estimate:.0f} s a run)", 0
        start = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - start
        if flops:
            self.seconds_per_flop[dtype] = first / flops
        if 2 * first > budget:  # no room for a second warm-up and one run
            return first, "first call only, no warm-up", 1
        runs = max(1, min(self.repeats, int(budget / first) - 1))
        measured = timing.time_function(run, warmup=1, runs=runs)  # warm-ups: the call above and this one
        if flops:
            self.seconds_per_flop[dtype] = measured.median_s / flops
        note = "" if runs == self.repeats else f"{runs} of {self.repeats} runs (budget)"
        return measured.median_s, note, runs


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value / scale:.{digits}f}"


def measure(variant: str, dtype: str, budget: Budget, *, batch_size: int | None = None, crop: int | None = None,
            eval_size: int | None = None, skip_train: bool | None = None,
            skip_eval: bool | None = None) -> tuple[dict, dict]:
    """(training row, inference row) of one model and dtype; the keyword arguments default to the flags."""
    batch_size = _TRAIN_BATCH.value if batch_size is None else batch_size
    crop = _CROP.value if crop is None else crop
    eval_size = _EVAL_SIZE.value if eval_size is None else eval_size
    skip_train = _SKIP_TRAIN.value if skip_train is None else skip_train
    skip_eval = _SKIP_EVAL.value if skip_eval is None else skip_eval
    config = get_config(variant)
    config.model.dtype = dtype
    config.data.crop_size = crop
    config.train.batch_size = batch_size
    label = model_label(variant)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch_size, crop, crop, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, (batch_size, crop, crop)).astype(np.int32)
    stats_path = _affinity_setup(config, labels)  # read by the build (bias init) and when the loss is traced
    try:
        return _measure(config, label, dtype, budget, images, labels, eval_size, skip_train, skip_eval)
    finally:
        if stats_path:
            os.remove(stats_path)


def _measure(config, label: str, dtype: str, budget: Budget, images: np.ndarray, labels: np.ndarray,
             eval_size: int, skip_train: bool, skip_eval: bool) -> tuple[dict, dict]:
    batch_size = images.shape[0]
    trainer = train.Trainer(config, NUM_CLASSES)
    holder = {"state": trainer.init(jax.random.PRNGKey(0))}
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    base = {"model": label, "dtype": dtype, "params": params}

    train_row = dict(base, batch=batch_size)
    if not skip_train:
        batch = trainer.global_batch({"image": images, "label": labels})
        compiled, compile_s = compile_timed(trainer.train_step, holder["state"], batch)
        flops = _flops(compiled)

        def step():
            holder["state"], step_metrics = compiled(holder["state"], batch)  # the state is donated
            return step_metrics

        seconds, note, runs = budget.run(step, dtype, flops)
        train_row.update(compile_s=compile_s, seconds=seconds, note=note, runs=runs, flops=flops,
                         peak=report.peak_bytes(compiled))
        print(f"train {label} {dtype}: compile {compile_s:.1f} s, step {_fmt_seconds(seconds)} {note}", flush=True)

    eval_row = dict(base, size=eval_size)
    if not skip_eval:
        model = trainer.model
        state = holder["state"]
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        images = jax.random.normal(jax.random.PRNGKey(1), (1, eval_size, eval_size, 3))
        compiled, compile_s = compile_timed(timing.forward, model, variables, images)
        flops = _flops(compiled)
        seconds, note, runs = budget.run(lambda: compiled(variables, images), dtype, flops)
        eval_row.update(compile_s=compile_s, seconds=seconds, note=note, runs=runs, flops=flops,
                        peak=report.peak_bytes(compiled))
        print(f"eval {label} {dtype}: compile {compile_s:.1f} s, latency {_fmt_seconds(seconds)} {note}", flush=True)
    return train_row, eval_row


def feature_grid(size: int) -> int:
    """Side of the output-stride-8 feature grid of a size x size input (505 -> 64, 321 -> 41)."""
    return (size - 1) // 8 + 1


def _module_row(what: str, pass_: str, size: int, run: Callable, compiled, compile_s: float, budget: Budget,
                dtype: str) -> dict:
    flops = _flops(compiled)
    seconds, note, runs = budget.run(run, dtype, flops)
    print(f"{what} {pass_} {size}: compile {compile_s:.1f} s, {_fmt_seconds(seconds)} {note}", flush=True)
    return {"what": what, "pass": pass_, "size": size, "compile_s": compile_s, "seconds": seconds, "note": note,
            "runs": runs, "flops": flops, "peak": report.peak_bytes(compiled)}


def measure_module(size: int, backward: bool, dtype: str, budget: Budget, *, neighbors: int, d: int) -> dict:
    """PDN's DiffusionModule alone on the feature grid of a size x size input, batch 1 (module docstring)."""
    module = pdn.DiffusionModule(neighbors, dtype=jnp.dtype(dtype))
    grid = feature_grid(size)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, grid, grid, d))
    params = jax.jit(module.init)(jax.random.PRNGKey(1), x)
    if backward:
        def fn(params, x):
            def total(params, x):
                return sum(jnp.sum(h.astype(jnp.float32)) for h in module.apply(params, x))
            return jax.grad(total, argnums=(0, 1))(params, x)
    else:
        def fn(params, x):
            return module.apply(params, x)[-1]
    compiled, compile_s = compile_timed(jax.jit(fn), params, x)
    what = f"module {neighbors}NB d={d} ({grid}x{grid})"
    return _module_row(what, "forward + backward" if backward else "forward", size,
                       lambda: compiled(params, x), compiled, compile_s, budget, dtype)


def measure_backbone(depth: int, size: int, backward: bool, dtype: str, budget: Budget) -> dict:
    """The atrous ResNet (output stride 8, width 64) of PDN, batch 1: eval forward or train forward + backward."""
    net = ResNet(depth, 64, dtype=jnp.dtype(dtype))
    images = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3))
    variables = timing.random_variables(net, images)
    if backward:
        def fn(variables, images):
            def total(params):
                features, _ = net.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                                        train=True, mutable=["batch_stats"])
                return jnp.sum(features["layer4"].astype(jnp.float32))
            return jax.grad(total)(variables["params"])
    else:
        def fn(variables, images):
            return net.apply(variables, images, train=False)["layer4"]
    compiled, compile_s = compile_timed(jax.jit(fn), variables, images)
    return _module_row(f"ResNet-{depth} atrous (OS 8)", "forward + backward" if backward else "forward", size,
                       lambda: compiled(variables, images), compiled, compile_s, budget, dtype)


def module_rows(budget: Budget, dtype: str) -> list[dict]:
    """The module and the backbones at --eval_size (forward) and --crop (forward + backward), and cross."""
    rows = []
    for size in (_EVAL_SIZE.value, _CROP.value):
        for backward in (False,) if _SKIP_TRAIN.value else (False, True):
            rows.append(measure_module(size, backward, dtype, budget, neighbors=_MODULE_NEIGHBORS.value,
                                       d=_MODULE_D.value))
    for depth in _MODULE_DEPTHS.value:
        rows.append(measure_backbone(int(depth), _EVAL_SIZE.value, False, dtype, budget))
        if not _SKIP_TRAIN.value:
            rows.append(measure_backbone(int(depth), _CROP.value, True, dtype, budget))
    return rows


def module_table(rows: list[dict]) -> list[str]:
    """Each timing, and the module's time as a fraction of each backbone's at the same input size and pass."""
    modules = {(r["pass"], r["size"]): r for r in rows if r["what"].startswith("module")}
    lines = ["| what | pass | input | compile (s) | time | GFLOP | GFLOP/s | peak memory (GiB) | runs | note | "
             "module / backbone |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        fraction = ""
        module = modules.get((r["pass"], r["size"]))
        if not r["what"].startswith("module") and module and module["seconds"] and r["seconds"]:
            fraction = f"{module['seconds'] / r['seconds']:.2f}"
        lines.append(f"| {r['what']} | {r['pass']} | {r['size']} | {r['compile_s']:.1f} | {_fmt_seconds(r['seconds'])} "
                     f"| {_fmt(r['flops'], 1e9, 1)} | {_rate(r)} | {_fmt(r['peak'], GIB)} | {r['runs']} | {r['note']} "
                     f"| {fraction} |")
    return lines


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


def peer_lines(train_rows: list[dict]) -> list[str]:
    """The authors' PyTorch DifNet train step (--peer_repo) at each float32 DifNet row's crop and batch, one run
    of --repeats steps after a warm-up, right after the project's row: the project's step / theirs."""
    from benchmarks import torch_peer

    lines = []
    for row in train_rows:
        if not row["model"].startswith("DifNet-") or row["dtype"] != "float32" or not row.get("seconds"):
            continue
        layers = int(row["model"].split("-")[1])
        peer = torch_peer.run_peer(_PEER_REPO.value, _PEER_PYTHON.value, layers=layers, crop=_CROP.value,
                                   batch=row["batch"], repeats=max(_REPEATS.value, 1))
        print(f"peer DifNet-{layers}: torch {peer['torch']}, {peer['threads']} threads, step "
              f"{_fmt_seconds(peer['median_s'])}", flush=True)
        if not lines:
            lines = ["The DifNet authors' PyTorch train step (`model_difnet.py` of github.com/sdujump/DifNet, built at "
                     "benchmark time in a separate environment: forward, bilinear upsampling, cross-entropy, "
                     "backward, SGD with momentum and weight decay; float32, random init and data), same crop and "
                     "batch, against the project's row above:", "",
                     "| model | crop | batch | project step | authors' PyTorch step | torch | threads | runs | "
                     "project speed / authors' |", "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        lines.append(f"| {row['model']} | {_CROP.value} | {row['batch']} | {_fmt_seconds(row['seconds'])} | "
                     f"{_fmt_seconds(peer['median_s'])} | {peer['torch']} | {peer['threads']} | {len(peer['times'])} "
                     f"| {peer['median_s'] / row['seconds']:.2f}x |")
    return lines


def main(argv):
    del argv
    start, load = time.perf_counter(), os.getloadavg()
    budget = Budget()
    train_rows, eval_rows = [], []
    for variant in _MODELS.value:
        for dtype in _DTYPES.value:
            train_row, eval_row = measure(variant, dtype, budget)
            if not _SKIP_TRAIN.value:
                train_rows.append(train_row)
            if not _SKIP_EVAL.value:
                eval_rows.append(eval_row)
    peer = peer_lines(train_rows) if _PEER_REPO.value and not _SKIP_TRAIN.value else []
    module_dtype = _DTYPES.value[0]
    module = module_rows(Budget(), module_dtype) if _PDN_MODULE.value else []  # its own FLOP rates

    paper = difnet_mechanism.PAPER_TIMES
    section = [
        *report.heading("Models: training throughput and inference latency", "benchmarks.models",
                        timing.device_description()),
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
    if peer:
        section += [*peer, ""]
    if eval_rows:
        section += [f"Inference: eval-mode forward (`timing.forward`), batch 1, {_EVAL_SIZE.value}x"
                    f"{_EVAL_SIZE.value}. The paper's Table 4 (GTX 1080, 505x505): DifNet-50 "
                    f"{1e3 * (paper['seed'] + paper['similarity'] + paper['diffusion']):.0f} ms (seed "
                    f"{1e3 * paper['seed']:.0f} + similarity {1e3 * paper['similarity']:.0f} + diffusion "
                    f"{1e3 * paper['diffusion']:.0f} ms), Sim-DeepLab-101 {1e3 * paper['simdeeplab']:.0f} ms.", "",
                    *eval_table(eval_rows), "", *ratios(eval_rows, "inference")]
        section += [""] if section[-1] else []
    if module:
        section += [f"PDN's diffusion module alone (`pdn.DiffusionModule({_MODULE_NEIGHBORS.value})`, 4 layers, d = "
                    f"{_MODULE_D.value}, {module_dtype}, batch 1, random input) on the output-stride-8 grid of the "
                    "input size shown, against the atrous ResNet backbone (width 64, OS 8) at the same input size: "
                    "forward = eval mode; forward + backward = gradient of the sum of every layer's depth map w.r.t. "
                    "the module's parameters and input, or of the sum of layer4 w.r.t. the backbone's parameters "
                    "(train-mode BatchNorm). Last column: the module's time / the backbone's, same pass and input. "
                    "The paper (PDN): 24NB-1M adds under a third of ResNet-101's time.", "", *module_table(module)]
    report.append_section(_OUTPUT.value, "\n".join(section).rstrip() + "\n")

if __name__ == "__main__":
    app.run(main)
