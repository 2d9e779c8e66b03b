"""One command that proves and measures the accelerator paths: checks first, then figures.

  python -m benchmarks.accelerator --out=runs/accelerator            # full sweep (GPU/TPU)
  python -m benchmarks.accelerator --out=runs/accelerator --quick    # sized for < 8 min on one H100
  python -m benchmarks.accelerator --out=/tmp/acc --smoke            # CPU, tiny sizes: 45-55 s on 2 busy cores

What it does, in order (each part lands in DIR/report.md and DIR/report.json):
1. environment: device, jax/jaxlib/CUDA/cuDNN versions, whether cuDNN flash attention takes the cascade's
   shapes, and the measured float32 (the device's default matmul precision) and bfloat16 matmul rates:
   the roofline every other figure is set against;
2. correctness on the device (exit status 1 if any disagrees; the checks are `benchmarks/accelerator_checks.py`):
   - every diffusion backend (dense, chunked, fused, auto) iterated to the fixed point of one walk
     (one P, mu = 0.5, beta = 1, 40 steps) against the closed form of Eq. 2, y = (1 - mu)(I - mu P)^-1 s,
     in float64 numpy: the value and the gradient w.r.t. the seed ((1 - mu)(I - mu P)^-T w);
   - the 5-walk cascade (random Psi_t, mu/beta logits) of every backend against a float64 reference (pure
     jnp, x64, on the CPU): the value and the gradients w.r.t. the seed, every Psi_t and the logits; and
     every backend against `dense`;
   - float32 and bfloat16 inputs, N not a multiple of the chunked block;
   - a few DifNet-18 train steps (the `difnet18,synthetic` config, synthetic_shapes scenes rendered in
     memory, SGD, one initial state made on the host) on the device against the same steps on the CPU
     (`jax.devices('cpu')`); on a CPU-only machine the two are the same device, so the steps run once and
     the report says the comparison degenerates; the bfloat16 loss curve is reported against the float32
     one (a target, not a check);
3. measurements: the cascade (5 walks, C = 64, K = 21) per backend, dtype, N, B, forward and forward +
   backward, as time and as a fraction of the matmul roofline counted in attention FLOPs (forward
   2 T B N^2 (C + K), forward + backward three times that); the same cascade written with PyTorch's
   `scaled_dot_product_attention` when torch imports (never a dependency); train images/s (crop 321,
   global batch 16) and 505x505 inference latency with XLA's peak memory for each model of --variants
   (variants of experiments/configs/variants.py; those not in the table yet are listed as absent);
4. the main job end to end: `python -m experiments.voc` on `difnet18,synthetic` and with
   `--config.model.width=64`, as subprocesses, with wall time and final mIoU (from metrics.jsonl);
5. the performance targets (`targets`: diffusion latency, fraction of the matmul rate, against PyTorch, ...),
   each marked met / missed (or not measured).

--quick keeps to a time budget (--budget_s, 430 s from the start; the cascade sweep may start items until
45% of it, the PyTorch rows 55%, the models 80%, the main job until the end, when it is stopped): what
does not fit is marked "not run (budget)"; the full run has no budget. --smoke runs every part at tiny
sizes on the CPU (no end-to-end job). The sizes of each mode: `benchmarks/accelerator_sizes.py`.

On a machine without the project's data packages. The checks of the cascade and its measurements need
only jax, numpy and absl; the train steps, the models and the main job need the rest of requirements.txt.
GPU images often lack tensorflow-datasets, grain, array-record and ml-collections; carry them as wheels
(run here, in the repository root, with the device's Python version; `unzip -p WHEEL '*/METADATA' | grep
^Requires-Dist` lists what else a wheel needs):

  echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_28_x86_64 -d .whl tensorflow-datasets==4.9.10 array-record==0.8.6 grain==0.2.18 \
      ml-collections==1.1.0 importlib_resources==7.1.0 dm-tree immutabledict promise simple-parsing \
      tensorflow-metadata termcolor toml wrapt
  # there:
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  python3 -m benchmarks.accelerator --out=$OUT/accelerator --quick

Nothing is downloaded by this command; the synthetic dataset of the main job is generated locally
(into DIR/tfds). GPU memory is not preallocated (XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), here
and in the main job's subprocesses, so that the PyTorch peer and the subprocesses find memory.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import cascade_problem, report
from benchmarks.accelerator_checks import Diffuser, fresh_state, run_checks, train_program
from benchmarks.accelerator_sizes import (
    DTYPES,
    NUM_CLASSES,
    SIZES,
    Sizes,
    get_backend,
    model_config,
    set_backend,
    variants,
)
from difnet_jax import timing
from difnet_jax.models import diffusion

_OUT = flags.DEFINE_string("out", None, "Directory for report.md, report.json and the end-to-end runs.")
_QUICK = flags.DEFINE_bool("quick", False, "Sized to finish in under 8 minutes on one H100 (see --budget_s).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes on any device (CPU): every code path, no figures to quote.")
_VARIANTS = flags.DEFINE_list("variants", None, "Model variants to time (default by mode); those the config "
                                "table lacks are listed as absent.")
_PARTS = flags.DEFINE_list("parts", ["checks", "cascade", "models", "e2e"], "Which parts to run.")
_BUDGET_S = flags.DEFINE_float("budget_s", None, "Seconds for the whole run (default: --quick 430, else none); "
                               "measurements that would start later are marked 'not run (budget)'.")
_MODEL_BACKEND = flags.DEFINE_string("model_backend", "auto", "DifNet's diffusion backend in the model rows.")

WALKS, CHANNELS, CLASSES = cascade_problem.WALKS, cascade_problem.CHANNELS, cascade_problem.CLASSES
GIB = 2**30
E2E_JOBS = (("difnet18,synthetic", ()), ("difnet18,synthetic width 64", ("--config.model.width=64",)))


# --- environment -------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import jaxlib

    versions = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "numpy": np.__version__}
    try:
        from jax._src.lib import cuda_versions

        if cuda_versions is not None:
            versions["cuda runtime"] = str(cuda_versions.cuda_runtime_get_version())
            versions["cudnn"] = str(cuda_versions.cudnn_get_version())
    except Exception as error:  # noqa: BLE001 (private module, optional)
        versions["cuda"] = f"unknown ({type(error).__name__})"
    if shutil.which("nvidia-smi"):
        try:
            versions["nvidia-smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch

        versions["torch"] = f"{torch.__version__} (cuda {torch.version.cuda})"
    except ImportError:
        versions["torch"] = "not importable"
    return versions


def _device_memory() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def matmul_rate(size: int, dtype: str) -> float:
    """FLOP/s of a jitted size^3 matmul at the device's default precision (median of 5 after warm-up)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype)
    compiled = jax.jit(lambda a: a @ a).lower(a).compile()
    return 2.0 * size**3 / timing.time_function(compiled, a, warmup=1, runs=5).median_s


def cudnn_probe() -> str:
    """Whether cuDNN flash attention takes the cascade's shapes (bf16, C = 64, V padded to 64)."""
    if jax.default_backend() != "gpu":
        return f"not applicable (platform {jax.default_backend()})"
    psi = jnp.ones((1, 1000, CHANNELS), jnp.bfloat16)
    y = jnp.ones((1, 1000, CLASSES), jnp.float32)
    try:
        jax.block_until_ready(jax.jit(lambda p, v: diffusion._attention(p, v, "cudnn"))(psi, y))
    except Exception as error:  # noqa: BLE001 (any refusal is the answer)
        return f"refused: {type(error).__name__}: {str(error)[:300]}"
    return "runs (bf16, N = 1000, C = 64)"


# --- measurements ------------------------------------------------------------------------------------------


class Deadline:
    """Measurements within a budget: `expired()` once the section's share of it is spent."""

    def __init__(self, budget_s: float | None):
        self.start, self.budget = time.perf_counter(), budget_s

    def expired(self, share: float = 1.0) -> bool:
        return self.budget is not None and time.perf_counter() - self.start > share * self.budget


def cascade_flops(batch: int, n: int, mode: str) -> float:
    """Attention FLOPs: forward 2 T B N^2 (C + K); forward + backward three times that (cascade_problem.model_flops)."""
    fwd_bwd = cascade_problem.model_flops(batch, n)
    return fwd_bwd if mode == "fwd+bwd" else fwd_bwd / 3


def _cascade_function(backend: str, block_size: int, mode: str):
    def forward(seed, psis, mu_logits, beta_logits):
        return diffusion.cascade(seed, psis, mu_logits, beta_logits, backend, block_size=block_size)[0]

    if mode == "fwd":
        return forward
    return jax.value_and_grad(lambda *a: (forward(*a) ** 2).sum(), argnums=(0, 1, 2, 3))


def _cascade_arguments(batch: int, n: int, dtype: str):
    rng = np.random.default_rng(0)
    seed = jnp.asarray(rng.normal(size=(batch, n, CLASSES)), dtype)
    psis = [jnp.asarray(0.3 * rng.normal(size=(batch, n, CHANNELS)), dtype) for _ in range(WALKS)]
    return seed, psis, jnp.zeros(WALKS), jnp.zeros(WALKS)


def _dense_bytes(batch: int, n: int, mode: str) -> float:
    """Dense's N x N arrays: P of every walk kept for the backward, plus two in flight."""
    return 4.0 * batch * n * n * ((WALKS + 2) if mode == "fwd+bwd" else 2)


def measure_cascade(sizes: Sizes, rates: dict[str, float], deadline: Deadline, memory_cap: float) -> list[dict]:
    """One row per (N, B, dtype, backend, mode); the issue's target combinations first."""
    combos = [(n, b, dtype, backend, mode) for n in sizes.ns for b in sizes.batches for dtype in sizes.sweep_dtypes
              for backend in ("dense", "chunked", "fused") for mode in ("fwd", "fwd+bwd")]
    big = max(sizes.ns)

    def priority(combo):
        n, b, dtype, _, mode = combo
        if n == 4096 and b == 1 and mode == "fwd":
            return 0
        if n == big and dtype == "bfloat16" and mode == "fwd+bwd":
            return 1
        return 2

    rows = []
    for n, batch, dtype, backend, mode in sorted(combos, key=priority):
        row = {"n": n, "batch": batch, "dtype": dtype, "backend": backend, "mode": mode,
               "auto": diffusion.resolve_backend("auto", jax.ShapeDtypeStruct((batch, n, CHANNELS), dtype))}
        rows.append(row)
        if deadline.expired(0.45):
            row["note"] = "not run (budget)"
            continue
        if backend == "dense" and _dense_bytes(batch, n, mode) > memory_cap:
            row["note"] = f"not run: est. {_dense_bytes(batch, n, mode) / GIB:.0f} GiB > {memory_cap / GIB:.0f}"
            continue
        arguments = _cascade_arguments(batch, n, dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                start = time.perf_counter()
                compiled = jax.jit(_cascade_function(backend, sizes.block_size, mode)).lower(*arguments).compile()
                row["compile_s"] = time.perf_counter() - start
                row["peak"] = report.peak_bytes(compiled)
                if row["peak"] is not None and row["peak"] > memory_cap:
                    row["note"] = f"not run: peak {row['peak'] / GIB:.1f} GiB"
                    continue
                row["seconds"] = timing.time_function(compiled, *arguments, warmup=1, runs=sizes.repeats).median_s
        except Exception as error:  # noqa: BLE001 (recorded in the row)
            row["note"] = f"error: {type(error).__name__}: {str(error)[:200]}"
            continue
        row["fraction"] = cascade_flops(batch, n, mode) / row["seconds"] / rates[dtype]
        print(f"cascade N={n} B={batch} {dtype} {backend} {mode}: {row['seconds'] * 1e3:.3f} ms", flush=True)
    return rows


def measure_torch(sizes: Sizes, rates: dict[str, float], deadline: Deadline) -> tuple[list[dict], str]:
    """The same cascade with torch's scaled_dot_product_attention (Q = K = Psi, V = y padded to 64, scale 1)."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return [], "torch is not importable: no peer rows"
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    rows = []
    for n in sizes.ns:
        for batch in sizes.batches:
            for dtype in sizes.sweep_dtypes:
                for mode in ("fwd", "fwd+bwd"):
                    row = {"n": n, "batch": batch, "dtype": dtype, "backend": f"torch {torch.__version__} SDPA",
                           "mode": mode}
                    rows.append(row)
                    if deadline.expired(0.55):
                        row["note"] = "not run (budget)"
                        continue
                    try:
                        run = _torch_cascade(torch, F, device, batch, n, getattr(torch, dtype), mode)
                        row["seconds"] = _torch_time(torch, device, run, sizes.repeats)
                        row["fraction"] = cascade_flops(batch, n, mode) / row["seconds"] / rates[dtype]
                    except Exception as error:  # noqa: BLE001
                        row["note"] = f"error: {type(error).__name__}: {str(error)[:200]}"
    return rows, f"torch {torch.__version__} on {device}"


def _torch_cascade(torch, F, device, batch, n, dtype, mode):
    generator = torch.Generator().manual_seed(0)
    seed = torch.randn(batch, n, CLASSES, generator=generator).to(device)
    psis = [(0.3 * torch.randn(batch, 1, n, CHANNELS, generator=generator)).to(device, dtype)
            for _ in range(WALKS)]
    mu_logits, beta_logits = torch.zeros(WALKS, device=device), torch.zeros(WALKS, device=device)
    leaves = [seed, *psis, mu_logits, beta_logits]
    if mode == "fwd+bwd":
        for leaf in leaves:
            leaf.requires_grad_(True)

    def forward():
        mus, betas = torch.sigmoid(mu_logits), torch.sigmoid(beta_logits)
        y = seed
        for t, psi in enumerate(psis):
            v = F.pad(y.to(dtype), (0, CHANNELS - CLASSES))[:, None]
            diffused = F.scaled_dot_product_attention(psi, psi, v, scale=1.0)[:, 0, :, :CLASSES].float()
            y = betas[t] * (mus[t] * diffused + (1 - mus[t]) * seed) + (1 - betas[t]) * y
        return y

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return forward()
        return run
    return lambda: torch.autograd.grad((forward() ** 2).sum(), leaves)


def _torch_time(torch, device, run, repeats):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure_models(sizes: Sizes, models: tuple[str, ...], deadline: Deadline,
                   backend: str = "auto") -> tuple[list[dict], list[str]]:
    """Train images/s and inference latency (batch 1, eval_size^2) with XLA's peak memory, per model and dtype."""
    known = variants()
    absent = [m for m in models if m not in known]
    rows = []
    for variant in (m for m in models if m in known):
        for dtype in sizes.model_dtypes:
            row = {"model": variant, "dtype": dtype}
            rows.append(row)
            if deadline.expired(0.8):
                row["note"] = "not run (budget)"
                continue
            try:
                _measure_model(variant, dtype, sizes, row, backend)
            except Exception as error:  # noqa: BLE001
                row["note"] = f"error: {type(error).__name__}: {str(error)[:200]}"
            print(f"model {variant} {dtype}: {row}", flush=True)
    return rows, absent


def _measure_model(variant: str, dtype: str, sizes: Sizes, row: dict, backend: str) -> None:
    config = model_config(variant, dtype, sizes)
    set_backend(config, backend)
    row["backend"] = get_backend(config)
    devices = [d for d in jax.devices() if d.platform != "cpu"] or jax.devices("cpu")[:1]
    if sizes.train_batch % len(devices):
        devices = devices[:1]
    trainer, compiled, compile_s = train_program(config, devices)
    holder = {"state": fresh_state(trainer)}
    row["params"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"].params))
    crop, batch_size = config.data.crop_size, config.train.batch_size
    rng = np.random.default_rng(0)
    batch = trainer.global_batch({
        "image": rng.normal(size=(batch_size, crop, crop, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, (batch_size, crop, crop)).astype(np.int32)})

    def step():
        holder["state"], step_metrics = compiled(holder["state"], batch)
        return step_metrics

    seconds = timing.time_function(step, warmup=1, runs=sizes.repeats).median_s
    row.update(train_compile_s=compile_s, train_step_s=seconds, images_per_s=batch_size / seconds,
               train_peak=report.peak_bytes(compiled))

    model, state = trainer.model, holder["state"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = jnp.zeros((1, sizes.eval_size, sizes.eval_size, 3), jnp.float32)
    start = time.perf_counter()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, images).compile()
    row["eval_compile_s"] = time.perf_counter() - start
    row["latency_s"] = timing.time_function(forward, variables, images, warmup=1, runs=sizes.repeats).median_s
    row["eval_peak"] = report.peak_bytes(forward)


def run_e2e(out: str, deadline: Deadline) -> list[dict]:
    """The main job (`python -m experiments.voc`) as subprocesses: wall time and final mIoU."""
    data_dir = os.path.join(out, "tfds")
    rows = []
    prepare = [sys.executable, "-m", "experiments.prepare_data", "--dataset=synthetic_shapes", f"--data_dir={data_dir}"]
    rows.append(_subprocess_row("prepare synthetic_shapes", prepare, os.path.join(out, "e2e_prepare.log"),
                                deadline, None))
    for name, extra in E2E_JOBS:
        workdir = os.path.join(out, "e2e_" + re.sub(r"[^a-z0-9]+", "_", name))
        command = [sys.executable, "-m", "experiments.voc",
                   "--config=experiments/configs/voc.py:difnet18,synthetic", f"--workdir={workdir}",
                   f"--config.data.data_dir={data_dir}", *extra]
        rows.append(_subprocess_row(name, command, workdir + ".log", deadline, workdir))
    return rows


def _subprocess_row(name, command, log_path, deadline: Deadline, workdir) -> dict:
    row = {"job": name, "command": " ".join(command[1:])}
    if deadline.expired():
        row["note"] = "not run (budget)"
        return row
    timeout = None if deadline.budget is None else max(10.0, deadline.budget - (time.perf_counter() - deadline.start))
    start = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                     env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
        row["returncode"] = process.returncode
    except subprocess.TimeoutExpired:
        row["note"] = f"stopped at the budget ({timeout:.0f} s)"
    row["wall_s"] = time.perf_counter() - start
    row["log"] = log_path
    if workdir is not None:
        row.update(final_metrics(workdir, log_path))
    return row


def final_metrics(workdir: str, log_path: str | None = None) -> dict:
    """The last evaluation of a run: from WORKDIR/metrics.jsonl, else the log's 'Final validation mIoU' line."""
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            evals = [r for r in map(json.loads, filter(str.strip, f)) if "val/miou" in r]
        if evals:
            return {"miou": evals[-1]["val/miou"], "step": evals[-1]["step"]}
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            found = re.findall(r"Final validation mIoU ([0-9.]+) .* at step (\d+)", f.read())
        if found:
            return {"miou": float(found[-1][0]), "step": int(found[-1][1])}
    return {}


# --- targets and the report --------------------------------------------------------------------------------


def _best(rows, **match):
    timed = [r for r in rows if r.get("seconds") and all(r[k] == v for k, v in match.items())]
    return min(timed, key=lambda r: r["seconds"], default=None)


TARGETS_HEADING = "## Performance targets (for GPUs and TPUs; some for an H100)"


def targets(cascade_rows, torch_rows, model_rows, train_info, device_kind: str, platform: str = "gpu") -> list[dict]:
    """The performance targets, from what this run measured (they are for GPUs and TPUs, some for an H100)."""
    on_h100 = "H100" in device_kind
    out = []

    def add(name, value, status):
        if status in ("met", "missed") and platform == "cpu":
            status += " (on a CPU: the target is for GPUs/TPUs)"
        elif status in ("met", "missed") and not on_h100 and "H100" in name:
            status += f" (on {device_kind}, not an H100)"
        out.append({"target": name, "value": value, "status": status})

    best = _best(cascade_rows, n=4096, batch=1, mode="fwd")
    add("Diffusion (5 walks, fwd) at 505x505 (N = 4,096, B = 1) < 0.5 ms on an H100",
        f"{best['seconds'] * 1e3:.3f} ms ({best['backend']}, {best['dtype']})" if best else "not measured",
        ("met" if best["seconds"] < 5e-4 else "missed") if best else "not measured")

    big = 16384
    best = _best(cascade_rows, n=big, dtype="bfloat16", mode="fwd+bwd")
    if best:
        add(f"Best backend fwd+bwd at N = {big:,}, bf16: >= 50% of the bf16 matmul rate (attention FLOPs)",
            f"{best['fraction']:.1%} ({best['backend']}, B = {best['batch']})",
            "met" if best["fraction"] >= 0.5 else "missed")
        peer = _best(torch_rows, n=big, batch=best["batch"], dtype="bfloat16", mode="fwd+bwd")
        add(f"... and at least as fast as PyTorch SDPA (N = {big:,}, B = {best['batch']}, bf16, fwd+bwd)",
            f"{best['seconds'] * 1e3:.2f} ms vs {peer['seconds'] * 1e3:.2f} ms" if peer else "no torch row",
            ("met" if best["seconds"] <= peer["seconds"] else "missed") if peer else "not measured")
    else:
        add("Best backend fwd+bwd at N = 16,384, bf16: >= 50% of the bf16 matmul rate (attention FLOPs)",
            "not measured", "not measured")

    wrong = []
    groups = {(r["n"], r["batch"], r["dtype"], r["mode"]) for r in cascade_rows}
    for n, batch, dtype, mode in sorted(groups):
        best = _best(cascade_rows, n=n, batch=batch, dtype=dtype, mode=mode)
        picked = _best(cascade_rows, n=n, batch=batch, dtype=dtype, mode=mode, backend=next(
            r["auto"] for r in cascade_rows if (r["n"], r["batch"], r["dtype"], r["mode"]) == (n, batch, dtype, mode)))
        if best and picked and picked["seconds"] > 1.1 * best["seconds"]:
            wrong.append(f"N={n} B={batch} {dtype} {mode}: auto = {picked['backend']}, fastest {best['backend']}")
    measured = any(r.get("seconds") for r in cascade_rows)
    add("`auto` picks the fastest backend that fits (within 10%)",
        "; ".join(wrong) if wrong else ("every measured combination" if measured else "not measured"),
        ("missed" if wrong else "met") if measured else "not measured")

    by = {(r["model"], r["dtype"]): r for r in model_rows}
    f32, bf16 = by.get(("difnet50", "float32"), {}), by.get(("difnet50", "bfloat16"), {})
    if f32.get("train_step_s") and bf16.get("train_step_s"):
        speedup = f32["train_step_s"] / bf16["train_step_s"]
        add("bf16 train step >= 1.5x faster than f32 (DifNet-50)", f"{speedup:.2f}x",
            "met" if speedup >= 1.5 else "missed")
    else:
        add("bf16 train step >= 1.5x faster than f32 (DifNet-50)", "not measured", "not measured")
    if "bf16_vs_f32" in train_info:
        add("... bf16 loss curve within 5% of f32 (DifNet-18 train-check steps)",
            f"max relative difference {train_info['bf16_vs_f32']:.2%}",
            "met" if train_info["bf16_vs_f32"] <= 0.05 else "missed")
    return out


def _ms(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f}"


def render(data: dict) -> str:
    lines = [f"# Accelerator check ({data['mode']}, {data['date']})", "",
             f"Command: `{data['command']}`", "",
             f"Verdict: **{'PASS' if data['failures'] == 0 else 'FAIL'}** ({data['failures']} failed checks)."]
    if data["mode"] == "smoke":
        lines.append("Smoke mode: tiny sizes, figures only show that every path runs; do not quote them.")
    lines += ["", "## Environment", "", f"- device: {data['device']}"]
    lines += [f"- {k}: {v}" for k, v in data["versions"].items()]
    lines += [f"- cuDNN flash attention for the cascade: {data['cudnn']}",
              f"- matmul {data['matmul_size']}^3: float32 (default precision) {data['rates']['float32'] / 1e12:.3f} "
              f"TFLOP/s, bfloat16 {data['rates']['bfloat16'] / 1e12:.3f} TFLOP/s"]
    checks = data.get("checks")
    if checks:
        lines += ["", "## Correctness checks", "",
                  f"Cascade checks at N = {checks['n']} (chunked block {checks['block']}: N is not a multiple). "
                  "Error: max|a - ref| / max|ref|. `auto` resolves when traced to "
                  + (", ".join(f"`{b}` for {d}" for d, b in checks["auto"].items()) or "-")
                  + ", whose rows are its rows.", "",
                  "| check | backend | dtype | what | error | tolerance | ok |",
                  "| --- | --- | --- | --- | ---: | ---: | --- |"]
        for r in checks["results"]:
            lines.append(f"| {r['check']} | {r['backend']} | {r['dtype']} | {r['what']} | {r['error']:.2e} | "
                         f"{r['tol']:.0e} | {'ok' if r['ok'] else '**FAILED** ' + r.get('message', '')} |")
        train = checks["train"]
        if train.get("not_run"):
            lines += ["", f"DifNet-18 train steps: not run ({train['not_run']})."]
        elif train:
            lines += ["", f"DifNet-18 train steps ({train['config']}, crop {train['crop']}, batch {train['batch']}, "
                      f"{train['steps']} steps): device losses {_floats(train['device_losses'])}"
                      + (f", CPU losses {_floats(train['cpu_losses'])}" if "cpu_losses" in train else "")
                      + (f", bfloat16 losses {_floats(train['bf16_losses'])}" if "bf16_losses" in train else "")
                      + "."]
            if "degenerate" in train:
                lines.append(f"Note: {train['degenerate']}.")
    if "cascade" in data:
        lines += ["", "## Diffusion cascade", "",
                  f"{WALKS} walks, C = {CHANNELS}, K = {CLASSES}; fwd = jit(cascade), fwd+bwd = jit(value_and_grad) "
                  "of sum(y_T^2) w.r.t. seed, Psi_t, mu/beta logits; median of the runs after one warm-up. "
                  "Roofline: attention FLOPs (fwd 2 T B N^2 (C + K), fwd+bwd 3x) over the measured matmul rate of "
                  "the row's dtype. Peak: XLA's memory_analysis of the program.", "",
                  "| N | B | dtype | backend | fwd (ms) | fwd roofline | fwd+bwd (ms) | fwd+bwd roofline | "
                  "peak fwd+bwd (GiB) | auto = | note |",
                  "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        merged: dict = {}
        for r in data["cascade"] + data["torch"]:
            merged.setdefault((r["n"], r["batch"], r["dtype"], r["backend"]), {})[r["mode"]] = r
        for (n, batch, dtype, backend), modes in sorted(merged.items(), key=lambda kv: kv[0][:3]):
            fwd, both = modes.get("fwd", {}), modes.get("fwd+bwd", {})
            notes = "; ".join(f"{m}: {r['note']}" for m, r in modes.items() if r.get("note"))
            lines.append(f"| {n:,} | {batch} | {dtype} | {backend} | {_ms(fwd.get('seconds'))} | "
                         f"{_pct(fwd.get('fraction'))} | {_ms(both.get('seconds'))} | {_pct(both.get('fraction'))} | "
                         f"{_gib(both.get('peak')) if 'peak' in both else ''} | {both.get('auto', '')} | {notes} |")
        lines += ["", f"PyTorch peer: {data['torch_note']}."]
    if "models" in data:
        lines += ["", "## Models", "",
                  f"Train step (`train.Trainer.train_step`, SGD) at crop {data['sizes']['crop']}, global batch "
                  f"{data['sizes']['train_batch']}; inference: eval-mode forward at batch 1, "
                  f"{data['sizes']['eval_size']}x{data['sizes']['eval_size']}. Peak: XLA's memory_analysis.", "",
                  "| model | dtype | backend | params (M) | train compile (s) | step (ms) | images/s | "
                  "train peak (GiB) | eval compile (s) | latency (ms) | eval peak (GiB) | note |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in data["models"]:
            params = f"{r['params'] / 1e6:.1f}" if "params" in r else ""
            lines.append(
                f"| {r['model']} | {r['dtype']} | {r.get('backend') or '-'} | {params} | "
                f"{_num(r.get('train_compile_s'))} | {_ms(r.get('train_step_s'))} | {_num(r.get('images_per_s'))} | "
                f"{_gib(r.get('train_peak')) if 'train_peak' in r else ''} | {_num(r.get('eval_compile_s'))} | "
                f"{_ms(r.get('latency_s'))} | {_gib(r.get('eval_peak')) if 'eval_peak' in r else ''} | "
                f"{r.get('note', '')} |")
        if data["absent_models"]:
            lines += ["", f"Not in the config table yet: {', '.join(data['absent_models'])}."]
    if "e2e" in data:
        lines += ["", "## Main job end to end", ""]
        if isinstance(data["e2e"], str):
            lines.append(data["e2e"])
        else:
            lines += ["| job | wall time (s) | final mIoU | at step | exit | note |",
                      "| --- | ---: | ---: | ---: | --- | --- |"]
            for r in data["e2e"]:
                miou = f"{r['miou']:.4f}" if "miou" in r else ""
                lines.append(f"| {r['job']} | {_num(r.get('wall_s'))} | {miou} | {r.get('step', '')} | "
                             f"{r.get('returncode', '')} | {r.get('note', '')} |")
            lines += ["", "Commands (from the repository root): "
                      + "; ".join(f"`python {r['command']}`" for r in data["e2e"])]
    lines += ["", TARGETS_HEADING, "", "| target | measured | status |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['value']} | {t['status']} |" for t in data["targets"]]
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in data["part_seconds"].items())
    lines += ["", "## Conditions", "", f"{data['conditions']} Parts: {parts}.", ""]
    return "\n".join(lines)


def _floats(values) -> str:
    return "[" + ", ".join(f"{v:.5f}" for v in values) + "]"


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def _num(value) -> str:
    return "" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def run(out: str, sizes: Sizes, parts: tuple[str, ...] = ("checks", "cascade", "models", "e2e"),
        models: tuple[str, ...] | None = None, diffusers: dict[str, Diffuser] | None = None,
        command: str = "python -m benchmarks.accelerator", model_backend: str = "auto",
        with_train: bool = True) -> int:
    """Runs the parts, writes OUT/report.md and OUT/report.json; returns the exit status (1: a check failed)."""
    start, load = time.perf_counter(), os.getloadavg()
    deadline = Deadline(sizes.budget_s)  # from the start: checks and compiles count
    os.makedirs(out, exist_ok=True)
    device = jax.devices()[0]
    data: dict[str, Any] = {
        "mode": sizes.mode, "date": str(datetime.date.today()), "command": command,
        "device": timing.device_description(), "versions": _versions(), "cudnn": cudnn_probe(),
        "matmul_size": sizes.matmul_size, "sizes": dataclasses.asdict(sizes), "failures": 0,
    }
    data["rates"] = {dtype: matmul_rate(sizes.matmul_size, dtype) for dtype in DTYPES}
    print(f"{data['device']}: matmul {data['rates']}", flush=True)
    part_start = start
    data["part_seconds"] = seconds = {}

    def lap(name):
        nonlocal part_start
        seconds[name] = time.perf_counter() - part_start
        part_start = time.perf_counter()
        print(f"[{name}: {seconds[name]:.1f} s]", flush=True)

    lap("environment")
    if "checks" in parts:
        data["checks"] = run_checks(sizes, diffusers, with_train=with_train)
        lap("checks")
        data["failures"] = data["checks"]["failures"]
        print(f"checks: {data['failures']} failed of {len(data['checks']['results'])}", flush=True)
    memory = _device_memory() or 16 * GIB
    if "cascade" in parts:
        data["cascade"] = measure_cascade(sizes, data["rates"], deadline, 0.8 * memory)
        data["torch"], data["torch_note"] = measure_torch(sizes, data["rates"], deadline)
        lap("cascade")
    if "models" in parts:
        try:
            data["models"], data["absent_models"] = measure_models(sizes, models or sizes.models, deadline,
                                                                   model_backend)
        except ImportError as error:
            data["models"], data["absent_models"] = [], [f"all (missing package {error.name!r})"]
        lap("models")
    if "e2e" in parts:
        data["e2e"] = run_e2e(out, deadline) if sizes.e2e else f"Not run under --{sizes.mode}."
        lap("e2e")
    data["targets"] = targets(data.get("cascade", []), data.get("torch", []), data.get("models", []),
                              data.get("checks", {}).get("train", {}), device.device_kind, device.platform)
    data["conditions"] = report.conditions(start, load)
    data["wall_s"] = time.perf_counter() - start
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)
    text = render(data)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    return 1 if data["failures"] else 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _OUT.value:
        raise app.UsageError("--out=DIR is required")
    if _QUICK.value and _SMOKE.value:
        raise app.UsageError("--quick and --smoke exclude each other")
    # absl's app.run logs at INFO, where JAX reports each backend it tries and lacks ("Unable to initialize
    # backend 'tpu'"): nothing this check's user needs. Its warnings and errors still show.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # Before JAX starts its backend: no 75%-of-the-GPU pool, so that torch's peer rows and the main job's
    # subprocesses find memory (XLA's peak-memory figures come from its compiled programs, not the pool).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sizes = SIZES["smoke" if _SMOKE.value else "quick" if _QUICK.value else "full"]
    if _BUDGET_S.value is not None:
        sizes = dataclasses.replace(sizes, budget_s=_BUDGET_S.value)
    models = tuple(_VARIANTS.value) if _VARIANTS.value is not None else None
    status = run(_OUT.value, sizes, tuple(_PARTS.value), models,
                 command=" ".join(["python -m benchmarks.accelerator", *sys.argv[1:]]),
                 model_backend=_MODEL_BACKEND.value)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)
