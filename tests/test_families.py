"""Every model family through the shared seams: one train step and one evaluation per kind of variant.

A "kind" is a variant with its depth set aside (difnet18..101 are one kind; difnet50_noaspp
another): each runs at depth 18 and width 4, so the test stays quick as families are added.
Every depth of every variant is built (shapes only) in tests/test_config.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax import train
from difnet_jax.evaluator import FINAL
from difnet_jax.models import FAMILIES
from experiments.configs.variants import VARIANTS
from experiments.configs.voc import get_config

K = 5


def _kinds() -> list[str]:
    kinds = {}
    for name, (family, overrides) in VARIANTS.items():
        key = (family, tuple(sorted((k, str(v)) for k, v in overrides.items() if k != "depth")))
        kinds.setdefault(key, name)
    return sorted(kinds.values())


def _tiny(variant):
    config = get_config(f"{variant},synthetic")
    config.model.depth = 18
    config.model.width = 4
    config.model.aspp_rates = (1, 2)
    config.data.crop_size = 33
    config.train.batch_size = 2
    return config


def test_every_family_has_a_kind_here():
    assert {VARIANTS[v][0] for v in _kinds()} == set(FAMILIES)


@pytest.mark.parametrize("variant", _kinds())
def test_one_train_step_and_one_evaluation(variant):
    config = _tiny(variant)
    trainer = train.Trainer(config, num_classes=K)
    state = trainer.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, (2, 33, 33)).astype(np.int32)
    labels[:, :4] = 255  # void pixels take part in no term
    batch = {"image": rng.normal(size=(2, 33, 33, 3)).astype(np.float32), "label": labels}
    state, step_metrics = trainer.train_step(state, trainer.global_batch(batch))
    terms = {k: float(v) for k, v in step_metrics.items() if k.startswith("loss/")}
    assert "loss/ce" in terms and all(np.isfinite(v) for v in terms.values()), terms
    assert np.isfinite(float(step_metrics["loss"])) and int(step_metrics["nonfinite"]) == 0
    assert int(state.step) == 1

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = jnp.asarray(rng.normal(size=(2, 41, 41, 3)), jnp.float32)
    heads = trainer.evaluator._heads(variables, trainer.global_batch({"image": np.asarray(images)})["image"],
                                     None)
    _, intermediates = trainer.model.apply(variables, images, train=False)
    extra = FAMILIES[config.model.name].extra_predictions(intermediates)
    assert set(heads) == {FINAL, *extra}
    for probabilities in heads.values():
        assert probabilities.shape == (2, 41, 41, K)
        np.testing.assert_allclose(np.asarray(probabilities).sum(-1), 1.0, atol=1e-4)
