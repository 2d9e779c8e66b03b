"""The cascade of random walks of DifNet (Jiang et al. 2018, Sec. 3-4), in pure jnp.

Shapes are batch-first: a seed or state is (B, N, K) for N = h' * w' nodes and K
classes; a similarity embedding Psi is (B, N, C).

- `transition_matrix`: P = row-softmax(Psi Psi^T)                       (Sec. 4)
- `random_walk`:       y' = beta [mu P y + (1 - mu) s] + (1 - beta) y    (Eq. 4-5)
- `cascade`:           T such walks, each with its own P_t, mu_t, beta_t
- `closed_form`:       (1 - mu) (I - mu P)^-1 s, the walk's fixed point  (Eq. 2-3)

The softmax and the walk run in float32 whatever the input dtype: P's rows must
sum to one, and bfloat16 logits Psi Psi^T of a few hundred lose that.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

BACKENDS = ("dense",)


def transition_matrix(psi: jax.Array) -> jax.Array:
    """P = softmax(Psi Psi^T) along rows: (B, N, C) -> (B, N, N), rows sum to 1."""
    psi = psi.astype(jnp.float32)
    affinity = jnp.einsum("bnc,bmc->bnm", psi, psi)
    return jax.nn.softmax(affinity, axis=-1)


def random_walk(y, seed, transition, mu, beta):
    """One walk of Eq. 5 with R of Eq. 4; `transition` is P (B, N, N)."""
    diffused = jnp.einsum("bnm,bmk->bnk", transition, y)
    return beta * (mu * diffused + (1.0 - mu) * seed) + (1.0 - beta) * y


def cascade(
    seed: jax.Array,
    psis: Sequence[jax.Array],
    mu_logits: jax.Array,
    beta_logits: jax.Array,
    backend: str = "dense",
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Runs T random walks from y_0 = seed; walk t uses P_t = softmax(Psi_t Psi_t^T).

    Args:
      seed: s = M x, (B, N, K).
      psis: T embeddings Psi_t, each (B, N, C).
      mu_logits, beta_logits: (T,); mu_t = sigmoid(mu_logit_t), beta_t likewise.
      backend: how P_t y is computed; "dense" forms every P_t.

    Returns:
      (y_T, (y_1, ..., y_T)) in float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"diffusion backend must be one of {BACKENDS}, got {backend!r}")
    num_walks = len(psis)
    if mu_logits.shape != (num_walks,) or beta_logits.shape != (num_walks,):
        raise ValueError(
            f"mu_logits and beta_logits must have shape ({num_walks},) for {num_walks} walks, "
            f"got {mu_logits.shape} and {beta_logits.shape}"
        )
    seed = seed.astype(jnp.float32)
    mus = jax.nn.sigmoid(mu_logits.astype(jnp.float32))
    betas = jax.nn.sigmoid(beta_logits.astype(jnp.float32))
    y = seed
    steps = []
    for t, psi in enumerate(psis):
        if psi.shape[:2] != seed.shape[:2]:
            raise ValueError(f"psis[{t}] has shape {psi.shape}; its (B, N) must match the seed's {seed.shape[:2]}")
        y = random_walk(y, seed, transition_matrix(psi), mus[t], betas[t])
        steps.append(y)
    return y, tuple(steps)


def closed_form(transition: jax.Array, seed: jax.Array, mu) -> jax.Array:
    """The diffusion y = (1 - mu) (I - mu P)^-1 s of Eq. 2, for P (..., N, N), s (..., N, K).

    It is the limit of Eq. 4 iterated with one P and a fixed mu in [0, 1).
    """
    n = transition.shape[-1]
    system = jnp.eye(n, dtype=transition.dtype) - mu * transition
    return (1.0 - mu) * jnp.linalg.solve(system, seed)
