"""Every model family through the shared seams: one train step and one evaluation per kind of variant.

A kind is a variant with its depth and sizes set aside: each family, DifNet's two ablations (the walks one is
not trained here: `TRAINED_KINDS`),
PDN with two rings and two modules (8NB and 1M are the subsets of it that tests/test_pdn.py
trains), DeepLabv3+ with and without the affinity head. Each runs at depth 18 and width 4 (a
train step compiles in tens of seconds on 2 cores, so one per variant would not fit the
suite's budget); every depth of every variant is built (shapes only) in tests/test_config.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax import train
from difnet_jax.evaluation.evaluator import FINAL
from difnet_jax.models import FAMILIES, affinity
from experiments.configs.variants import VARIANTS
from experiments.configs.voc import get_config

K = 5


KINDS = ("difnet18", "difnet50_noaspp", "difnet50_no24", "simdeeplab18", "pdn18_24nb_2m", "deeplabv3plus18",
         "deeplabv3plus18_affinity")
# Trained here: DifNet's walks ablation (difnet50_no24) changes only the cascade's walk list, whose forward
# tests/test_models.py checks per variant; its train step, another 10 s of compiling, is left out.
TRAINED_KINDS = tuple(kind for kind in KINDS if kind != "difnet50_no24")



def _tiny(variant, tmp_path, labels):
    config = get_config(f"{variant},synthetic")
    config.model.depth = 18
    config.model.width = 4
    config.model.aspp_rates = (1, 2)
    config.data.crop_size = 33
    config.train.batch_size = 2
    own = config.model[config.model.name]
    if own.get("affinity_rates"):  # statistics as `python -m experiments.affinity_stats` writes them
        stats = affinity.count_neighbours(labels, affinity.expand_rates(tuple(own.affinity_rates)))
        own.affinity_stats = str(tmp_path / "stats.json")
        (tmp_path / "stats.json").write_text(json.dumps({"rates": affinity.stats_to_json(stats)}))
    return config


def test_every_family_has_a_kind_here():
    assert {VARIANTS[v][0] for v in KINDS} == set(FAMILIES)


@pytest.mark.parametrize("variant", TRAINED_KINDS)
def test_one_train_step_and_one_evaluation(variant, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(0, K, (2, 5, 5)), 7, axis=1), 7, axis=2)[:, :33, :33].astype(np.int32)
    labels[:, :4] = 255  # void pixels take part in no term
    config = _tiny(variant, tmp_path, labels)
    trainer = train.Trainer(config, num_classes=K)
    state = trainer.init(jax.random.PRNGKey(0))
    batch = {"image": rng.normal(size=(2, 33, 33, 3)).astype(np.float32), "label": labels}
    state, step_metrics = trainer.train_step(state, trainer.global_batch(batch))
    terms = {k: float(v) for k, v in step_metrics.items() if k.startswith("loss/")}
    assert "loss/ce" in terms and all(np.isfinite(v) for v in terms.values()), terms
    assert np.isfinite(float(step_metrics["loss"])) and int(step_metrics["nonfinite"]) == 0
    assert int(state.step) == 1

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = jnp.asarray(rng.normal(size=(2, 41, 41, 3)), jnp.float32)
    heads = jax.eval_shape(trainer.evaluator._heads, variables, images, None)  # shapes: no second compile
    _, intermediates = jax.eval_shape(lambda v: trainer.model.apply(v, images, train=False), variables)
    extra = FAMILIES[config.model.name].extra_predictions(intermediates)
    assert set(heads) == {FINAL, *extra}
    for probabilities in heads.values():
        assert probabilities.shape == (2, 41, 41, K)


@pytest.mark.parametrize("variant", KINDS)
def test_each_family_asks_for_the_crops_its_output_stride_aligns(variant):
    """Output stride 8 (DifNet, Sim-DeepLab, PDN): 8k+1 crops; DeepLabv3+ at its training stride (16 in the paper)."""
    from difnet_jax.config_checks import ConfigError, check_config

    config = get_config(f"{variant},synthetic")
    name = config.model.name
    if name == "deeplabv3plus":
        config.model.deeplabv3plus.output_stride = 16
    stride = FAMILIES[name].train_output_stride(config.model)
    assert stride == (16 if name == "deeplabv3plus" else 8)
    for crop in (81, 97, 65):
        config.data.crop_size = crop
        check_config(config)
    config.data.crop_size = 80
    with pytest.raises(ConfigError, match=rf"config\.data\.crop_size=80 is invalid: expected {stride}k\+1 .*"
                                          rf"{name}.*{'65 or 81' if stride == 16 else '73 or 81'}"):
        check_config(config)
    config.data.crop_size = 73  # 8k+1, not 16k+1
    if stride == 16:
        with pytest.raises(ConfigError, match="65 or 81"):
            check_config(config)
        config.model.deeplabv3plus.output_stride = 8  # trained at 8, 73 aligns
    check_config(config)


def test_only_a_model_with_an_affinity_head_offers_propagation():
    for variant in KINDS:
        config = get_config(f"{variant},synthetic")
        settings = FAMILIES[config.model.name].propagation(config.model)
        if variant.endswith("_affinity"):
            own = config.model.deeplabv3plus
            assert settings.rates == affinity.expand_rates(tuple(own.affinity_rates)) != ()
            assert (settings.lam, settings.mu, settings.iterations) == (6.0, 7.0, 10)
        else:
            assert settings is None, variant
