"""Per-group learning rates and weight decay, checked on one update against the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.optimizer import make_optimizer, parameter_groups
from experiments.configs.voc import get_config

PRETRAINED = ("seed_backbone",)


def _params():
    rng = np.random.default_rng(0)
    def leaf(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "seed_backbone": {"conv1": {"kernel": leaf(3, 3, 2, 4)}, "bn1": {"scale": leaf(4), "bias": leaf(4)}},
        "similarity_backbone": {"conv1": {"kernel": leaf(3, 3, 2, 4)}, "bn1": {"scale": leaf(4), "bias": leaf(4)}},
        "psi1": {"conv": {"kernel": leaf(1, 1, 3, 4), "bias": leaf(4)}},
        "mu_logits": leaf(5),
    }


def _train_config(optimizer="sgd", weight_decay_on="kernels"):
    train = get_config("difnet18").train
    train.optimizer, train.lr, train.momentum, train.weight_decay = optimizer, 0.1, 0.9, 0.01
    train.pretrained_lr_scale, train.new_lr_scale, train.weight_decay_on = 1.0, 10.0, weight_decay_on
    return train


def test_groups():
    groups = parameter_groups(_params(), _train_config(), PRETRAINED, frozen_bn=True)
    assert groups["seed_backbone"] == {"conv1": {"kernel": "pretrained_decay"},
                                       "bn1": {"scale": "frozen", "bias": "frozen"}}
    assert groups["similarity_backbone"]["bn1"]["scale"] == "new_no_decay"  # not imported: a new layer
    assert groups["psi1"]["conv"] == {"kernel": "new_decay", "bias": "new_no_decay"}
    assert groups["mu_logits"] == "new_no_decay"
    everything = parameter_groups(_params(), _train_config(weight_decay_on="all"))
    assert set(jax.tree.leaves(everything)) == {"new_decay"}  # the paper's single group


@pytest.mark.parametrize("frozen_bn", [False, True])
def test_one_sgd_step_applies_group_rates_and_decay(frozen_bn):
    params = _params()
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5) - 0.1 * p, params)
    tx = make_optimizer(_train_config(), PRETRAINED, frozen_bn=frozen_bn)
    updates, _ = tx.update(grads, tx.init(params), params)
    lr, wd = 0.1, 0.01

    def check(path, scale, decay):
        update = updates
        gradient, param = grads, params
        for key in path:
            update, gradient, param = update[key], gradient[key], param[key]
        np.testing.assert_allclose(update, -lr * scale * (gradient + decay * param), rtol=1e-6, err_msg=str(path))

    check(("seed_backbone", "conv1", "kernel"), 1.0, wd)
    check(("seed_backbone", "bn1", "scale"), 0.0 if frozen_bn else 1.0, 0.0)
    check(("similarity_backbone", "conv1", "kernel"), 10.0, wd)
    check(("similarity_backbone", "bn1", "bias"), 10.0, 0.0)
    check(("psi1", "conv", "kernel"), 10.0, wd)
    check(("psi1", "conv", "bias"), 10.0, 0.0)
    check(("mu_logits",), 10.0, 0.0)


def test_adamw_step_sizes_follow_the_group_scales():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    train = _train_config("adamw", weight_decay_on="all")
    train.weight_decay = 0.0
    tx = make_optimizer(train, PRETRAINED)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step is -lr * g / (|g| + eps), about -lr per unit gradient.
    np.testing.assert_allclose(updates["seed_backbone"]["conv1"]["kernel"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["psi1"]["conv"]["kernel"], -1.0, rtol=1e-5)
