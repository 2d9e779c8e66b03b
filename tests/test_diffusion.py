"""The cascade of random walks against its closed form (Eq. 2-5) and its limiting cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.models import diffusion

B, N, C, K = 2, 24, 8, 5
BIG = 40.0  # sigmoid(40) == 1 and sigmoid(-40) == 0 in float32


def _inputs(seed=0, walks=3, scale=0.5):
    rng = np.random.default_rng(seed)
    seed_vec = jnp.asarray(rng.normal(size=(B, N, K)), jnp.float32)
    psis = [jnp.asarray(rng.normal(size=(B, N, C)) * scale, jnp.float32) for _ in range(walks)]
    return seed_vec, psis


def test_transition_rows_are_distributions():
    _, (psi,) = _inputs(walks=1, scale=2.0)
    p = diffusion.transition_matrix(psi)
    assert p.shape == (B, N, N)
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    # Row-softmax of Psi Psi^T, checked elementwise in float64.
    w = np.einsum("bnc,bmc->bnm", np.float64(psi), np.float64(psi))
    expected = np.exp(w - w.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(p, expected, atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 2.0])  # 2.0: logits Psi Psi^T of tens, rows close to one-hot
def test_dense_diffusion_vjp_matches_autodiff_of_the_formula(scale):
    """The hand-written VJP of P y (Eq. 4-5) against jax.grad of softmax(Psi Psi^T) y, B = 3, N = 53."""
    rng = np.random.default_rng(1)
    batch, n = 3, 53
    psi = jnp.asarray(rng.normal(size=(batch, n, C)) * scale, jnp.float32)
    y = jnp.asarray(rng.normal(size=(batch, n, K)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(batch, n, K)), jnp.float32)

    def formula(psi, y):
        return jnp.einsum("bnm,bmk->bnk", jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", psi, psi), axis=-1), y)

    def loss_and_grads(diffusion_fn):
        loss = lambda psi, y: ((diffusion_fn(psi, y) * weights).sum(), diffusion_fn(psi, y))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(psi, y)

    actual, expected = loss_and_grads(diffusion.dense_diffusion), loss_and_grads(formula)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-5 * float(np.abs(e).max()))


def test_cascade_converges_to_closed_form():
    """One P, fixed mu, beta = 1, many walks: Eq. 4 iterated -> (1 - mu)(I - mu P)^-1 s."""
    seed_vec, (psi,) = _inputs(walks=1)
    mu, walks = 0.7, 120
    y, _ = diffusion.cascade(
        seed_vec, [psi] * walks, jnp.full((walks,), np.log(mu / (1 - mu)), jnp.float32),
        jnp.full((walks,), BIG, jnp.float32),
    )
    expected = diffusion.closed_form(diffusion.transition_matrix(psi), seed_vec, mu)
    np.testing.assert_allclose(y, expected, atol=1e-4)
    # A few walks are still far from the fixed point, so the test can tell them apart.
    y_short, _ = diffusion.cascade(seed_vec, [psi] * 2, jnp.full((2,), np.log(mu / (1 - mu))), jnp.full((2,), BIG))
    assert np.abs(y_short - expected).max() > 1e-2


def test_cascade_matches_eq5_step_by_step():
    seed_vec, psis = _inputs(walks=4)
    mu_logits = jnp.array([0.3, -1.0, 2.0, 0.0])
    beta_logits = jnp.array([-0.5, 1.5, 0.2, 3.0])
    y, steps = jax.jit(diffusion.cascade)(seed_vec, psis, mu_logits, beta_logits)
    s = np.float64(seed_vec)
    ref = s
    for t, psi in enumerate(psis):
        w = np.einsum("bnc,bmc->bnm", np.float64(psi), np.float64(psi))
        p = np.exp(w - w.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        mu, beta = 1 / (1 + np.exp(-float(mu_logits[t]))), 1 / (1 + np.exp(-float(beta_logits[t])))
        ref = beta * (mu * p @ ref + (1 - mu) * s) + (1 - beta) * ref
        np.testing.assert_allclose(steps[t], ref, atol=1e-5)
    assert len(steps) == 4
    np.testing.assert_allclose(y, steps[-1])


def test_beta_zero_leaves_state_unchanged():
    seed_vec, psis = _inputs()
    y, steps = diffusion.cascade(seed_vec, psis, jnp.zeros(3), jnp.full((3,), -BIG))
    for step in steps:
        np.testing.assert_allclose(step, seed_vec, atol=1e-6)


def test_mu_zero_returns_seed():
    seed_vec, psis = _inputs()
    y, _ = diffusion.cascade(seed_vec, psis, jnp.full((3,), -BIG), jnp.array([0.5, -2.0, 3.0]))
    np.testing.assert_allclose(y, seed_vec, atol=1e-6)


def test_closed_form_solves_the_linear_system():
    seed_vec, (psi,) = _inputs(walks=1)
    p = diffusion.transition_matrix(psi)
    y = diffusion.closed_form(p, seed_vec, 0.6)
    residual = y - 0.6 * jnp.einsum("bnm,bmk->bnk", p, y) - 0.4 * seed_vec
    np.testing.assert_allclose(residual, 0.0, atol=1e-5)


def test_gradients_reach_every_input():
    seed_vec, psis = _inputs()

    def loss(seed_vec, psis, mu_logits, beta_logits):
        return (diffusion.cascade(seed_vec, psis, mu_logits, beta_logits)[0] ** 2).sum()

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(seed_vec, psis, jnp.zeros(3), jnp.zeros(3))
    for g in jax.tree.leaves(grads):
        assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_bfloat16_inputs_are_walked_in_float32():
    seed_vec, psis = _inputs()
    y32, _ = diffusion.cascade(seed_vec, psis, jnp.zeros(3), jnp.zeros(3))
    y16, _ = diffusion.cascade(seed_vec.astype(jnp.bfloat16), [p.astype(jnp.bfloat16) for p in psis],
                               jnp.zeros(3), jnp.zeros(3))
    assert y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=5e-2)


def test_bad_arguments_are_refused():
    seed_vec, psis = _inputs()
    with pytest.raises(ValueError, match="backend"):
        diffusion.cascade(seed_vec, psis, jnp.zeros(3), jnp.zeros(3), backend="magic")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        diffusion.cascade(seed_vec, psis, jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"psis\[1\]"):
        diffusion.cascade(seed_vec, [psis[0], psis[1][:, :-1]], jnp.zeros(2), jnp.zeros(2))
