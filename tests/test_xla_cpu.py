"""difnet_jax.xla_cpu: the XLA CPU setting the project chooses changes results by float32 noise only."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax import xla_cpu
from difnet_jax.models import diffusion
from experiments.configs.voc import get_config


class _SmallNet(nn.Module):
    """Convolutions (one dilated), train-mode BatchNorm, ReLU, a 1x1 class conv and DifNet's dense cascade on the
    grid: the kinds of operation the XLA CPU settings hand to other libraries, at a size that compiles in seconds."""

    @nn.compact
    def __call__(self, x):
        for i, dilation in enumerate((1, 2)):
            x = nn.Conv(16, (3, 3), kernel_dilation=dilation, name=f"conv{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=False, name=f"bn{i}")(x))
        scores = nn.Conv(21, (1, 1), name="classes")(x)
        batch, height, width, _ = x.shape
        psi = nn.Conv(8, (1, 1), name="psi")(x).reshape(batch, height * width, 8)
        y, _ = diffusion.cascade(scores.reshape(batch, height * width, 21), [psi, psi], jnp.zeros(2), jnp.zeros(2),
                                 "dense")
        return y.reshape(batch, height, width, 21)


@pytest.mark.parametrize("setting", [xla_cpu.AUTO_SETTING, "ynn_dot_eltwise"])
def test_loss_and_gradients_agree_with_xla_defaults(setting):
    """The loss and its gradient w.r.t. every parameter of a small network, compiled with XLA's defaults and with
    `setting`: equal to float32 noise (the settings change the order of float32 sums only)."""
    net = _SmallNet()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 24, 24, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 21, (2, 24, 24)))
    variables = net.init(jax.random.PRNGKey(0), images)

    def loss(params):
        logits, _ = net.apply({**variables, "params": params}, images, mutable=["batch_stats"])
        log_p = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))

    lowered = jax.jit(jax.value_and_grad(loss)).lower(variables["params"])
    default = lowered.compile()
    other = lowered.compile(compiler_options=xla_cpu.SETTINGS[setting])
    if jax.default_backend() == "cpu":
        assert other.as_text() != default.as_text()  # the option reached the compiler
    (loss_a, grads_a), (loss_b, grads_b) = default(variables["params"]), other(variables["params"])
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_a))
    worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b),
                                                                strict=True))
    assert worst <= 1e-4 * scale, (worst, scale)  # float32 noise against the gradients' scale


def test_choice_and_switches(monkeypatch):
    monkeypatch.delenv(xla_cpu.ENV, raising=False)
    paper, synthetic = get_config("difnet18"), get_config("difnet18,synthetic")
    assert xla_cpu.choice(paper.model) == xla_cpu.choice(synthetic.model) == xla_cpu.AUTO_SETTING
    monkeypatch.setenv(xla_cpu.ENV, "off")
    assert xla_cpu.choice(paper.model) == "default"
    monkeypatch.setenv(xla_cpu.ENV, "ynn_dot_eltwise")
    assert xla_cpu.choice(synthetic.model) == "ynn_dot_eltwise"
    monkeypatch.setenv(xla_cpu.ENV, "fastest")
    with pytest.raises(ValueError, match="DIFNET_XLA_CPU"):
        xla_cpu.choice(paper.model)
    monkeypatch.delenv(xla_cpu.ENV)
    if jax.default_backend() == "cpu":
        assert xla_cpu.compiler_options(synthetic.model) == xla_cpu.SETTINGS[xla_cpu.AUTO_SETTING]
    paper.model.xla_cpu = "off"
    assert xla_cpu.choice(paper.model) == "default"
    if jax.default_backend() == "cpu":
        assert xla_cpu.compiler_options(paper.model) is None


def test_sliced_adaptive_max_pool_candidate_matches_the_models():
    """benchmarks.pool_candidate's pool (static slices) against similarity_embedding.adaptive_max_pool: values and
    gradients (distinct values: no ties)."""
    from benchmarks.pool_candidate import sliced_adaptive_max_pool
    from difnet_jax.models.similarity_embedding import adaptive_max_pool

    x = jnp.asarray(np.random.default_rng(0).permutation(2 * 21 * 23 * 3).reshape(2, 21, 23, 3), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 4, 3)), jnp.float32)
    for pool in (adaptive_max_pool, sliced_adaptive_max_pool):
        assert pool(x, (5, 4)).shape == (2, 5, 4, 3)
    values = [pool(x, (5, 4)) for pool in (adaptive_max_pool, sliced_adaptive_max_pool)]
    np.testing.assert_array_equal(values[0], values[1])
    grads = [jax.grad(lambda x, pool=pool: jnp.sum(pool(x, (5, 4)) * w))(x)
             for pool in (adaptive_max_pool, sliced_adaptive_max_pool)]
    np.testing.assert_array_equal(grads[0], grads[1])
