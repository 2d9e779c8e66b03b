"""The cascade of random walks of DifNet (Jiang et al. 2018, Sec. 3-4), in pure jnp.

Shapes are batch-first: a seed or state is (B, N, K) for N = h' * w' nodes and K
classes; a similarity embedding Psi is (B, N, C).

- `transition_matrix`: P = row-softmax(Psi Psi^T)                       (Sec. 4)
- `random_walk`:       y' = beta [mu P y + (1 - mu) s] + (1 - beta) y    (Eq. 4-5)
- `cascade`:           T such walks, each with its own P_t, mu_t, beta_t
- `closed_form`:       (1 - mu) (I - mu P)^-1 s, the walk's fixed point  (Eq. 2-3)

P y = softmax(Psi Psi^T) y is dot-product attention with Q = K = Psi, V = y and scale 1,
so the cascade has several backends for it (`BACKENDS`):

- "dense":   forms every P_t, O(B N^2) memory; what the mechanism-study figures read. Its hand-written
             VJP keeps one N x N array per walk (P_t) and runs the backward as plain GEMMs.
- "chunked": blockwise online softmax over row and column blocks (the flash-attention
             recurrence) with a recomputing custom VJP; pure JAX, any platform, no N x N array.
- "fused":   `jax.nn.dot_product_attention`: cuDNN flash attention on GPUs for bfloat16/float16
             Psi, else (with a warning, once) XLA's implementation, which forms P.
- "auto":    "fused" where cuDNN runs, else "dense" up to `AUTO_DENSE_MAX_NODES` nodes and
             "chunked" beyond (the crossover measured on a 2-core CPU, see BENCHMARKS.md).

The softmax and the walk run in float32 whatever the input dtype: P's rows must
sum to one, and bfloat16 logits Psi Psi^T of a few hundred lose that. (cuDNN's "fused"
keeps its softmax statistics in float32 too, but takes V = y in Psi's 16-bit dtype.)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

BACKENDS = ("dense", "chunked", "fused", "auto")
DEFAULT_BLOCK_SIZE = 512
# 2-core CPU, fwd+bwd at B = 1: chunked / dense time 1.3-1.6 up to 784, 1.14-1.43 at 1,024, then 0.82-1.30 at
# 1,156-1,296 and 0.86-0.91 at 1,444-1,681 (`python -m benchmarks.cascade --ns= --crossover_ns=...` --batches=1).
AUTO_DENSE_MAX_NODES = 1024


def transition_matrix(psi: jax.Array) -> jax.Array:
    """P = softmax(Psi Psi^T) along rows: (B, N, C) -> (B, N, N), rows sum to 1.

    Written as exp(S' - log rowsum(e^S')), S' = Psi Psi^T - rowmax, rather than `jax.nn.softmax`'s
    e^S' / rowsum(e^S'), whose unnormalised e^S' XLA:CPU keeps as one more N x N array per walk; and not as
    exp(S - logsumexp(S)), whose float32 lse costs |lse| 2^-24 in the row sums. The isfinite guard on the row
    max (as in `jax.nn.logsumexp`) keeps XLA:CPU from fusing the softmax into the Psi Psi^T product, for which
    YNNPACK allocates, and page-faults, a fresh N x N buffer on every call.
    """
    psi = psi.astype(jnp.float32)
    affinity = jnp.einsum("bnc,bmc->bnm", psi, psi)
    row_max = affinity.max(-1, keepdims=True)
    shifted = affinity - jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    return jnp.exp(shifted - jnp.log(jnp.exp(shifted).sum(-1, keepdims=True)))


def relax(diffused, y, seed, mu, beta):
    """Eq. 5 with R of Eq. 4, given the diffused state `diffused` = P y."""
    return beta * (mu * diffused + (1.0 - mu) * seed) + (1.0 - beta) * y


def random_walk(y, seed, transition, mu, beta):
    """One walk of Eq. 5 with R of Eq. 4; `transition` is P (B, N, N)."""
    return relax(jnp.einsum("bnm,bmk->bnk", transition, y), y, seed, mu, beta)


# --- dense: every P_t formed, with a hand-written VJP -------------------------------------------


@jax.custom_vjp
def dense_diffusion(psi: jax.Array, y: jax.Array) -> jax.Array:
    """P y with P = softmax(Psi Psi^T) formed in full, for float32 Psi (B, N, C), y (B, N, K) (Sec. 4, Eq. 4-5).

    The values of `transition_matrix(psi) @ y`. The VJP saves P (one N x N array per walk; autodiff of the
    softmax keeps two and forms more in the backward) and computes, with g the cotangent of z = P y,

      dy = P^T g,   dS = P * (g y^T - rowsum(g * z)),   dPsi = (dS + dS^T) Psi,

    where rowsum(g * z) = rowsum(P * g y^T) costs O(N K) instead of a pass over N x N arrays.
    """
    return _dense_diffusion_fwd(psi, y)[0]


def _dense_diffusion_fwd(psi, y):
    p = transition_matrix(psi)
    out = jnp.einsum("bnm,bmk->bnk", p, y)
    return out, (psi, y, out, p)


def _dense_diffusion_bwd(residuals, d_out):
    """The VJP above. g y^T - rowsum(g * z) is one GEMM, [g, -rowsum(g * z)] [y, 1]^T: fused into the product,
    the subtraction makes XLA:CPU's YNNPACK fusion allocate (and page-fault) a fresh N x N buffer every walk.
    """
    psi, y, out, p = residuals
    delta = (d_out * out).sum(-1, keepdims=True)
    lhs, rhs = jnp.concatenate([d_out, -delta], -1), jnp.concatenate([y, jnp.ones_like(delta)], -1)
    ds = p * jnp.einsum("bnk,bmk->bnm", lhs, rhs)
    d_psi = jnp.einsum("bnm,bmc->bnc", ds, psi) + jnp.einsum("bnm,bnc->bcm", ds, psi).swapaxes(1, 2)
    d_y = jnp.einsum("bnk,bnm->bkm", d_out, p).swapaxes(1, 2)
    return d_psi, d_y


dense_diffusion.defvjp(_dense_diffusion_fwd, _dense_diffusion_bwd)


# --- chunked: flash attention in pure JAX ------------------------------------------------------


def _block(n: int, block_size: int) -> int:
    """The block: N itself if N <= block_size, else as few blocks of at most `block_size` (multiples of 8
    where they can be) as cover N: N = 576 with block_size 512 gives 2 blocks of 288, not 2 of 512.
    """
    if n <= block_size:
        return n
    block = -(-n // -(-n // block_size))
    return min(-(-block // 8) * 8, block_size)


def _to_blocks(x: jax.Array, block: int) -> jax.Array:
    """(B, N, D) -> (N' / block, B, block, D), zero-padded to N' = a multiple of `block`."""
    batch, n, width = x.shape
    count = -(-n // block)
    x = jnp.pad(x, ((0, 0), (0, count * block - n), (0, 0)))
    return x.reshape(batch, count, block, width).swapaxes(0, 1)


def _from_blocks(x: jax.Array, n: int) -> jax.Array:
    """Inverse of `_to_blocks`: (count, B, block, ...) -> (B, N, ...), padding dropped."""
    x = x.swapaxes(0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :n]


def _column_mask(n: int, block: int, count: int) -> jax.Array | None:
    """(count, block) booleans, False on the padded columns of the last block; None without padding."""
    return None if n == count * block else (jnp.arange(count * block) < n).reshape(count, block)


def _block_logits(q, k, valid):
    """S_ij = Psi_i Psi_j^T for a (B, b, C) row and column block; padded columns (valid False) -> -inf."""
    s = jnp.einsum("bnc,bmc->bnm", q, k)
    return s if valid is None else jnp.where(valid, s, -jnp.inf)


def _row_block_forward(q, keys, values, valids):
    """o_i = softmax(S_i) V for one row block by the flash-attention recurrence over column blocks j:

    m' = max(m, rowmax S_ij),  l' = e^(m - m') l + rowsum e^(S_ij - m'),  o' = e^(m - m') o + e^(S_ij - m') V_j;
    returns (o / l, logsumexp m + log l). Column block 0 is never all padding, so m is finite after it.
    """
    batch, block, _ = q.shape

    def step(carry, column):
        m, total, o = carry
        k, v, valid = column
        s = _block_logits(q, k, valid)
        m_new = jnp.maximum(m, s.max(-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        o = correction[..., None] * o + jnp.einsum("bnm,bmk->bnk", p, v)
        return (m_new, correction * total + p.sum(-1), o), None

    init = (jnp.full((batch, block), -jnp.inf), jnp.zeros((batch, block)), jnp.zeros((batch, block, values.shape[-1])))
    (m, total, o), _ = lax.scan(step, init, (keys, values, valids))
    return o / total[..., None], m + jnp.log(total)


def _row_block_backward(q, d_out, lse, delta, keys, values, valids):
    """Flash-attention backward of one row block i, recomputing P_ij = e^(S_ij - lse_i) per column block j.

    dS_ij = P_ij * (dO_i V_j^T - D_i) with D_i = rowsum(dO_i * O_i); returns dQ_i = sum_j dS_ij K_j and,
    stacked over j, this row block's shares dK_j = dS_ij^T Q_i and dV_j = P_ij^T dO_i.
    """

    def step(dq, column):
        k, v, valid = column
        p = jnp.exp(_block_logits(q, k, valid) - lse[..., None])
        ds = p * (jnp.einsum("bnk,bmk->bnm", d_out, v) - delta[..., None])
        return dq + jnp.einsum("bnm,bmc->bnc", ds, k), (
            jnp.einsum("bnm,bnc->bmc", ds, q),
            jnp.einsum("bnm,bnk->bmk", p, d_out),
        )

    return lax.scan(step, jnp.zeros_like(q), (keys, values, valids))


def _chunked_forward(psi, y, block_size):
    """(P y, logsumexp of P's rows), both blocked; P = softmax(Psi Psi^T) is never formed."""
    block = _block(psi.shape[1], block_size)
    psis, values = _to_blocks(psi, block), _to_blocks(y, block)
    valids = _column_mask(psi.shape[1], block, psis.shape[0])
    return lax.map(lambda q: _row_block_forward(q, psis, values, valids), psis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def chunked_diffusion(psi: jax.Array, y: jax.Array, block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """P y = softmax(Psi Psi^T) y for float32 Psi (B, N, C), y (B, N, K), never forming the N x N P.

    Row blocks are mapped over, column blocks scanned with the online softmax; N is padded to a multiple
    of the block with masked (-inf) columns. The gradient recomputes the blockwise softmax from the per-row
    logsumexp (FlashAttention, Dao et al. 2022, Alg. 1 and 4) and sums Psi's two roles, Q and K. Memory:
    O(B N (C + K)) for inputs, residuals and gradients plus O(B block^2) per tile, within O(B N block).
    """
    out, _ = _chunked_forward(psi, y, block_size)
    return _from_blocks(out, psi.shape[1])


def _chunked_diffusion_fwd(psi, y, block_size):
    out, lse = _chunked_forward(psi, y, block_size)
    out = _from_blocks(out, psi.shape[1])
    return out, (psi, y, out, lse)


def _chunked_diffusion_bwd(block_size, residuals, d_out):
    psi, y, out, lse = residuals
    n = psi.shape[1]
    block = _block(n, block_size)
    psis, values, d_outs = _to_blocks(psi, block), _to_blocks(y, block), _to_blocks(d_out, block)
    deltas = _to_blocks((d_out * out).sum(-1, keepdims=True), block)[..., 0]
    valids = _column_mask(n, block, psis.shape[0])

    def row_step(shares, row):
        q, d_o, row_lse, delta = row
        dq, (dk, dv) = _row_block_backward(q, d_o, row_lse, delta, psis, values, valids)
        return (shares[0] + dk, shares[1] + dv), dq

    (dk, dv), dq = lax.scan(row_step, (jnp.zeros_like(psis), jnp.zeros_like(values)), (psis, d_outs, lse, deltas))
    return _from_blocks(dq + dk, n), _from_blocks(dv, n)


chunked_diffusion.defvjp(_chunked_diffusion_fwd, _chunked_diffusion_bwd)


# --- fused: jax.nn.dot_product_attention ---------------------------------------------------------


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def _cudnn_can_run(psi: jax.Array) -> bool:
    """cuDNN flash attention needs a GPU and bfloat16/float16 inputs (float32 Psi is not rounded down)."""
    return jax.default_backend() == "gpu" and psi.dtype in (jnp.bfloat16, jnp.float16)


def _attention(psi, y, implementation):
    """softmax(Psi Psi^T) y as one-head attention; y is zero-padded to Psi's width (a multiple of 8)."""
    width = -(-max(psi.shape[-1], y.shape[-1]) // 8) * 8
    q = jnp.pad(psi, ((0, 0), (0, 0), (0, width - psi.shape[-1])))[:, :, None]
    v = jnp.pad(y.astype(psi.dtype), ((0, 0), (0, 0), (0, width - y.shape[-1])))[:, :, None]
    out = jax.nn.dot_product_attention(q, q, v, scale=1.0, implementation=implementation)
    return out[:, :, 0, : y.shape[-1]].astype(jnp.float32)


def fused_diffusion(psi: jax.Array, y: jax.Array) -> jax.Array:
    """P y by `jax.nn.dot_product_attention` (Q = K = Psi, V = y, scale 1; float32 softmax statistics).

    cuDNN flash attention (O(N) memory) for bfloat16/float16 Psi on a GPU, V then in Psi's dtype; anywhere
    else, or if cuDNN refuses the shapes, XLA's implementation in float32, which forms P like "dense".
    """
    if _cudnn_can_run(psi):
        try:
            return _attention(psi, y, "cudnn")
        except (RuntimeError, ValueError, NotImplementedError) as error:
            _warn_once(f"diffusion backend 'fused': cuDNN flash attention refused ({error}); using XLA's attention.")
    else:
        _warn_once(
            f"diffusion backend 'fused': cuDNN flash attention needs a GPU and bfloat16/float16 Psi "
            f"(platform {jax.default_backend()}, Psi {psi.dtype}); using XLA's attention, which forms P."
        )
    return _attention(psi.astype(jnp.float32), y, "xla")


# --- the cascade ---------------------------------------------------------------------------------


def resolve_backend(backend: str, psi: jax.Array) -> str:
    """The concrete backend "auto" stands for, given one Psi (B, N, C); others are returned as they are."""
    if backend != "auto":
        return backend
    if _cudnn_can_run(psi):
        return "fused"
    return "dense" if psi.shape[1] <= AUTO_DENSE_MAX_NODES else "chunked"


def diffuse(psi: jax.Array, y: jax.Array, backend: str = "dense", block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """P y with P = softmax(Psi Psi^T) (Sec. 4), in float32, by the named backend."""
    backend = resolve_backend(backend, psi)
    if backend == "dense":
        return dense_diffusion(psi.astype(jnp.float32), y.astype(jnp.float32))
    if backend == "chunked":
        return chunked_diffusion(psi.astype(jnp.float32), y, block_size)
    return fused_diffusion(psi, y)


def cascade(
    seed: jax.Array,
    psis: Sequence[jax.Array],
    mu_logits: jax.Array,
    beta_logits: jax.Array,
    backend: str = "dense",
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Runs T random walks from y_0 = seed; walk t uses P_t = softmax(Psi_t Psi_t^T).

    Args:
      seed: s = M x, (B, N, K).
      psis: T embeddings Psi_t, each (B, N, C).
      mu_logits, beta_logits: (T,); mu_t = sigmoid(mu_logit_t), beta_t likewise.
      backend: how P_t y is computed, one of `BACKENDS`; "dense" forms every P_t.
      block_size: row and column block of the "chunked" backend.

    Returns:
      (y_T, (y_1, ..., y_T)) in float32.
    """
    if backend not in BACKENDS:
        raise ValueError(f"diffusion backend must be one of {BACKENDS}, got {backend!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
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
        y = relax(diffuse(psi, y, backend, block_size), y, seed, mus[t], betas[t])
        steps.append(y)
    return y, tuple(steps)


def closed_form(transition: jax.Array, seed: jax.Array, mu) -> jax.Array:
    """The diffusion y = (1 - mu) (I - mu P)^-1 s of Eq. 2, for P (..., N, N), s (..., N, K).

    It is the limit of Eq. 4 iterated with one P and a fixed mu in [0, 1).
    """
    n = transition.shape[-1]
    system = jnp.eye(n, dtype=transition.dtype) - mu * transition
    return (1.0 - mu) * jnp.linalg.solve(system, seed)
