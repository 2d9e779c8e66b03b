"""Atrous ResNets: torchvision's parameter counts, output stride 8, feature taps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from difnet_jax.models import ResNet18, ResNet34, ResNet50, ResNet101, resnet

# torchvision.models.resnetXX() parameter counts minus the fc layer (512*1000+1000 or 2048*1000+1000).
TORCHVISION_WITHOUT_FC = {18: 11_176_512, 34: 21_284_672, 50: 23_508_032, 101: 42_500_160}
MODELS = {18: ResNet18, 34: ResNet34, 50: ResNet50, 101: ResNet101}


def _abstract_variables(model, size=65):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


@pytest.mark.parametrize("depth", sorted(MODELS))
def test_parameter_count_equals_torchvision(depth):
    variables = _abstract_variables(MODELS[depth]())
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    assert count == TORCHVISION_WITHOUT_FC[depth]
    # Running statistics are state, not parameters.
    assert "batch_stats" in variables and "mean" in str(jax.tree_util.tree_structure(variables["batch_stats"]))


@pytest.mark.parametrize("depth,channels", [(18, (64, 64, 128, 256, 512)), (50, (64, 256, 512, 1024, 2048))])
def test_feature_taps_have_output_stride_8(depth, channels):
    model = MODELS[depth]()
    x = jnp.zeros((2, 321, 321, 3))
    variables = _abstract_variables(model)
    features = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert set(features) == {"stem", "layer1", "layer2", "layer3", "layer4"}
    sizes = {"stem": 161, "layer1": 81, "layer2": 41, "layer3": 41, "layer4": 41}
    for name, c in zip(["stem", "layer1", "layer2", "layer3", "layer4"], channels):
        feature = features[name]
        assert feature.shape == (2, sizes[name], sizes[name], c), name


def test_train_mode_updates_batch_statistics():
    model = ResNet18(width=8)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 33, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after, before))


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("size", [17, 18])
def test_stem_max_pool_is_flax_max_pool_bitwise(ceil_mode, size):
    """The stem's max-pool (nine strided views, the first maximum's backward; issue 31) against flax's
    `nn.max_pool` differentiated by XLA (select-and-scatter): the same values and bitwise the same gradients,
    jitted, on a post-ReLU input whose zeros tie in many windows (a tie's cotangent to the window's first
    maximum, overlapping windows' shares added in select-and-scatter's order)."""
    rng = np.random.default_rng(size)
    x = jnp.asarray(np.maximum(rng.normal(size=(2, size, size + 3, 5)), 0.0), jnp.float32)
    padding = [(1, 1 + (ceil_mode and s % 2 == 0)) for s in x.shape[1:3]]
    reference = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)  # noqa: E731
    pool = lambda x: resnet._stem_max_pool(x, ceil_mode)  # noqa: E731
    pooled = jax.jit(pool)(x)
    np.testing.assert_array_equal(pooled, reference(x))
    cotangent = jnp.asarray(rng.normal(size=pooled.shape), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * cotangent)))(x)
    expected = jax.jit(jax.grad(lambda x: jnp.sum(reference(x) * cotangent)))(x)
    np.testing.assert_array_equal(grad, expected)
    assert float(jnp.abs(expected).sum()) > 0 and int((x == 0).sum()) > x.size // 4
