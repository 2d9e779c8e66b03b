"""Forward+backward time and compiled memory of the 5-walk cascade (Eq. 4-5) per diffusion backend.

For each N (nodes), B (batch) and backend: jit(value_and_grad) of sum(y_T^2) w.r.t. the seed, the five
Psi_t and the mu/beta logits (C = 64, K = 21), compiled ahead of time; memory is XLA's
`memory_analysis()` (temp + arguments + outputs - aliased), time the median of --repeats runs after one
warm-up. Achieved FLOP/s count the dense algorithm's matmuls, 6 T B N^2 (C + K), and are set against
this device's dense float32 matmul rate. A plain PyTorch version of the dense cascade runs beside it
when torch is importable. Appends a section to BENCHMARKS.md.

  python -m benchmarks.cascade
  python -m benchmarks.cascade --ns=4096,65536 --batches=1 --backends=chunked --crossover_ns= --notorch \
      --max_seconds=600    # times N = 65,536 once (about 7 minutes on 2 cores)
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import report
from benchmarks.cascade_problem import CHANNELS, CLASSES, WALKS, model_flops
from difnet_jax import timing
from difnet_jax.models import diffusion

try:
    import torch
except ImportError:
    torch = None

_NS = flags.DEFINE_list("ns", ["1681", "4096", "16384", "65536"], "Node counts N (41^2, 64^2, 128^2, 256^2).")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "Batch sizes B.")
_BACKENDS = flags.DEFINE_list("backends", list(diffusion.BACKENDS), "Diffusion backends.")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch dense cascade too (if torch is importable).")
_CROSSOVER_NS = flags.DEFINE_list(
    "crossover_ns", ["256", "576", "784", "1024", "1296", "1681", "2304", "4096"],
    "N of the dense vs chunked table (B = 1).")
_BLOCK_SIZE = flags.DEFINE_integer("block_size", diffusion.DEFAULT_BLOCK_SIZE, "Block of the chunked backend.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs after the warm-up; the median is reported.")
_MAX_GIB = flags.DEFINE_float("max_gib", 16.0, "Compiled memory above which a combination is not run.")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 30.0, "Time budget of one combination, estimated from the same backend's last timing x B N^2: "
    "beyond it the warm-up is dropped, beyond twice it the combination is not timed.")
_OUTPUT = flags.DEFINE_string("output", "BENCHMARKS.md", "Markdown file the section is appended to.")

GIB = 2**30


def matmul_flops_per_second(size: int = 4096) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
    matmul = jax.jit(lambda a: a @ a).lower(a).compile()
    return 2.0 * size**3 / _median_seconds(lambda: matmul(a), repeats=5, warm_up=True)


def _median_seconds(run, repeats: int, warm_up: bool) -> float:
    if warm_up:
        jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _arguments(batch: int, n: int):
    rng = np.random.default_rng(0)
    seed = rng.normal(size=(batch, n, CLASSES)).astype(np.float32)
    psis = [rng.normal(size=(batch, n, CHANNELS)).astype(np.float32) for _ in range(WALKS)]
    return seed, psis, np.zeros(WALKS, np.float32), np.zeros(WALKS, np.float32)


def compiled_cascade(backend: str, batch: int, n: int, block_size: int):
    """The AOT-compiled fwd+bwd and its peak memory in bytes (XLA's buffer assignment)."""

    def loss(seed, psis, mu_logits, beta_logits):
        y, _ = diffusion.cascade(seed, psis, mu_logits, beta_logits, backend, block_size=block_size)
        return (y**2).sum()

    shape = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.float32)
    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(
        shape(batch, n, CLASSES), [shape(batch, n, CHANNELS)] * WALKS, shape(WALKS), shape(WALKS)).compile()
    return compiled, report.peak_bytes(compiled)


def torch_cascade(batch: int, n: int):
    """The dense cascade in plain PyTorch (autograd, float32); returns a fwd+bwd closure."""
    seed, psis, mu_logits, beta_logits = _arguments(batch, n)
    inputs = [torch.from_numpy(a).requires_grad_(True) for a in (seed, *psis, mu_logits, beta_logits)]
    seed, psis, mu_logits, beta_logits = inputs[0], inputs[1:-2], inputs[-2], inputs[-1]

    def run():
        mus, betas = torch.sigmoid(mu_logits), torch.sigmoid(beta_logits)
        y = seed
        for t, psi in enumerate(psis):
            transition = torch.softmax(psi @ psi.transpose(1, 2), dim=-1)
            y = betas[t] * (mus[t] * (transition @ y) + (1 - mus[t]) * seed) + (1 - betas[t]) * y
        return torch.autograd.grad((y**2).sum(), inputs)

    return run


class Timer:
    """Times combinations within --max_seconds, estimating each from the same backend's last timing x B N^2."""

    def __init__(self):
        self.last = {}

    def __call__(self, name: str, batch: int, n: int, run) -> str:
        if name in self.last:
            seconds, work = self.last[name]
            estimate = seconds * batch * n * n / work
            if estimate > 2 * _MAX_SECONDS.value:
                return f"not timed (est. {estimate:.0f} s)"
            warm_up, repeats = (True, _REPEATS.value) if estimate * (1 + _REPEATS.value) <= _MAX_SECONDS.value else (
                False, 1)
        else:
            warm_up, repeats = True, _REPEATS.value
        seconds = _median_seconds(run, repeats, warm_up)
        self.last[name] = (seconds, batch * n * n)
        milliseconds = f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"
        return milliseconds + ("" if warm_up else " (1 run, no warm-up)")


def _gflops(batch: int, n: int, cell: str, matmul: float) -> tuple[str, str]:
    try:
        seconds = float(cell.split()[0]) / 1e3
    except ValueError:
        return "", ""
    rate = model_flops(batch, n) / seconds
    return f"{rate / 1e9:.1f}", f"{rate / matmul:.0%}"


def measure(backend: str, batch: int, n: int, timer: Timer, matmul: float, times: dict, peaks: dict) -> str:
    """One table row; `times` and `peaks` collect (backend, batch, n) -> ms cell, bytes (and are reused)."""
    concrete = diffusion.resolve_backend(backend, jax.ShapeDtypeStruct((batch, n, CHANNELS), jnp.float32))
    label = backend if concrete == backend else f"{backend} (= {concrete})"
    compiled, peak = compiled_cascade(concrete, batch, n, _BLOCK_SIZE.value)
    peaks[(backend, batch, n)] = peak
    if peak > _MAX_GIB.value * GIB:
        cell = f"OOM (est. {peak / GIB:.1f} GiB)"
        return f"| {n:,} | {batch} | {label} | {cell} | {cell} | | |"
    if (concrete, batch, n) in times:
        cell = times[(concrete, batch, n)]
    else:
        arguments = jax.device_put(_arguments(batch, n))
        cell = timer(concrete, batch, n, lambda: compiled(*arguments))
        times[(concrete, batch, n)] = cell
    times[(backend, batch, n)] = cell
    rate, fraction = _gflops(batch, n, cell, matmul)
    return f"| {n:,} | {batch} | {label} | {cell} | {peak / GIB:.3f} GiB | {rate} | {fraction} |"


def measure_torch(batch: int, n: int, timer: Timer, matmul: float, times: dict) -> str:
    dense_peak = compiled_cascade("dense", batch, n, _BLOCK_SIZE.value)[1]
    if dense_peak > _MAX_GIB.value * GIB:
        cell = f"OOM (est. {dense_peak / GIB:.1f} GiB, as dense)"
        return f"| {n:,} | {batch} | PyTorch {torch.__version__} dense | {cell} | | | |"
    cell = timer("torch", batch, n, torch_cascade(batch, n))
    times[("torch", batch, n)] = cell
    rate, fraction = _gflops(batch, n, cell, matmul)
    return f"| {n:,} | {batch} | PyTorch {torch.__version__} dense | {cell} | not measured | {rate} | {fraction} |"


def _ms(times: dict, key) -> float | None:
    try:
        return float(times[key].split()[0])
    except (KeyError, ValueError):
        return None


def targets(times: dict, peaks: dict) -> list[str]:
    """The issue's three targets, met or not, from what this run measured."""
    lines = []
    if ("chunked", 1, 65536) in peaks:
        peak = peaks[("chunked", 1, 65536)]
        lines.append(f"- chunked, N = 65,536, B = 1, peak memory {peak / GIB:.2f} GiB (target <= 4 GiB): "
                     f"{'met' if peak <= 4 * GIB else 'NOT met'}.")
    chunked, dense = _ms(times, ("chunked", 1, 4096)), _ms(times, ("dense", 1, 4096))
    if chunked and dense:
        lines.append(f"- chunked / dense time at N = 4,096, B = 1: {chunked / dense:.2f} (target <= 1.5): "
                     f"{'met' if chunked <= 1.5 * dense else 'NOT met'}.")
    for batch, n in sorted({(b, n) for (name, b, n) in times if name == "torch"}):
        reference, ours = _ms(times, ("torch", batch, n)), _ms(times, ("dense", batch, n))
        if reference and ours:
            lines.append(f"- PyTorch / dense time at N = {n:,}, B = {batch}: {reference / ours:.2f} (target >= 1.5): "
                         f"{'met' if reference >= 1.5 * ours else 'NOT met'}.")
    return lines


def crossover_rows(timer: Timer, matmul: float, times: dict, peaks: dict) -> list[str]:
    rows = []
    for n in map(int, _CROSSOVER_NS.value):
        for backend in ("dense", "chunked"):
            rows.append(measure(backend, 1, n, timer, matmul, times, peaks))
            print(rows[-1], flush=True)
        dense, chunked = _ms(times, ("dense", 1, n)), _ms(times, ("chunked", 1, n))
        if dense and chunked:
            rows.append(f"| {n:,} | 1 | chunked / dense | {chunked / dense:.2f} | | | |")
    return rows


def main(argv):
    del argv
    start, load = time.perf_counter(), os.getloadavg()
    matmul = matmul_flops_per_second()
    timer = Timer()
    rows, times, peaks = [], {}, {}
    with_torch = _TORCH.value and torch is not None
    if _TORCH.value and torch is None:
        print("torch is not importable: no PyTorch rows (pip install torch to add them).")
    for n in map(int, _NS.value):
        for batch in map(int, _BATCHES.value):
            for backend in _BACKENDS.value:
                rows.append(measure(backend, batch, n, timer, matmul, times, peaks))
                print(rows[-1], flush=True)
            if with_torch:
                rows.append(measure_torch(batch, n, timer, matmul, times))
                print(rows[-1], flush=True)
    crossover = crossover_rows(timer, matmul, times, peaks) if _CROSSOVER_NS.value else []

    header = ("| N | B | backend | fwd+bwd (ms) | peak memory | GFLOP/s | of matmul |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
    device = timing.device_description() + (f", torch {torch.__version__}" if torch is not None else "")
    section = [
        *report.heading("Diffusion cascade backends", "benchmarks.cascade", device),
        f"fwd+bwd of a {WALKS}-walk cascade, C = {CHANNELS}, K = {CLASSES}: jit(value_and_grad) of sum(y_T^2) w.r.t. "
        f"seed, Psi_1..{WALKS} and the mu/beta logits, float32, chunked block_size {_BLOCK_SIZE.value}. Time: median "
        f"of {_REPEATS.value} runs after one warm-up (larger combinations: fewer, as marked; estimated beyond "
        f"{2 * _MAX_SECONDS.value:.0f} s: not timed). Peak memory: XLA's compiled `memory_analysis()`, temp + "
        f"arguments + outputs; not run above {_MAX_GIB.value:g} GiB. GFLOP/s: the dense algorithm's "
        f"6 T B N^2 (C + K) matmul FLOPs per second (chunked's recomputation and all exps not counted), "
        f"against this device's dense float32 4096^2 matmul: {matmul / 1e9:.1f} GFLOP/s. "
        f"{f'PyTorch: {torch.get_num_threads()} threads. ' if with_torch else ''}"
        f"{'PyTorch rows skipped: torch is not importable. ' if _TORCH.value and torch is None else ''}"
        f"{report.conditions(start, load)}",
        "",
        header,
        *rows,
        "",
        *targets(times, peaks),
    ]
    if crossover:
        section += ["", "Dense vs chunked at small N (B = 1), for the `auto` backend's crossover "
                    f"(diffusion.AUTO_DENSE_MAX_NODES = {diffusion.AUTO_DENSE_MAX_NODES}):", "", header, *crossover]
    report.append_section(_OUTPUT.value, "\n".join(section) + "\n")

if __name__ == "__main__":
    app.run(main)
