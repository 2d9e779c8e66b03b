"""DeepLabv3+ and its affinity head: shapes at OS 8/16, canonical parameter counts, bias init, family functions,
the statistics script, and a short training run that lowers both loss terms."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from difnet_jax.config_errors import ConfigError
from difnet_jax.models import affinity, deeplabv3plus
from difnet_jax.models.deeplabv3plus import ASPPv3, DeepLabV3Plus
from difnet_jax.models.family import Family
from difnet_jax.models.resnet import ResNet
from experiments import affinity_stats


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_shapes(model, size=65, train=False):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=train))


def _model_config(tmp_path=None, **own) -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.name = "deeplabv3plus"
    model.depth = 18
    model.width = 8
    model.aspp_rates = (6, 12, 18, 24)  # the shared DeepLabV2 key: not read by this family
    model.dtype = "float32"
    model.backbone_init = ""
    model.frozen_backbone_bn = False
    model.deeplabv3plus = deeplabv3plus.defaults()
    for key, value in own.items():
        model.deeplabv3plus[key] = value
    return model


@pytest.mark.parametrize("train,stride,grid", [(True, 16, 5), (False, 8, 9)])
def test_shapes_at_output_stride_16_and_8(train, stride, grid):
    model = DeepLabV3Plus(5, depth=18, width=8, affinity_rates=(4, (2, 6)))
    images = jnp.zeros((2, 65, 65, 3))
    variables = _init_shapes(model)
    seen_rates = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, ASPPv3) and context.method_name == "__call__":
            seen_rates.append(tuple(context.module.rates))
        return next_fun(*args, **kwargs)

    def forward(variables):  # shapes only (eval_shape): the rates are seen while tracing
        with nn.intercept_methods(spy):
            return model.apply(variables, images, train=train, capture_intermediates=True,
                               mutable=["intermediates", "batch_stats"])

    (logits, intermediates), state = jax.eval_shape(forward, variables)
    assert logits.shape == (2, 65, 65, 5) and logits.dtype == jnp.float32
    assert intermediates["affinity_logits"].shape == (2, 65, 65, 8 * 3)
    assert intermediates["affinity_logits"].dtype == jnp.float32
    captured = state["intermediates"]
    # 65 -> stem 33 -> layer1 17 (stride 4) -> layer4 at 65/16 -> 5 or 65/8 -> 9
    assert captured["aspp"]["__call__"][0].shape == (2, grid, grid, 256 * 8 // 64)
    assert captured["decoder"]["__call__"][0].shape == (2, 17, 17, 256 * 8 // 64)
    assert seen_rates == [(6, 12, 18) if stride == 16 else (12, 24, 36)]


def test_same_parameters_at_both_strides_and_no_head_by_default():
    model = DeepLabV3Plus(5, depth=18, width=8)
    at16, at8 = _init_shapes(model, train=True), _init_shapes(model, train=False)
    assert jax.tree.map(lambda x: x.shape, at16) == jax.tree.map(lambda x: x.shape, at8)
    assert "affinity" not in at8["params"]
    logits, intermediates = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 65, 65, 3)), train=False), at8)
    assert intermediates == {} and logits.shape == (1, 65, 65, 5)
    bf16 = DeepLabV3Plus(5, depth=18, width=8, dtype=jnp.bfloat16, affinity_rates=(4,))
    logits, intermediates = jax.eval_shape(
        lambda v: bf16.apply(v, jnp.zeros((1, 65, 65, 3)), train=False), _init_shapes(bf16))
    assert logits.dtype == intermediates["affinity_logits"].dtype == jnp.float32


def test_canonical_parameter_counts_width_64():
    """ASPP/decoder/heads counted from the layer shapes of DeepLabv3+ (Chen et al. 2018) on ResNet-50."""
    rates = affinity.expand_rates((8, (12, 24), 16))  # 4 rates: 32 affinity channels
    params = _init_shapes(DeepLabV3Plus(21, depth=50, affinity_rates=rates), size=33)["params"]
    c, low, bn = 2048, 256, 2 * 256  # layer4 and layer1 channels of ResNet-50; BN scale + bias of 256
    aspp = (c * 256 + bn) + 3 * (9 * c * 256 + bn) + (c * 256 + bn) + (5 * 256 * 256 + bn)
    decoder = (low * 48 + 2 * 48) + (9 * (256 + 48) * 256 + bn) + (9 * 256 * 256 + bn)
    assert _count(params["aspp"]) == aspp == 15_535_104
    assert _count(params["decoder"]) == decoder == 1_303_648
    assert _count(params["classifier"]) == 256 * 21 + 21
    assert _count(params["affinity"]) == 256 * 32 + 32
    assert _count(params["backbone"]) == 23_508_032  # torchvision ResNet-50 without fc
    resnet18 = _init_shapes(DeepLabV3Plus(21, depth=18), size=33)["params"]
    assert _count(resnet18["aspp"]) == (512 * 256 * 29 + 1280 * 256 + 6 * 512)
    assert _count(resnet18["decoder"]) == (64 * 48 + 96) + (9 * 304 * 256 + 512) + (9 * 256 * 256 + 512)
    assert _count(resnet18["backbone"]) == _count(
        _init_shapes(ResNet(18, output_stride=16), size=33)["params"])


def test_affinity_bias_init_must_match_the_rates():
    model = DeepLabV3Plus(3, depth=18, width=8, affinity_rates=(8, (12, 24)), affinity_bias_init=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"affinity_bias_init has 2 values for the 3 rates"):
        _init_shapes(model, size=33)


def _write_stats(path, labels, spec):
    stats = affinity.count_neighbours(labels, affinity.expand_rates(spec))
    with open(path, "w") as f:
        json.dump({"dataset": "test", "split": "train", "rates": affinity.stats_to_json(stats)}, f)
    return stats


def test_check_names_keys_and_the_stats_command(tmp_path):
    deeplabv3plus.check(_model_config())  # no head: nothing to look up
    deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_weighting="none"))  # no statistics needed
    with pytest.raises(ConfigError, match=r"model\.deeplabv3plus\.affinity_stats.*python -m experiments"
                                          r"\.affinity_stats --config="):
        deeplabv3plus.check(_model_config(affinity_rates=(8, 16)))
    missing = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="missing.json.*python -m experiments.affinity_stats"):
        deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_stats=missing))
    path = str(tmp_path / "stats.json")
    _write_stats(path, np.zeros((1, 20, 20), np.int32), (8,))
    deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_stats=path))
    with pytest.raises(ConfigError, match=r"rates \[\(16, 16\)\]"):  # the file lacks a configured rate
        deeplabv3plus.check(_model_config(affinity_rates=(8, 16), affinity_stats=path))
    bad = {"output_stride": 32, "eval_output_stride": 4, "aspp_rates": (), "decoder_channels": 0,
           "affinity_rates": ((1, 2, 3),), "affinity_weighting": "sqrt-reweight", "affinity_beta": -1.0}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=rf"model\.deeplabv3plus\.{key}="):
            deeplabv3plus.check(_model_config(**{key: value}))
    assert deeplabv3plus.backbones(_model_config()) == ("backbone",)
    entry = Family(build=deeplabv3plus.build, loss=deeplabv3plus.loss, backbones=deeplabv3plus.backbones,
                   check=deeplabv3plus.check, defaults=deeplabv3plus.defaults)
    assert isinstance(entry.build(_model_config(), 3), DeepLabV3Plus) and entry.extra_predictions({}) == {}
    assert deeplabv3plus.default_stats_path("voc_aug") == os.path.join("affinity_stats", "voc_aug.json")


def test_stats_script_writes_where_the_config_reads(tiny_data_dir, tmp_path):
    from difnet_jax.data import pipeline

    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"name": "synthetic_shapes/tiny", "data_dir": tiny_data_dir})
    config.model = _model_config(affinity_rates=(2, (2, 4)), affinity_stats=str(tmp_path / "s" / "tiny.json"))
    path = affinity_stats.compute_and_save(config, paper_rates=False)
    assert path == config.model.deeplabv3plus.affinity_stats and os.path.exists(path)
    assert os.path.getsize(os.path.splitext(path)[0] + ".png") > 5_000  # Fig. 3
    with open(path) as f:
        document = json.load(f)
    assert sorted(document["rates"]) == ["2,2", "2,4", "4,2"] and document["images"] == 48
    labels = np.stack([np.asarray(e["label"])[..., 0] for e in pipeline.source("synthetic_shapes/tiny", "train",
                                                                                 tiny_data_dir)])
    direct = affinity.count_neighbours(labels, [(2, 4)])
    entry = document["rates"]["2,4"]
    assert entry["counts"] == direct.counts[0].tolist() and entry["pairs"] == int(direct.pairs[0])
    assert 0.5 < entry["pi"] < 1.0 and abs(sum(entry["freq"]) - 1) < 1e-9
    deeplabv3plus.check(config.model)  # now found
    model = deeplabv3plus.build(config.model, 4)
    np.testing.assert_allclose(model.affinity_bias_init, [document["rates"][k]["pi"] for k in ("2,2", "2,4", "4,2")])
    # a second run for other rates keeps the first run's entries
    config.model.deeplabv3plus.affinity_rates = (3,)
    affinity_stats.compute_and_save(config, paper_rates=False)
    with open(path) as f:
        assert sorted(json.load(f)["rates"]) == ["2,2", "2,4", "3,3", "4,2"]


def _fixed_batch():
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 49, 49), np.int32)
    labels[0, 10:35, 5:30] = 1
    labels[1, 20:45, 15:45] = 2
    labels[1, 0:6, :] = 255
    colours = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [-1.0, 1.0, -0.5]], np.float32)
    images = colours[np.where(labels == 255, 0, labels)] + 0.3 * rng.normal(size=(2, 49, 49, 3)).astype(np.float32)
    return {"image": jnp.asarray(images), "label": jnp.asarray(labels)}


def test_bias_init_and_short_training_lowers_both_losses(tmp_path):
    batch = _fixed_batch()
    path = str(tmp_path / "stats.json")
    _write_stats(path, np.asarray(batch["label"]), (4, (2, 6)))
    config = _model_config(affinity_rates=(4, (2, 6)), affinity_stats=path)
    deeplabv3plus.check(config)
    model = deeplabv3plus.build(config, 3)
    # an rbg key: XLA compiles threefry over every parameter far more slowly on CPU
    (_, first_outputs), variables = jax.jit(
        lambda x: model.init_with_output(jax.random.key(0, impl="rbg"), x, train=False))(batch["image"])
    # bias init: sigmoid(b_r) = pi_r from the stored statistics, so the first prediction is about pi_r
    pis = affinity.load_stats(path, affinity.expand_rates((4, (2, 6)))).positive_freq
    assert model.affinity_bias_init == tuple(pis) and 0.75 < min(pis) < max(pis) < 0.98
    bias = np.asarray(variables["params"]["affinity"]["bias"])
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), np.repeat(pis, 8), rtol=1e-5)
    first_affinity = np.asarray(jax.nn.sigmoid(first_outputs["affinity_logits"])).reshape(2, 49, 49, 3, 8)
    np.testing.assert_allclose(first_affinity.mean(axis=(0, 1, 2, 4)), pis, atol=0.05)  # not 1 - pi
    optimizer = optax.adam(3e-3)

    def loss_fn(params, batch_stats):
        outputs, state = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                     mutable=["batch_stats"])
        total, terms = deeplabv3plus.loss(outputs, batch, config)
        return total, (terms, state["batch_stats"])

    @jax.jit
    def step(params, batch_stats, opt_state):
        (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, total, terms

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    history = []
    for _ in range(40):
        params, batch_stats, opt_state, total, terms = step(params, batch_stats, opt_state)
        history.append({k: float(v) for k, v in terms.items()} | {"total": float(total)})
    first, last = history[0], history[-1]
    assert set(first) == {"ce", "affinity", "total"}
    assert abs(first["total"] - (first["ce"] + 1.2 * first["affinity"])) < 1e-4
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert last["ce"] < 0.5 * first["ce"], (first, last)
    assert last["affinity"] < 0.7 * first["affinity"], (first, last)
