"""DeepLabv3+ and its affinity head: shapes at OS 8/16, canonical parameter counts, the reference's settings
(multi-grid, BatchNorm decays, dropout, separable convs), the family's settings and statistics, the statistics
script, and a short training run that lowers both loss terms."""

import ast
import json
import os
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from difnet_jax.models import FAMILIES, affinity, affinity_stats, deeplabv3plus
from difnet_jax.models.deeplabv3plus import ASPPv3, DeepLabV3Plus
from difnet_jax.models.family import Family
from difnet_jax.models.resnet import ResNet
from difnet_jax.user_errors import ConfigError
from experiments import affinity_stats as stats_script

TINY = "synthetic_shapes/tiny"


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_shapes(model, size=65, train=False):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=train))


def _model_config(**own) -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict()
    model.name = "deeplabv3plus"
    model.depth = 18
    model.width = 8
    model.aspp_rates = (6, 12, 18, 24)  # the shared DeepLabV2 key: not read by this family
    model.dtype = "float32"
    model.backbone_init = ""
    model.frozen_backbone_bn = False
    model.deeplabv3plus = deeplabv3plus.defaults()
    model.deeplabv3plus.multi_grid = (1, 2)  # ResNet-18's layer4 has two blocks
    for key, value in own.items():
        model.deeplabv3plus[key] = value
    return model


@pytest.mark.parametrize("train,stride,grid", [(True, 16, 5), (False, 8, 9)])
def test_shapes_at_output_stride_16_and_8(train, stride, grid):
    model = DeepLabV3Plus(5, depth=18, width=8, affinity_rates=(4, (2, 6)), affinity_bias_init=(0.9, 0.8, 0.8))
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
                               mutable=["intermediates", "batch_stats"], rngs={"dropout": jax.random.key(1)})

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
    bf16 = DeepLabV3Plus(5, depth=18, width=8, dtype=jnp.bfloat16, affinity_rates=(4,), affinity_bias_init=(0.9,))
    logits, intermediates = jax.eval_shape(
        lambda v: bf16.apply(v, jnp.zeros((1, 65, 65, 3)), train=False), _init_shapes(bf16))
    assert logits.dtype == intermediates["affinity_logits"].dtype == jnp.float32


def test_canonical_parameter_counts_width_64():
    """ASPP/decoder/heads counted from the layer shapes of DeepLabv3+ (Chen et al. 2018) on ResNet-50."""
    rates = affinity.expand_rates((8, (12, 24), 16))  # 4 rates: 32 affinity channels
    model = DeepLabV3Plus(21, depth=50, affinity_rates=rates, affinity_bias_init=(0.9,) * 4, multi_grid=(1, 2, 4))
    params = _init_shapes(model, size=33)["params"]
    c, low, bn = 2048, 256, 2 * 256  # layer4 and layer1 channels of ResNet-50; BN scale + bias of 256
    aspp = (c * 256 + bn) + 3 * (9 * c * 256 + bn) + (c * 256 + bn) + (5 * 256 * 256 + bn)
    decoder = (low * 48 + 2 * 48) + (9 * (256 + 48) * 256 + bn) + (9 * 256 * 256 + bn)
    assert _count(params["aspp"]) == aspp == 15_535_104
    assert _count(params["decoder"]) == decoder == 1_303_648
    assert _count(params["classifier"]) == 256 * 21 + 21
    assert _count(params["affinity"]) == 256 * 32 + 32
    assert _count(params["backbone"]) == 23_508_032  # torchvision ResNet-50 without fc; multi-grid adds nothing
    resnet18 = _init_shapes(DeepLabV3Plus(21, depth=18, multi_grid=(1, 2)), size=33)["params"]
    assert _count(resnet18["aspp"]) == (512 * 256 * 29 + 1280 * 256 + 6 * 512)
    assert _count(resnet18["decoder"]) == (64 * 48 + 96) + (9 * 304 * 256 + 512) + (9 * 256 * 256 + 512)
    assert _count(resnet18["backbone"]) == _count(
        _init_shapes(ResNet(18, output_stride=16), size=33)["params"])


def test_separable_parameter_counts_width_64():
    """The reference's split_separable_conv2d: depthwise 3x3 + BN, pointwise 1x1 + BN, in the ASPP and decoder."""
    model = DeepLabV3Plus(21, depth=50, aspp_separable=True, decoder_separable=True)
    params = _init_shapes(model, size=33)["params"]
    c, low, bn = 2048, 256, 2 * 256
    separable = lambda cin, cout: (9 * cin + 2 * cin) + (cin * cout + 2 * cout)  # noqa: E731
    aspp = (c * 256 + bn) + 3 * separable(c, 256) + (c * 256 + bn) + (5 * 256 * 256 + bn)
    decoder = (low * 48 + 2 * 48) + separable(256 + 48, 256) + separable(256, 256)
    assert _count(params["aspp"]) == aspp == 3_019_776
    assert _count(params["decoder"]) == decoder == 162_928
    assert params["aspp"]["conv3x3_0"]["depthwise"]["kernel"].shape == (3, 3, 1, c)
    only_aspp = _init_shapes(DeepLabV3Plus(21, depth=50, aspp_separable=True), size=33)["params"]
    assert _count(only_aspp["aspp"]) == aspp and _count(only_aspp["decoder"]) == 1_303_648


def _conv_dilations(model, train):
    """{conv path: kernel_dilation} of every 3x3 conv of layer4's blocks, seen while tracing."""
    seen = {}

    def spy(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and module.kernel_size == (3, 3) and "layer4" in module.path[1]:
            dilation = module.kernel_dilation
            seen["/".join(module.path[1:])] = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        return next_fun(*args, **kwargs)

    variables = _init_shapes(model, size=33)
    with nn.intercept_methods(spy):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 33, 33, 3)), train=train, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(0)}), variables)
    return seen


def test_multi_grid_dilates_layer4_blocks_by_their_unit_rates():
    """The reference's block4 rate * unit_rate (core/resnet_v1_beta.py): (2, 4, 8) at OS 16, (4, 8, 16) at OS 8."""
    model = DeepLabV3Plus(3, depth=50, width=4, multi_grid=(1, 2, 4))
    for train, rates in ((True, (2, 4, 8)), (False, (4, 8, 16))):
        seen = _conv_dilations(model, train)
        assert seen == {f"layer4_{i}/conv2": (r, r) for i, r in enumerate(rates)}, seen
    plain = _conv_dilations(DeepLabV3Plus(3, depth=50, width=4), True)
    assert set(plain.values()) == {(2, 2)}
    basic = _conv_dilations(DeepLabV3Plus(3, depth=18, width=4, multi_grid=(1, 2)), True)  # torchvision layout
    assert basic == {"layer4_0/conv1": (2, 2), "layer4_0/conv2": (2, 2), "layer4_1/conv1": (4, 4),
                     "layer4_1/conv2": (4, 4)}
    with pytest.raises(ValueError, match="one rate per block"):
        _init_shapes(DeepLabV3Plus(3, depth=18, width=4, multi_grid=(1, 2, 4)), size=33)


def _random_variables(model, size=33):
    """Random values of the model's variable shapes, without compiling an init."""
    rng = np.random.default_rng(0)
    shapes = _init_shapes(model, size=size)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(lambda v: np.abs(v) + 0.5, variables["batch_stats"])
    return variables


def test_batchnorm_decays_backbone_095_head_09997():
    """Running means move by (1 - decay) of the batch mean: flax's momentum is TensorFlow's decay."""
    model = DeepLabV3Plus(3, depth=18, width=4, aspp_dropout=0.0)
    images = jax.random.normal(jax.random.key(0), (2, 33, 33, 3)) + 1.0
    variables = _random_variables(model)
    paths = {"backbone/bn1": 0.95, "backbone/layer4_1/bn2": 0.95, "aspp/conv1x1/bn": 0.9997,
             "decoder/conv1/bn": 0.9997}

    @jax.jit
    def train_step_statistics(variables):
        batch_means = {}

        def spy(next_fun, args, kwargs, context):
            path = "/".join(context.module.path)
            if isinstance(context.module, nn.BatchNorm) and path in paths:
                batch_means[path] = args[0].mean(axis=(0, 1, 2))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(spy):
            _, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return state["batch_stats"], batch_means

    new_stats, batch_means = train_step_statistics(variables)
    assert sorted(batch_means) == sorted(paths)
    for path, decay in paths.items():
        *scope, name = path.split("/")
        old, new = variables["batch_stats"], new_stats
        for key in scope:
            old, new = old[key], new[key]
        np.testing.assert_allclose(new[name]["mean"], decay * old[name]["mean"] + (1 - decay) * batch_means[path],
                                   rtol=1e-4, atol=1e-6)
        assert float(jnp.abs(batch_means[path] - old[name]["mean"]).max()) > 1e-2  # the statistics do move


def test_aspp_dropout_only_in_training_and_from_the_dropout_rng():
    model = DeepLabV3Plus(3, depth=18, width=4, aspp_dropout=0.5)
    images = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
    variables = _random_variables(model)
    train = jax.jit(lambda key: model.apply(variables, images, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": key})[0][0])
    a, b, a_again = train(jax.random.key(2)), train(jax.random.key(3)), train(jax.random.key(2))
    assert not np.allclose(a, b) and np.array_equal(a, a_again)
    evaluate = jax.jit(lambda: model.apply(variables, images, train=False)[0])  # no rng: deterministic
    np.testing.assert_array_equal(evaluate(), evaluate())
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda: model.apply(variables, images, train=True, mutable=["batch_stats"]))
    # without dropout training needs no rng
    jax.eval_shape(lambda: model.clone(aspp_dropout=0.0).apply(variables, images, train=True, mutable=["batch_stats"]))


def test_affinity_bias_init_is_required_and_must_match_the_rates():
    model = DeepLabV3Plus(3, depth=18, width=8, affinity_rates=(8, (12, 24)), affinity_bias_init=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"affinity_bias_init has 2 values for the 3 rates"):
        _init_shapes(model, size=33)
    with pytest.raises(ValueError, match=r"affinity_bias_init has 0 values.*pi_r"):
        _init_shapes(DeepLabV3Plus(3, depth=18, width=8, affinity_rates=(8,)), size=33)


# --- the family: settings, check, statistics ------------------------------------------------------------------


def _write_stats(path, labels, spec):
    stats = affinity.count_neighbours(labels, affinity.expand_rates(spec))
    with open(path, "w") as f:
        json.dump({"dataset": "test", "split": "train", "rates": affinity.stats_to_json(stats)}, f)
    return stats


def test_settings_are_read_once_and_old_configs_build_as_they_ran():
    config = _model_config(affinity_rates=(8, (12, 24)))
    own = deeplabv3plus.settings(config)
    assert own is deeplabv3plus.settings(ml_collections.ConfigDict(config.to_dict()))  # memoised by value
    assert own.affinity_rates == ((8, 8), (12, 24), (24, 12)) and own.multi_grid == (1, 2)
    assert own.propagation == affinity.Propagation(own.affinity_rates, 6.0, 7.0, 10)
    assert (own.backbone_bn_decay, own.bn_decay, own.aspp_dropout, own.affinity_reduction) == (
        0.95, 0.9997, 0.1, "mean_over_pairs")
    # A config.json written before the keys existed: the network and loss those runs had.
    old = _model_config()
    with old.unlocked():
        for key in deeplabv3plus.LEGACY:
            del old.deeplabv3plus[key]
    model = deeplabv3plus.build(old, 3, {})
    assert (model.multi_grid, model.backbone_bn_momentum, model.bn_momentum, model.aspp_dropout) == ((), 0.9, 0.9, 0.0)
    assert deeplabv3plus.settings(old).affinity_reduction == "sum_over_pairs"
    new = deeplabv3plus.build(_model_config(), 3, {})
    assert (new.multi_grid, new.backbone_bn_momentum, new.bn_momentum, new.aspp_dropout) == ((1, 2), 0.95, 0.9997, 0.1)
    assert not new.aspp_separable and not new.decoder_separable


def test_check_names_each_key(tmp_path):
    deeplabv3plus.check(_model_config())  # no head: nothing to look up
    # a head reads the statistics stored with its dataset: nothing to look up before the run
    deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_stats_dataset="voc_aug"))
    with pytest.raises(ConfigError, match=r"model\.deeplabv3plus\.affinity_stats_dataset=''.*data\.name"):
        deeplabv3plus.check(_model_config(affinity_rates=(8,)))
    missing = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"missing\.json.*python -m experiments\.affinity_stats .*--output="):
        deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_stats=missing))
    path = str(tmp_path / "stats.json")
    _write_stats(path, np.zeros((1, 20, 20), np.int32), (8,))
    deeplabv3plus.check(_model_config(affinity_rates=(8,), affinity_stats=path))
    with pytest.raises(ConfigError, match=r"rates \[\(16, 16\)\]"):  # the file lacks a configured rate
        deeplabv3plus.check(_model_config(affinity_rates=(8, 16), affinity_stats=path))
    bad = {"output_stride": 32, "eval_output_stride": 4, "aspp_rates": (), "decoder_channels": 0,
           "affinity_rates": ((1, 2, 3),), "affinity_weighting": "sqrt-reweight", "affinity_beta": -1.0,
           "multi_grid": (1, 2, 4), "backbone_bn_decay": 1.0, "bn_decay": -0.1, "aspp_dropout": 1.5,
           "affinity_reduction": "mean", "propagation_lambda": -1.0,
           "propagation_mu": 1.0, "propagation_iterations": 0}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=rf"model\.deeplabv3plus\.{key}="):
            deeplabv3plus.check(_model_config(**{key: value}))
    with pytest.raises(ConfigError, match=r"multi_grid=\(1, 2\).*3 positive ints.*ResNet-50.*\(1, 2, 4\)"):
        config = _model_config()
        config.depth = 50
        deeplabv3plus.check(config)
    assert deeplabv3plus.backbones(_model_config()) == ("backbone",)
    entry = Family(build=deeplabv3plus.build, loss=deeplabv3plus.loss, backbones=deeplabv3plus.backbones,
                   check=deeplabv3plus.check, defaults=deeplabv3plus.defaults)
    assert isinstance(entry.build(_model_config(), 3, {}), DeepLabV3Plus) and entry.extra_predictions({}) == {}
    assert entry.dataset_facts(_model_config()) == {}  # no facts by default
    family = FAMILIES["deeplabv3plus"]
    assert family.train_output_stride(_model_config()) == 16
    assert family.train_output_stride(_model_config(output_stride=8)) == 8
    assert family.propagation(_model_config()) is None
    assert family.dataset_facts(_model_config()) == {}  # no head: nothing to read


def test_building_and_the_loss_read_no_data(tmp_path, monkeypatch):
    """The head's statistics are handed in as facts (the family's `dataset_facts` reads them): with them, a model whose
    dataset does not exist builds and its loss runs; the family's `dataset_facts` is where the dataset is read."""

    def no_reading(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(affinity_stats, "split_stats", no_reading)
    monkeypatch.setattr(affinity_stats, "count_split", no_reading)
    config = _model_config(affinity_rates=(4, (2, 6)), affinity_stats_dataset="voc_aug",
                           affinity_stats_data_dir=str(tmp_path / "no_such_data_dir"))
    labels = jnp.asarray(_fixed_batch()["label"])
    stats = affinity.count_neighbours(np.asarray(labels), deeplabv3plus.settings(config).affinity_rates)
    facts = {"affinity_stats": stats}
    model = deeplabv3plus.build(config, 3, facts)
    assert model.affinity_bias_init == tuple(stats.positive_freq)
    outputs = (jnp.zeros((2, 49, 49, 3)), {"affinity_logits": jnp.zeros((2, 49, 49, 8 * 3))})
    _, terms = deeplabv3plus.loss(outputs, {"label": labels}, config, facts)  # sqrt: its weights read the facts
    assert np.isfinite(float(terms["affinity"]))
    with pytest.raises(ValueError, match=r"affinity head.*facts\['affinity_stats'\].*dataset_facts"):
        deeplabv3plus.build(config, 3, {})
    with pytest.raises(ValueError, match=r"rates \(\(4, 4\),\).*\(\(4, 4\), \(2, 6\), \(6, 2\)\)"):
        deeplabv3plus.build(config, 3, {"affinity_stats": affinity.count_neighbours(np.asarray(labels), [(4, 4)])})
    with pytest.raises(AssertionError, match="the dataset was read"):
        FAMILIES["deeplabv3plus"].dataset_facts(config)
    config.deeplabv3plus.affinity_stats_dataset = ""
    with pytest.raises(ConfigError, match=r"affinity_stats_dataset is empty"):
        FAMILIES["deeplabv3plus"].dataset_facts(config)


def test_the_model_module_imports_no_data_reader():
    """deeplabv3plus.py, and all it imports from the library, reach neither the statistics' reader nor the data
    pipeline nor TFDS (read from the source: function-level imports included, but for the packages' `__init__`s,
    whose functions load their names on first use)."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    seen, todo = set(), ["difnet_jax.models.deeplabv3plus"]
    while todo:
        name = todo.pop()
        path = repo / (name.replace(".", "/") + ".py")
        path = path if path.exists() else repo / name.replace(".", "/") / "__init__.py"
        if name in seen or not path.exists():  # seen, or not a library module (a name in one, a third party)
            seen.add(name)
            continue
        seen.add(name)
        tree = ast.parse(path.read_text())
        for node in tree.body if path.name == "__init__.py" else ast.walk(tree):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    assert "difnet_jax.models.affinity" in seen and "difnet_jax.models.resnet" in seen  # the walk reads imports
    readers = sorted(n for n in seen if n == "difnet_jax.models.affinity_stats"
                     or n.startswith(("difnet_jax.data", "tensorflow_datasets", "grain")))
    assert not readers, readers


def _copied_data_dir(tiny_data_dir, tmp_path) -> str:
    """A private copy of the tiny prepared dataset: the statistics are written into it."""
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(tiny_data_dir, data_dir)
    return data_dir


def _tiny_labels(data_dir):
    from difnet_jax.data import pipeline

    return np.stack([np.asarray(e["label"])[..., 0] for e in pipeline.source(TINY, "train", data_dir)])


def test_statistics_are_counted_once_beside_the_dataset_not_in_the_working_directory(tiny_data_dir, tmp_path,
                                                                                    monkeypatch):
    data_dir = _copied_data_dir(tiny_data_dir, tmp_path)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    spec = (2, (2, 4))
    config = _model_config(affinity_rates=spec, affinity_weighting="none", affinity_stats_dataset=TINY,
                           affinity_stats_data_dir=data_dir)
    deeplabv3plus.check(config)
    model = deeplabv3plus.build(config, 4, FAMILIES["deeplabv3plus"].dataset_facts(config))  # counts, once
    path = affinity_stats.stats_path(TINY, data_dir)
    assert path.startswith(os.path.join(data_dir, "synthetic_shapes", "tiny")), path
    assert path.endswith(os.path.join("affinity_stats", "train.json")) and os.path.isfile(path)
    direct = affinity.count_neighbours(_tiny_labels(data_dir), affinity.expand_rates(spec))
    # weighting `none` too: the bias starts at pi_r, not 0.5
    np.testing.assert_allclose(model.affinity_bias_init, direct.positive_freq)
    assert 0.5 < min(model.affinity_bias_init) < 1.0
    assert list(workdir.iterdir()) == []  # nothing written to the working directory
    with open(path) as f:
        document = json.load(f)
    assert document["dataset"] == TINY and document["split"] == "train" and document["images"] == 48
    assert sorted(document["rates"]) == ["2,2", "2,4", "4,2"]

    def no_counting(*args, **kwargs):
        raise AssertionError("counted again")

    monkeypatch.setattr(affinity_stats, "count_split", no_counting)
    stored, same_path = affinity_stats.split_stats(TINY, data_dir, [(2, 4)])
    assert same_path == path and stored.counts.tolist() == direct.counts[1:2].tolist()


def test_stats_script_writes_the_datasets_file_or_one_of_its_own(tiny_data_dir, tmp_path):
    data_dir = _copied_data_dir(tiny_data_dir, tmp_path)
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"name": TINY, "data_dir": data_dir})
    config.model = _model_config(affinity_rates=(2, (2, 4)), affinity_stats_dataset=TINY,
                                 affinity_stats_data_dir=data_dir)
    path = stats_script.compute_and_save(config, paper_rates=False)
    assert path == affinity_stats.stats_path(TINY, data_dir)
    assert os.path.getsize(os.path.splitext(path)[0] + ".png") > 5_000  # Fig. 3
    with open(path) as f:
        document = json.load(f)
    assert sorted(document["rates"]) == ["2,2", "2,4", "4,2"] and document["images"] == 48
    direct = affinity.count_neighbours(_tiny_labels(data_dir), [(2, 4)])
    entry = document["rates"]["2,4"]
    assert entry["counts"] == direct.counts[0].tolist() and entry["pairs"] == int(direct.pairs[0])
    assert 0.5 < entry["pi"] < 1.0 and abs(sum(entry["freq"]) - 1) < 1e-9
    # a second run for other rates keeps the first run's entries
    config.model.deeplabv3plus.affinity_rates = (3,)
    stats_script.compute_and_save(config, paper_rates=False)
    with open(path) as f:
        document = json.load(f)
    assert sorted(document["rates"]) == ["2,2", "2,4", "3,3", "4,2"]
    # --output: a file of one's own, which a run reads through model.deeplabv3plus.affinity_stats
    own = str(tmp_path / "mine" / "stats.json")
    assert stats_script.compute_and_save(config, paper_rates=False, output=own) == own
    config.model.deeplabv3plus.affinity_stats = own
    deeplabv3plus.check(config.model)
    np.testing.assert_allclose(deeplabv3plus.build(config.model, 4, affinity_stats.dataset_facts(config.model)
                                                   ).affinity_bias_init,
                               [document["rates"]["3,3"]["pi"]])


def test_propagation_uses_the_familys_settings():
    from difnet_jax.evaluation import report

    config = _model_config(affinity_rates=(2,), propagation_lambda=3.0, propagation_mu=5.0, propagation_iterations=4)
    settings = FAMILIES["deeplabv3plus"].propagation(config)
    assert settings == affinity.Propagation(((2, 2),), 3.0, 5.0, 4)
    refinements = report.propagation_refinements(config, (2, "paper"), ("paper",))
    assert sorted(refinements) == ["oracle_T4", "propagate_T2", "propagate_T4"]
    keys = jax.random.split(jax.random.key(0), 3)
    probs = jax.nn.softmax(jax.random.normal(keys[0], (1, 12, 12, 3)))
    logits = jax.random.normal(keys[1], (1, 12, 12, 8))
    labels = jax.random.randint(keys[2], (1, 12, 12), 0, 3)
    np.testing.assert_allclose(
        refinements["propagate_T4"](probs, {"affinity_logits": logits}, None, labels),
        affinity.propagate(probs, affinity.steep_sigmoid(logits, 5.0), ((2, 2),), lam=3.0, iterations=4), atol=1e-6)
    np.testing.assert_allclose(
        refinements["oracle_T4"](probs, {}, None, labels),
        affinity.propagate(probs, affinity.ground_truth_affinity(labels, ((2, 2),)), ((2, 2),), lam=3.0,
                           iterations=4), atol=1e-6)


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
    facts = affinity_stats.dataset_facts(config)  # from the file `affinity_stats` names
    model = deeplabv3plus.build(config, 3, facts)
    # an rbg key: XLA compiles threefry over every parameter far more slowly on CPU
    (first_logits, first_outputs), variables = jax.jit(
        lambda x: model.init_with_output(jax.random.key(0, impl="rbg"), x, train=False))(batch["image"])
    # bias init: sigmoid(b_r) = pi_r from the stored statistics, so the first prediction is about pi_r
    pis = affinity.load_stats(path, affinity.expand_rates((4, (2, 6)))).positive_freq
    assert model.affinity_bias_init == tuple(pis) and 0.75 < min(pis) < max(pis) < 0.98
    bias = np.asarray(variables["params"]["affinity"]["bias"])
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), np.repeat(pis, 8), rtol=1e-5)
    first_affinity = np.asarray(jax.nn.sigmoid(first_outputs["affinity_logits"])).reshape(2, 49, 49, 3, 8)
    np.testing.assert_allclose(first_affinity.mean(axis=(0, 1, 2, 4)), pis, atol=0.05)  # not 1 - pi
    # the family's loss reduces as configured: the other reading is 8|R| = 24 times the default's term
    _, mean_terms = deeplabv3plus.loss((first_logits, first_outputs), batch, config, facts)
    _, sum_terms = deeplabv3plus.loss((first_logits, first_outputs), batch, _model_config(
        affinity_rates=(4, (2, 6)), affinity_stats=path, affinity_reduction="sum_over_pairs"), facts)
    np.testing.assert_allclose(sum_terms["affinity"], 24 * mean_terms["affinity"], rtol=1e-5)
    optimizer = optax.adam(3e-3)

    def loss_fn(params, batch_stats, key):
        outputs, state = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=True,
                                     mutable=["batch_stats"], rngs={"dropout": key})
        total, terms = deeplabv3plus.loss(outputs, batch, config, facts)
        return total, (terms, state["batch_stats"])

    @jax.jit
    def step(params, batch_stats, opt_state, key):
        (total, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, total, terms

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)
    history = []
    for i in range(40):
        params, batch_stats, opt_state, total, terms = step(params, batch_stats, opt_state, jax.random.key(i))
        history.append({k: float(v) for k, v in terms.items()} | {"total": float(total)})
    first, last = history[0], history[-1]
    assert set(first) == {"ce", "affinity", "total"}
    assert abs(first["total"] - (first["ce"] + 1.2 * first["affinity"])) < 1e-4
    assert all(np.isfinite(list(h.values())).all() for h in history)
    assert last["ce"] < 0.5 * first["ce"], (first, last)
    assert last["affinity"] < 0.7 * first["affinity"], (first, last)
