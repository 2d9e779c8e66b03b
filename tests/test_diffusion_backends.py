"""The chunked, fused and auto backends of the cascade (Eq. 4-5) against the dense one that forms every P_t."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.models import diffusion

B, C, K, WALKS = 2, 8, 5, 2
BLOCK = 32
pytestmark = pytest.mark.filterwarnings("ignore:diffusion backend 'fused':RuntimeWarning")


def _inputs(n, seed=0, scale=0.5, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    seed_vec = jnp.asarray(rng.normal(size=(B, n, K)), dtype)
    psis = [jnp.asarray(rng.normal(size=(B, n, C)) * scale, dtype) for _ in range(WALKS)]
    logits = jnp.asarray(rng.normal(size=(2, WALKS)), jnp.float32)
    return seed_vec, psis, logits[0], logits[1]


@functools.partial(jax.jit, static_argnums=(0, 2))
def _loss_and_grads(backend, inputs, block_size=BLOCK):
    """A scalar that reads every walk, and its gradient w.r.t. seed, each Psi_t and the mu/beta logits."""
    weights = jnp.cos(jnp.arange(inputs[0].size, dtype=jnp.float32)).reshape(inputs[0].shape)

    def loss(seed_vec, psis, mu_logits, beta_logits):
        y, steps = diffusion.cascade(seed_vec, psis, mu_logits, beta_logits, backend, block_size=block_size)
        return (y * weights).sum() + 0.1 * sum((step**2).sum() for step in steps), (y, steps)

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(*inputs)


def _assert_close(actual, expected, rtol):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * float(np.abs(e).max()))


@pytest.mark.parametrize(
    "backend, n",
    [("chunked", 77), ("chunked", 64), ("chunked", 24), ("fused", 77), ("auto", 77)],
)  # N = 77: the last block of 32 is padded; 64: two full blocks; 24: a single block
def test_values_and_gradients_match_dense(backend, n):
    inputs = _inputs(n)
    _assert_close(_loss_and_grads(backend, inputs), _loss_and_grads("dense", inputs), rtol=2e-5)


def test_chunked_matches_dense_with_sharp_transitions_and_odd_blocks():
    """Logits Psi Psi^T of a few hundred (nearly one-hot rows) and blocks that are no multiple of 8."""
    inputs = _inputs(77, seed=3, scale=4.0)
    expected = _loss_and_grads("dense", inputs)
    for block_size in (7, 20):
        actual = _loss_and_grads("chunked", inputs, block_size)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(actual))
        _assert_close(actual, expected, rtol=1e-4)


def test_chunked_diffusion_is_p_times_y():
    _, (psi, *_), _, _ = _inputs(77)
    y = jnp.asarray(np.random.default_rng(2).normal(size=(B, 77, K)), jnp.float32)
    expected = jnp.einsum("bnm,bmk->bnk", diffusion.transition_matrix(psi), y)
    actual = jax.jit(diffusion.chunked_diffusion, static_argnums=2)(psi, y, BLOCK)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "fused"])
def test_bfloat16_inputs_keep_float32_statistics(backend):
    """bf16 seed and Psi: every backend widens them to float32 first, so they agree with dense closely."""
    inputs = _inputs(77, dtype=jnp.bfloat16)
    expected = _loss_and_grads("dense", inputs)
    actual = _loss_and_grads(backend, inputs)
    assert actual[0][1][0].dtype == jnp.float32  # y_T
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(actual[1][:2]))  # like the inputs
    _assert_close(actual, expected, rtol=2e-2)  # bf16 gradients are rounded after the float32 math
    np.testing.assert_allclose(actual[0][1][0], expected[0][1][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["chunked", "fused", "auto"])
def test_backends_jit(backend):
    inputs = _inputs(77)
    run = jax.jit(functools.partial(diffusion.cascade, backend=backend, block_size=BLOCK))
    y, steps = run(*inputs)
    y_dense, _ = diffusion.cascade(*inputs)
    assert len(steps) == WALKS and y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_dense, atol=1e-5)


def test_auto_picks_dense_for_small_n_and_chunked_beyond_on_cpu(monkeypatch):
    small = jnp.zeros((1, diffusion.AUTO_DENSE_MAX_NODES, C))
    large = jnp.zeros((1, diffusion.AUTO_DENSE_MAX_NODES + 1, C))
    assert diffusion.resolve_backend("auto", small) == "dense"
    assert diffusion.resolve_backend("auto", large) == "chunked"
    assert diffusion.resolve_backend("fused", small) == "fused"
    # Beyond the crossover, auto is chunked and still agrees with dense.
    monkeypatch.setattr(diffusion, "AUTO_DENSE_MAX_NODES", 40)
    inputs = _inputs(77)
    _assert_close(_loss_and_grads("auto", inputs), _loss_and_grads("dense", inputs), rtol=2e-5)


def test_fused_warns_once_when_cudnn_cannot_run():
    diffusion._warn_once.cache_clear()
    run = functools.partial(jax.eval_shape, functools.partial(diffusion.cascade, backend="fused"), *_inputs(24))
    with pytest.warns(RuntimeWarning, match="XLA's attention"):
        run()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run()
    assert not [w for w in record if "fused" in str(w.message)]


def test_chunked_compiled_memory_is_far_below_dense():
    """fwd+bwd of one walk at N = 4096, block 256: XLA's temp buffers vs the 64 MiB of one N x N P."""
    n, channels, classes = 4096, 64, 21
    shapes = (jax.ShapeDtypeStruct((1, n, classes), jnp.float32), [jax.ShapeDtypeStruct((1, n, channels), jnp.float32)],
              jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.float32))

    def loss(seed_vec, psis, mu_logits, beta_logits):
        return diffusion.cascade(seed_vec, psis, mu_logits, beta_logits, "chunked", block_size=256)[0].sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(*shapes).compile()
    dense_footprint = n * n * 4
    assert compiled.memory_analysis().temp_size_in_bytes < dense_footprint / 8


def test_bad_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        diffusion.cascade(*_inputs(24), backend="chunked", block_size=0)
