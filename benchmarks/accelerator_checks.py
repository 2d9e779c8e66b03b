"""The accelerator check's correctness part (issue 14): the diffusion backends and DifNet's train steps on the device.

Each check appends rows {check, backend, dtype, what, error, tol, ok} to a list; `run_checks` runs them all
for a mode of `accelerator_sizes` and `benchmarks.accelerator` reports them (exit status 1 if any fails):
- every diffusion backend (dense, chunked, fused, auto) iterated to the fixed point of one walk against the
  closed form of Eq. 2, y = (1 - mu)(I - mu P)^-1 s, in float64 numpy: the value and its seed gradient;
- the 5-walk cascade (Eq. 4-5) of every backend against a float64 reference (pure jnp, x64, on the CPU): the
  value and the gradients w.r.t. the seed, every Psi_t and the mu/beta logits; and every backend against
  `dense`; float32 and bfloat16 inputs, N not a multiple of the chunked block;
- a few DifNet-18 train steps on the device against the same steps on the CPU (`check_train`).
`train_program` and `fresh_state` are shared with the timing of the models, which reuses the compiled step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import cascade_problem
from benchmarks.accelerator_sizes import DTYPES, NUM_CLASSES, Sizes, synthetic_config
from difnet_jax.models import diffusion

WALKS, CHANNELS, CLASSES = cascade_problem.WALKS, cascade_problem.CHANNELS, cascade_problem.CLASSES
BACKENDS = ("dense", "chunked", "fused", "auto")

Diffuser = Callable[[jax.Array, jax.Array], jax.Array]  # (psi, y) -> P y


def default_diffusers(block_size: int) -> dict[str, Diffuser]:
    return {name: (lambda psi, y, name=name: diffusion.diffuse(psi, y, name, block_size)) for name in BACKENDS}


def tolerances(dtype: str) -> tuple[float, float]:
    """(value, gradient) tolerances on max|a - b| / max|b|. Float32 on the CPU is exact to rounding; GPU/TPU
    float32 matmuls run at the default precision (TF32 / bf16 passes), and bfloat16 Psi (cuDNN also takes
    V = y in bfloat16) rounds to 2^-8."""
    if dtype == "float32" and jax.default_backend() == "cpu":
        return 1e-4, 1e-3
    return 3e-2, 5e-2


def _relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _softmax64(psi: np.ndarray) -> np.ndarray:
    logits = psi @ psi.swapaxes(-1, -2)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _check(results: list, name: str, backend: str, dtype: str, what: str, error: float, tol: float) -> None:
    ok = bool(np.isfinite(error) and error <= tol)
    results.append({"check": name, "backend": backend, "dtype": dtype, "what": what, "error": error, "tol": tol,
                    "ok": ok})


def _failed_to_run(results: list, check: str, backend: str, dtype: str, error: Exception) -> None:
    results.append({"check": check, "backend": backend, "dtype": dtype, "what": "runs", "error": float("nan"),
                    "tol": 0.0, "ok": False, "message": f"{type(error).__name__}: {str(error)[:300]}"})


def check_closed_form(diffusers: dict[str, Diffuser], dtype: str, n: int, results: list, steps: int = 40) -> None:
    """One P, mu = 0.5, beta = 1, `steps` walks from s: against (1 - mu)(I - mu P)^-1 s and its seed gradient."""
    rng = np.random.default_rng(1)
    psi = jnp.asarray(0.3 * rng.normal(size=(1, n, CHANNELS)), dtype)
    seed = jnp.asarray(jnp.asarray(rng.normal(size=(1, n, CLASSES)), dtype), jnp.float32)
    weights = rng.normal(size=(1, n, CLASSES))
    mu = 0.5  # error of the iteration mu^steps
    psi64, seed64 = np.asarray(psi.astype(jnp.float32), np.float64), np.asarray(seed, np.float64)
    system = np.eye(n) - mu * _softmax64(psi64)[0]
    value64 = (1 - mu) * np.linalg.solve(system, seed64[0])
    grad64 = (1 - mu) * np.linalg.solve(system.T, weights[0])
    value_tol, grad_tol = tolerances(dtype)
    for name, diffuse in diffusers.items():
        def fixed_point(s, diffuse=diffuse):
            return lax.fori_loop(0, steps, lambda _, y: diffusion.relax(diffuse(psi, y), y, s, mu, 1.0), s)

        def value_and_seed_grad(s, w, fixed_point=fixed_point):
            value, vjp = jax.vjp(fixed_point, s)
            return value, vjp(w)[0]

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                value, grad = jax.jit(value_and_seed_grad)(seed, jnp.asarray(weights, jnp.float32))
            value_error, grad_error = _relative_error(value[0], value64), _relative_error(grad[0], grad64)
        except Exception as error:  # noqa: BLE001 (a backend that crashes fails its check)
            _failed_to_run(results, "closed form (Eq. 2) vs float64", name, dtype, error)
            continue
        _check(results, "closed form (Eq. 2) vs float64", name, dtype, "value", value_error, value_tol)
        _check(results, "closed form (Eq. 2) vs float64", name, dtype, "d/d seed", grad_error, grad_tol)


def _reference_cascade(seed, psis, mu_logits, beta_logits):
    """Eq. 4-5 in plain jnp (x64 on the CPU when called under enable_x64): the float64 reference."""
    mus, betas = jax.nn.sigmoid(mu_logits), jax.nn.sigmoid(beta_logits)
    y = seed
    for t, psi in enumerate(psis):
        transition = jax.nn.softmax(psi @ psi.swapaxes(-1, -2), axis=-1)
        y = betas[t] * (mus[t] * (transition @ y) + (1 - mus[t]) * seed) + (1 - betas[t]) * y
    return y


def _value_and_grads(cascade_fn, weights):
    """(y_T, gradients of sum(w * y_T) w.r.t. seed, psis, mu logits, beta logits) in one program."""

    def loss(*arguments):
        y = cascade_fn(*arguments)
        return (y * weights).sum(), y

    def run(*arguments):
        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*arguments)
        return y, grads

    return run


def cascade_with(diffuse: Diffuser):
    """Eq. 4-5 over `diffuse` (an injected P y, to test the checker), returning y_T."""

    def run(seed, psis, mu_logits, beta_logits):
        mus, betas = jax.nn.sigmoid(mu_logits), jax.nn.sigmoid(beta_logits)
        y = seed.astype(jnp.float32)
        for t, psi in enumerate(psis):
            y = diffusion.relax(diffuse(psi, y), y, seed.astype(jnp.float32), mus[t], betas[t])
        return y

    return run


def project_cascades(block_size: int) -> dict[str, Callable]:
    """backend -> the project's `diffusion.cascade` with that backend, returning y_T."""
    return {name: (lambda seed, psis, mu, beta, name=name: diffusion.cascade(
        seed, psis, mu, beta, name, block_size=block_size)[0]) for name in BACKENDS}


def _without_auto_duplicate(functions: dict[str, Callable], n: int, dtype: str) -> tuple[dict[str, Callable], str]:
    """`auto` resolves at trace time to one of the others, whose program it then is: checked once, as that one."""
    resolved = diffusion.resolve_backend("auto", jax.ShapeDtypeStruct((1, n, CHANNELS), dtype))
    if "auto" in functions and resolved in functions:
        return {k: v for k, v in functions.items() if k != "auto"}, resolved
    return functions, ""


def check_cascade(cascades: dict[str, Callable], dtype: str, n: int, results: list, batch: int = 2) -> None:
    """The 5-walk cascade: value and all gradients vs the float64 reference, and every backend vs `dense`."""
    rng = np.random.default_rng(2)
    seed = jnp.asarray(rng.normal(size=(batch, n, CLASSES)), dtype)
    psis = [jnp.asarray(0.3 * rng.normal(size=(batch, n, CHANNELS)), dtype) for _ in range(WALKS)]
    mu_logits = jnp.asarray(rng.normal(size=WALKS), jnp.float32)
    beta_logits = jnp.asarray(rng.normal(size=WALKS), jnp.float32)
    weights = rng.normal(size=(batch, n, CLASSES))
    arguments = (seed, psis, mu_logits, beta_logits)

    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True), jax.default_device(cpu):
        args64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a.astype(jnp.float32)), jnp.float64), arguments)
        reference = jax.jit(_value_and_grads(_reference_cascade, weights))(*args64)
        reference = jax.tree.map(np.asarray, reference)
    value_tol, grad_tol = tolerances(dtype)
    outputs = {}
    for name, run in cascades.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                output = jax.jit(_value_and_grads(run, jnp.asarray(weights, jnp.float32)))(*arguments)
            outputs[name] = jax.tree.map(np.asarray, output)
        except Exception as error:  # noqa: BLE001 (a backend that crashes fails its check)
            _failed_to_run(results, "5-walk cascade vs float64", name, dtype, error)
            continue
        _compare(results, "5-walk cascade vs float64", name, dtype, outputs[name], reference, value_tol, grad_tol)
    if "dense" in outputs:
        for name, output in outputs.items():
            if name != "dense":
                _compare(results, "5-walk cascade vs dense", name, dtype, output, outputs["dense"],
                         2 * value_tol, 2 * grad_tol)


def _compare(results, check, name, dtype, output, reference, value_tol, grad_tol) -> None:
    (value, grads), (value_ref, grads_ref) = output, reference
    _check(results, check, name, dtype, "value", _relative_error(value, value_ref), value_tol)
    labels = ("d/d seed", "d/d Psi_t", "d/d mu logits", "d/d beta logits")
    for label, grad, grad_ref in zip(labels, grads, grads_ref):
        error = max(_relative_error(g, r) for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_ref)))
        _check(results, check, name, dtype, label, error, grad_tol)


def _scenes(count: int, crop: int, offset: int = 0) -> dict[str, np.ndarray]:
    """synthetic_shapes train scenes rendered in memory (no TFDS), cropped, normalised with ImageNet's mean and std
    (whatever the config's data.normalization: the checks feed the same arrays to both devices and compare)."""
    from difnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
    from difnet_jax.data import shapes

    images, labels = [], []
    for index in range(offset, offset + count):
        image, label = shapes.render_scene(0, "train", index)
        canvas = np.zeros((crop, crop, 3), np.uint8)
        canvas_label = np.full((crop, crop), 255, np.int32)
        h, w = min(crop, image.shape[0]), min(crop, image.shape[1])
        canvas[:h, :w], canvas_label[:h, :w] = image[:h, :w], label[:h, :w]
        images.append((canvas.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
        labels.append(canvas_label)
    return {"image": np.stack(images).astype(np.float32), "label": np.stack(labels)}


_PROGRAMS: dict[Any, Any] = {}


def train_program(config, devices):
    """(trainer, AOT-compiled train step, compile seconds, batch sharding); cached by config and devices."""
    from jax.sharding import Mesh

    from difnet_jax import train  # lazily: needs grain, orbax, tensorflow-datasets

    key = (config.to_json(), tuple(str(d) for d in devices))
    if key not in _PROGRAMS:
        trainer = train.Trainer(config, NUM_CLASSES, mesh=Mesh(np.array(devices), ("data",)))
        batch = config.train.batch_size
        crop = config.data.crop_size
        abstract_batch = {
            "image": jax.ShapeDtypeStruct((batch, crop, crop, 3), jnp.float32, sharding=trainer.data_sharding),
            "label": jax.ShapeDtypeStruct((batch, crop, crop), jnp.int32, sharding=trainer.data_sharding),
        }
        start = time.perf_counter()
        compiled = trainer.train_step.lower(trainer.abstract_state, abstract_batch).compile()
        _PROGRAMS[key] = (trainer, compiled, time.perf_counter() - start)
    return _PROGRAMS[key]


def fresh_state(trainer, seed: int = 0):
    """A train state of `trainer`'s shapes filled on the host: He-normal kernels, unit BN scales and variances,
    zeros elsewhere (biases, means, the mu/beta logits), the optimizer's initial state. The same numbers on every
    device, and no init program to compile (the model's forward in init mode costs as much as the train step)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name and len(leaf.shape) > 1:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
        return np.full(leaf.shape, 1 if ("scale" in name or "var" in name) else 0, leaf.dtype)

    abstract = trainer.abstract_state
    params = jax.tree_util.tree_map_with_path(fill, abstract.params)
    batch_stats = jax.tree_util.tree_map_with_path(fill, abstract.batch_stats)
    state = abstract.replace(step=np.zeros((), np.int32), params=params, batch_stats=batch_stats,
                             opt_state=trainer.tx.init(params), rng=jax.random.PRNGKey(seed))
    return jax.device_put(state, trainer.state_sharding)


def train_losses(config, devices, batches) -> list[float]:
    trainer, compiled, _ = train_program(config, devices)
    state = fresh_state(trainer)
    losses = []
    for batch in batches:
        state, step_metrics = compiled(state, trainer.global_batch(batch))
        losses.append(float(step_metrics["loss"]))
    return losses


def check_train(sizes: Sizes, results: list) -> dict:
    """DifNet-18 train steps on the device vs the CPU (float32); the bfloat16 curve vs float32 (a target)."""
    config = synthetic_config("difnet18", "float32", sizes)
    per_step, crop = config.train.batch_size, config.data.crop_size
    batches = [_scenes(per_step, crop, i * per_step) for i in range(sizes.train_steps)]
    accelerator = [d for d in jax.devices() if d.platform != "cpu"]
    info: dict[str, Any] = {"config": f"difnet18,synthetic width {config.model.width} (SGD lr 0.05)",
                            "crop": crop, "batch": per_step, "steps": sizes.train_steps}
    if per_step % max(len(accelerator), 1):
        accelerator = accelerator[:1]
    device_losses = train_losses(config, accelerator or jax.devices("cpu")[:1], batches)
    info["device_losses"] = device_losses
    if not accelerator:
        info["degenerate"] = ("no accelerator: the device is the CPU, so the device-vs-CPU comparison is the CPU "
                              "against itself; the steps ran once (finite losses checked)")
        _check(results, "DifNet-18 train steps", "-", "float32", "finite losses",
               0.0 if np.all(np.isfinite(device_losses)) else float("inf"), 0.0)
    else:
        cpu_losses = train_losses(config, jax.devices("cpu")[:1], batches)
        info["cpu_losses"] = cpu_losses
        rtol = tolerances("float32")[0]
        error = max(abs(a - b) / abs(b) for a, b in zip(device_losses, cpu_losses))
        _check(results, "DifNet-18 train steps, device vs CPU", "-", "float32", "loss per step", error, rtol)
    if sizes.bf16_curve:
        bf16 = synthetic_config("difnet18", "bfloat16", sizes)
        info["bf16_losses"] = train_losses(bf16, accelerator or jax.devices("cpu")[:1], batches)
        info["bf16_vs_f32"] = max(abs(a - b) / abs(b) for a, b in zip(info["bf16_losses"], device_losses))
    return info


def run_checks(sizes: Sizes, diffusers: dict[str, Diffuser] | None = None, with_train: bool = True) -> dict:
    """Every check. `diffusers` (backend -> P y function) replaces the project's backends, to test the checker:
    then the cascade checks run Eq. 4-5 over them instead of `diffusion.cascade`."""
    injected = diffusers is not None
    if diffusers is None:
        diffusers, cascades = default_diffusers(sizes.check_block), project_cascades(sizes.check_block)
    else:
        cascades = {name: cascade_with(diffuse) for name, diffuse in diffusers.items()}
    results: list[dict] = []
    auto = {}
    for dtype in DTYPES:
        if injected:
            closed, walks = diffusers, cascades
        else:
            closed, auto[dtype] = _without_auto_duplicate(diffusers, sizes.check_n, dtype)
            walks, _ = _without_auto_duplicate(cascades, sizes.check_n, dtype)
        check_closed_form(closed, dtype, sizes.check_n, results)
        check_cascade(walks, dtype, sizes.check_n, results)
    train_info: dict[str, Any] = {}
    if with_train:
        try:
            train_info = check_train(sizes, results)
        except ImportError as error:
            train_info = {"not_run": f"missing package {error.name!r}: carry wheels (module docstring)"}
    return {"results": results, "train": train_info, "n": sizes.check_n, "block": sizes.check_block,
            "auto": auto, "failures": sum(not r["ok"] for r in results)}
