"""Psi computed pool-first (`SimilarityEmbedding`) equals conv1x1 -> BatchNorm -> pool computed in that order
(`benchmarks.before_issue31.ConvBatchNormPool`, flax's own Conv and BatchNorm): variables, outputs, gradients and the
running statistics, in training and evaluation, for both ways of taking the batch statistics (from the input's
covariance when it has fewer channels than the embedding, from the projection otherwise), both backward paths of the
pool (through each bin's maximising input vector; autodiff) and negative BN scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.before_issue31 import ConvBatchNormPool
from difnet_jax.models.similarity_embedding import SimilarityEmbedding

GRID = (4, 5)


def _inputs(in_channels, seed=0):
    rng = np.random.default_rng(seed)
    # an image-like input with an offset and correlated channels: the covariance route must subtract the mean
    x = rng.normal(size=(3, 17, 19, in_channels)) @ rng.normal(size=(in_channels, in_channels)) + 0.7
    return jnp.asarray(x, jnp.float32)


def _variables(in_channels, channels):
    x = _inputs(in_channels)
    new = SimilarityEmbedding(channels).init(jax.random.PRNGKey(3), x, GRID, train=True)
    old = ConvBatchNormPool(channels).init(jax.random.PRNGKey(3), x, GRID, train=True)
    return x, new, old


@pytest.mark.parametrize("in_channels", [3, 12])  # 3 < 8: moments from the input's covariance; 12 >= 8: from W x
def test_variables_and_initialisation_are_flax_conv_and_batchnorms(in_channels):
    _, new, old = _variables(in_channels, 8)
    assert jax.tree.structure(new) == jax.tree.structure(old)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        np.testing.assert_array_equal(a, b)


def _perturbed(variables, seed=1):
    """Trained-looking variables: a conv bias, BN scales of both signs, a shifted running mean. (Not a scale of
    exactly 0: there every pixel of a bin ties and the max's gradient is a convention, jnp's mean of the ties
    against the pool-first form's one pixel.)"""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(np.asarray, variables["params"])
    channels = params["bn"]["scale"].shape[0]
    scale = rng.normal(size=channels)
    scale[:2] = (-0.8, 0.6)
    params = {"conv": {**params["conv"], "bias": rng.normal(size=channels)},
              "bn": {"scale": scale, "bias": rng.normal(size=channels)}}
    stats = {"bn": {"mean": rng.normal(size=channels), "var": rng.uniform(0.5, 2.0, size=channels)}}
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {"params": params, "batch_stats": stats})


@pytest.mark.parametrize("train", [True, False])
# 3: moments from the input's covariance, backward through the maximisers; 12: moments from W x, through the
# maximisers (4 * 5 * 12 < 17 * 19); 40: moments from W x, autodiff of the pool
@pytest.mark.parametrize("in_channels", [3, 12, 40])
def test_outputs_gradients_and_running_statistics_match(in_channels, train):
    x, new, _ = _variables(in_channels, 8)
    variables = _perturbed(new)
    cotangent = jnp.asarray(np.random.default_rng(2).normal(size=(3, *GRID, 8)), jnp.float32)

    def run(module):
        def loss(params, features):
            out, updates = module.apply({**variables, "params": params}, features, GRID, train=train,
                                        mutable=["batch_stats"])
            return jnp.sum(out * cotangent), (out, updates)
        (_, (out, updates)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)
        return out, updates, grads

    new_out, new_updates, new_grads = run(SimilarityEmbedding(8))
    old_out, old_updates, old_grads = run(ConvBatchNormPool(8))
    np.testing.assert_allclose(new_out, old_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(new_updates), jax.tree.leaves(old_updates), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if not train:  # evaluation leaves the running statistics as they were
        np.testing.assert_array_equal(new_updates["batch_stats"]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(old_grads))
    for a, b in zip(jax.tree.leaves(new_grads), jax.tree.leaves(old_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4 * scale)


def test_flat_regions_and_relu_zeros_tie_without_changing_the_parameter_gradients():
    """Ties in a bin's max come from pixels with the same input vector (a flat image region; all-zero features
    after a ReLU): the pool-first Psi gives a tie's cotangent to one pixel, JAX's max splits it, and the
    parameter gradients (what training uses; the image needs none) are the same either way."""
    rng = np.random.default_rng(4)
    blocks = rng.normal(size=(2, 4, 4, 3))
    x = np.repeat(np.repeat(blocks, 5, axis=1), 5, axis=2)[:, :17, :19]  # 5x5 flat patches
    x[..., 0] = np.maximum(x[..., 0], 0.0)  # and exact zeros
    x = jnp.asarray(x, jnp.float32)
    variables = _perturbed(SimilarityEmbedding(8).init(jax.random.PRNGKey(3), x, GRID, train=True))

    def grads(module):
        def loss(params):
            out, _ = module.apply({**variables, "params": params}, x, GRID, train=True, mutable=["batch_stats"])
            return jnp.sum(out * jnp.linspace(-1.0, 2.0, out.size).reshape(out.shape))
        return jax.grad(loss)(variables["params"])

    new, old = grads(SimilarityEmbedding(8)), grads(ConvBatchNormPool(8))
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(old))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)
