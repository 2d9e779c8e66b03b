"""PDN (papers/003): the diffused conv-LSTM module, the PDN models, their loss and the receptive-field tools."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from difnet_jax import losses
from difnet_jax.models import pdn
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.studies.receptive_field import model_scores, plot_receptive_fields, valid_receptive_field
from difnet_jax.user_errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _init(module, *args):
    """Variables from a jit-compiled init with an rbg key (XLA's bit generator: quick to compile on CPU)."""
    return jax.jit(module.init)(jax.random.key(1, impl="rbg"), *args)


def _module_params(neighbors, layers, d, **kwargs):
    module = pdn.DiffusionModule(neighbors, layers, **kwargs)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, d)))["params"]


# --- the module -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 7, 256])
def test_module_parameter_counts_at_four_layers_match_table_1(d):
    assert _count(_module_params(8, 4, d)) == 288 * d + 32 * d
    assert _count(_module_params(24, 4, d)) == 1200 * d + 48 * d


@pytest.mark.parametrize("neighbors,layers", [(8, 1), (8, 3), (24, 1), (24, 6), (48, 2)])
def test_module_parameter_counts_at_other_depths(neighbors, layers):
    rings, d = pdn.rings_of(neighbors), 5
    lstms, taps = rings + 1, 1 + 4 * rings * (rings + 1)  # centre + 8 + 16 + ... + 8E
    params = _module_params(neighbors, layers, d)
    assert _count(params) == layers * lstms * 4 * (taps + 1) * d
    assert sorted(params) == [f"layer{t + 1}" for t in range(layers)]
    layer = params["layer1"]
    assert layer["spatial1_ring1"].shape == (8, d, 4)
    assert layer[f"depth_ring{rings}"].shape == (8 * rings, d, 4)
    assert len(layer) == lstms * (rings + 2)  # centre, rings, bias per LSTM: nothing else
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))


def test_neighbor_counts_map_to_rings():
    assert [pdn.rings_of(n) for n in (8, 24, 48)] == [1, 2, 3]
    for bad in (0, 4, 9, 16, 25):
        with pytest.raises(ValueError):
            pdn.rings_of(bad)
    assert len(pdn.ring_offsets(2)) == 16 and np.abs(pdn.ring_offsets(2)).max(1).min() == 2


def test_ring_kernel_is_zero_off_the_ring():
    taps = jnp.arange(1, 16 * 3 * 2 + 1, dtype=jnp.float32).reshape(16, 3, 2)
    kernel = np.asarray(pdn.ring_kernel(taps, 2)).reshape(5, 5, 3, 2)
    rows, cols = np.mgrid[-2:3, -2:3]
    ring = np.maximum(np.abs(rows), np.abs(cols)) == 2
    assert np.all(kernel[ring] != 0) and np.all(kernel[~ring] == 0)
    assert sorted(kernel[ring].ravel().tolist()) == list(range(1, 97))  # every tap placed exactly once


def _layer_supports(layer, params, hidden, memory, site):
    """For each input group: where the new hidden maps at `site` have a nonzero gradient (boolean (H, W))."""

    def out_at_site(groups):
        new_hidden, new_memory = layer.apply({"params": params}, groups, memory)
        return sum(h[0, site[0], site[1]].sum() for h in new_hidden) + new_memory[0, site[0], site[1]].sum()

    grads = jax.jit(jax.grad(out_at_site))(hidden)
    return [np.asarray(jnp.abs(g[0]).sum(-1) > 0) for g in grads]


def test_ring_structure_holds_at_init_and_after_training_steps():
    """Spatial group e reaches a site only through the 8e cells at Chebyshev distance e; depth group only the site."""
    rings, d, size, site = 2, 3, 13, (6, 6)
    layer = pdn.DiffusedLSTMLayer(rings, init_std=0.3)
    keys = jax.random.split(jax.random.PRNGKey(0), rings + 2)
    hidden = [jax.random.normal(k, (1, size, size, d)) for k in keys[:rings + 1]]
    memory = jax.random.normal(keys[-1], (1, size, size, d, rings + 1))
    params = _init(layer, hidden, memory)["params"]
    rows, cols = np.mgrid[:size, :size]
    distance = np.maximum(np.abs(rows - site[0]), np.abs(cols - site[1]))

    def check(p):
        supports = _layer_supports(layer, p, hidden, memory, site)
        for e, support in enumerate(supports):
            np.testing.assert_array_equal(support, distance == e, err_msg=f"group {e}")

    check(params)
    target = jax.random.normal(jax.random.PRNGKey(7), (1, size, size, d))

    def loss_fn(p):
        new_hidden, _ = layer.apply({"params": p}, hidden, memory)
        return sum(jnp.mean((h - target) ** 2) for h in new_hidden)

    optimizer = optax.adam(0.05)
    opt_state = optimizer.init(params)
    step = jax.jit(lambda p, s: optimizer.update(jax.grad(loss_fn)(p), s, p))
    loss_fn = jax.jit(loss_fn)
    start = loss_fn(params)
    trained = params
    for _ in range(4):
        updates, opt_state = step(trained, opt_state)
        trained = optax.apply_updates(trained, updates)
    assert float(loss_fn(trained)) < float(start)
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), trained, params)
    assert min(jax.tree.leaves(moved)) > 1e-3  # every parameter (ring taps included) was trained
    check(trained)


@pytest.mark.parametrize("neighbors", [8, 24])
def test_module_receptive_field_is_the_square_of_radius_layers_times_rings(neighbors):
    """Layer t's depth map at a site depends on exactly the input square of radius t*E (4E for the module)."""
    rings, layers, d = pdn.rings_of(neighbors), 4, 2
    size = 2 * layers * rings + 5
    site = (size // 2, size // 2)
    module = pdn.DiffusionModule(neighbors, layers, init_std=0.3)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, d))
    variables = _init(module, x)
    rows, cols = np.mgrid[:size, :size]
    distance = np.maximum(np.abs(rows - site[0]), np.abs(cols - site[1]))
    at_site = lambda x: jnp.stack([h[0, site[0], site[1]].sum() for h in module.apply(variables, x)])
    jacobian = jax.jit(jax.jacrev(at_site))(x)  # (layers, 1, size, size, d)
    for t in range(layers):
        support = np.asarray(jnp.abs(jacobian[t, 0]).sum(-1) > 0)
        np.testing.assert_array_equal(support, distance <= (t + 1) * rings, err_msg=f"layer {t + 1}")


def test_patches_conv_and_shifted_implementations_agree():
    module = pdn.DiffusionModule(24, 2, init_std=0.2)
    assert module.impl == "patches"
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 6))
    variables = _init(module, x)
    grad = lambda m: jax.jit(jax.grad(lambda v: sum(jnp.sum(h ** 2) for h in m.apply(v, x))))(variables)
    reference, reference_grad = jax.jit(module.apply)(variables, x), grad(module)
    assert float(jnp.abs(reference[-1]).max()) > 1e-3
    for impl in ("conv", "shifted"):
        other = pdn.DiffusionModule(24, 2, init_std=0.2, impl=impl)
        for a, b in zip(jax.jit(other.apply)(variables, x), reference):
            np.testing.assert_allclose(a, b, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grad(other), reference_grad)


def test_module_outputs_and_first_layer_copies():
    d = 4
    module = pdn.DiffusionModule(8, 2, init_std=0.2)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 7, d))
    variables = _init(module, x)
    outs = jax.jit(module.apply)(variables, x)
    assert len(outs) == 2 and all(o.shape == (2, 6, 7, d) and o.dtype == jnp.float32 for o in outs)
    # Layer 1 by hand: every hidden group is x, memories are 0, so M = i*c and H = o*tanh(M).
    layer = pdn.DiffusedLSTMLayer(1, init_std=0.2)
    manual, memory = jax.jit(layer.apply)({"params": variables["params"]["layer1"]}, [x, x], jnp.zeros((2, 6, 7, d, 2)))
    np.testing.assert_allclose(outs[0], manual[0], atol=1e-6)
    p = variables["params"]["layer1"]
    pre = x[..., None] * p["depth_centre"] + p["depth_bias"]  # depth LSTM, gates (i, f, o, c) on the last axis
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    for tap, (dy, dx) in enumerate(pdn.ring_offsets(1)):
        pre = pre + padded[:, 1 + dy: 7 + dy, 1 + dx: 8 + dx, :, None] * p["depth_ring1"][tap]
    m = jax.nn.sigmoid(pre[..., 0]) * jnp.tanh(pre[..., 3])
    np.testing.assert_allclose(memory[..., 0], m, atol=1e-6)
    np.testing.assert_allclose(outs[0], jax.nn.sigmoid(pre[..., 2]) * jnp.tanh(m), atol=1e-6)


def test_module_computes_in_bfloat16_with_float32_params():
    module = pdn.DiffusionModule(24, 2, dtype=jnp.bfloat16, init_std=0.2)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 4))
    variables = _init(module, x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    outs = jax.jit(module.apply)(variables, x)
    reference = jax.jit(pdn.DiffusionModule(24, 2, init_std=0.2).apply)(variables, x)
    assert all(o.dtype == jnp.bfloat16 for o in outs)
    np.testing.assert_allclose(np.asarray(outs[-1], np.float32), reference[-1], atol=3e-2)


_SHARDING_SCRIPT = """
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
import jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from difnet_jax.models import pdn
assert jax.device_count() == 4, jax.devices()
module = pdn.DiffusionModule(24, 2, init_std=0.2)
x = jax.random.normal(jax.random.PRNGKey(0), (8, 9, 9, 4))
variables = module.init(jax.random.PRNGKey(1), x)
loss = lambda v, x: sum(jnp.mean(h ** 2) for h in module.apply(v, x))
reference = jax.jit(module.apply)(variables, x)
reference_grad = jax.jit(jax.grad(loss))(variables, x)
mesh = Mesh(np.array(jax.devices()), ("data",))
batch = NamedSharding(mesh, P("data")); replicated = NamedSharding(mesh, P())
xs, vs = jax.device_put(x, batch), jax.device_put(variables, replicated)
outs = jax.jit(module.apply, in_shardings=(replicated, batch), out_shardings=batch)(vs, xs)
grads = jax.jit(jax.grad(loss), in_shardings=(replicated, batch), out_shardings=replicated)(vs, xs)
print(json.dumps({
    "out_diff": max(float(jnp.abs(a - b).max()) for a, b in zip(outs, reference)),
    "grad_diff": max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grads, reference_grad))),
    "shards": len(outs[-1].addressable_shards), "shard_batch": outs[-1].addressable_shards[0].data.shape[0],
}))
"""


def test_module_under_jit_with_batch_sharding_over_simulated_devices():
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _SHARDING_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shards"] == 4 and report["shard_batch"] == 2, report
    assert report["out_diff"] < 1e-6 and report["grad_diff"] < 1e-6, report


# --- the PDN models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_pdn_shapes_for_every_depth_with_one_and_two_modules(depth):
    K, size, grid = 7, 65, 9
    for modules in (1, 2):
        model = pdn.PDN(K, depth=depth, num_modules=modules)
        images = jnp.zeros((2, size, size, 3))
        # One trace: init's own forward pass is the eval-mode output
        (logits, intermediates), variables = jax.eval_shape(
            lambda x, m=model: m.init_with_output(jax.random.PRNGKey(0), x, train=False), images)
        assert logits.shape == (2, size, size, K) and logits.dtype == jnp.float32
        assert intermediates["score_map"].shape == (2, grid, grid, K)
        assert len(intermediates["layer_logits"]) == 4 * modules
        assert all(z.shape == (2, grid, grid, K) and z.dtype == jnp.float32 for z in intermediates["layer_logits"])
        sites = pdn.module_sites(depth, modules)
        assert sorted(variables["params"]) == sorted(["backbone", "aspp", *(f"diffusion_{s}" for s in sites)])
        for site in sites:
            assert _count(variables["params"][f"diffusion_{site}"]["module"]) == 1248 * 256
    assert pdn.module_sites(101, 2) == ("layer3_22", "layer4_1")
    assert pdn.module_sites(18, 1) == ("layer4_0",) and pdn.module_sites(18, 2) == ("layer3_1", "layer4_0")


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_module_sits_between_the_last_two_blocks_of_layer4(depth):
    """Perturbing only the module's parameters changes the output of exactly one layer4 block, the last."""
    from difnet_jax.models.resnet import STAGE_SIZES, BasicBlock, Bottleneck

    model = pdn.PDN(3, depth=depth, width=4, neighbors=8, d=4, aspp_rates=(1,))
    images = jax.random.normal(jax.random.PRNGKey(0), (1, 17, 17, 3))
    # Random values of the right shapes without compiling an init (one compilation per depth: the forward).
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(lambda v: np.abs(v) + 0.5, variables["batch_stats"])
    (site,) = [name for name in variables["params"] if name.startswith("diffusion_")]
    perturbed = {**variables, "params": {**variables["params"], site: jax.tree.map(
        lambda p: p + 0.5, variables["params"][site])}}

    @jax.jit
    def layer4_blocks(v):
        _, state = model.apply(v, images, train=False, mutable=["intermediates"],
                               capture_intermediates=lambda m, method: isinstance(m, (BasicBlock, Bottleneck)))
        return {name: out["__call__"][0] for name, out in state["intermediates"]["backbone"].items()
                if name.startswith("layer4_")}

    before, after = layer4_blocks(variables), layer4_blocks(perturbed)
    blocks = STAGE_SIZES[depth][3]
    assert sorted(before) == [f"layer4_{i}" for i in range(blocks)]
    changed = [i for i in range(blocks) if not np.array_equal(before[f"layer4_{i}"], after[f"layer4_{i}"])]
    assert changed == [blocks - 1], (depth, site, changed)
    assert site == f"diffusion_layer4_{blocks - 2}"


def _tiny_pdn(modules=1, neighbors=8, K=4):
    return pdn.PDN(K, depth=18, width=4, neighbors=neighbors, num_modules=modules, d=6, aspp_rates=(1, 2))


@pytest.fixture(scope="module")
def tiny_variables():
    """Variables of the tiny 2M PDN, initialised once; the 1M model's are the same less `diffusion_layer3_1`.

    An rbg key: XLA's bit generator compiles in a fraction of threefry's time on CPU.
    """
    model = _tiny_pdn(modules=2)
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(_batch()["image"])
    one = {**variables, "params": {k: v for k, v in variables["params"].items() if k != "diffusion_layer3_1"}}
    return {2: variables, 1: one}


def _batch(K=4, size=33, n=2, seed=0):
    """Learnable synthetic batch: the label is the quadrant's class, the image carries it as colour."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    base = (rows >= size // 2).astype(np.int32) * 2 + (cols >= size // 2)
    labels = np.stack([(base + i) % K for i in range(n)]).astype(np.int32)
    labels[:, :2] = 255  # void rows take part in no term
    colours = rng.normal(size=(K, 3)).astype(np.float32)
    images = colours[np.where(labels == 255, 0, labels)] + 0.1 * rng.normal(size=(n, size, size, 3))
    return {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}


def _model_cfg(weight=1.0, modules=1):
    cfg = ml_collections.ConfigDict({"name": "pdn", "depth": 18, "width": 4, "aspp_rates": (1, 2),
                                     "dtype": "float32", "backbone_init": "", "frozen_backbone_bn": False})
    cfg.pdn = pdn.defaults()
    cfg.pdn.layer_loss_weight = weight
    cfg.pdn.modules = modules
    return cfg


def test_loss_counts_each_term_once_and_weight_zero_removes_the_layer_terms(tiny_variables):
    model, batch, variables = _tiny_pdn(modules=2), _batch(), tiny_variables[2]
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["image"])
    total, terms = pdn.loss(outputs, batch, _model_cfg(0.5, modules=2), {})
    assert sorted(terms) == sorted(["ce", *(f"layer{t}_ce" for t in range(1, 9))])
    np.testing.assert_allclose(terms["ce"], losses.cross_entropy(outputs[0], batch["label"]), rtol=1e-6)
    for t, layer in enumerate(outputs[1]["layer_logits"], start=1):
        expected = losses.cross_entropy(resize_bilinear(layer, (33, 33)), batch["label"])
        np.testing.assert_allclose(terms[f"layer{t}_ce"], expected, rtol=1e-6)
    layer_sum = sum(float(terms[f"layer{t}_ce"]) for t in range(1, 9))
    assert layer_sum > 8 * 0.5  # real cross-entropies, not zeros
    np.testing.assert_allclose(float(total), float(terms["ce"]) + 0.5 * layer_sum, rtol=1e-6)

    one_module, one_variables = _tiny_pdn(modules=1), tiny_variables[1]

    def grads(params):  # weights 0 and 1 in one compilation, on the 1M model
        outputs = lambda p: one_module.apply({**one_variables, "params": p}, batch["image"], train=False)
        return [jax.grad(lambda p, w=w: pdn.loss(outputs(p), batch, _model_cfg(w), {})[0])(params) for w in (0.0, 1.0)]

    zero, one = jax.jit(grads)(one_variables["params"])
    max_abs = lambda tree: max(float(jnp.abs(a).max()) for a in jax.tree.leaves(tree))
    for t in range(1, 5):  # each intermediate classifier feeds nothing but its own term
        assert max_abs(zero["diffusion_layer4_0"][f"classifier{t}"]) == 0.0
        assert max_abs(one["diffusion_layer4_0"][f"classifier{t}"]) > 0.0
    # The final head sees only the final cross-entropy; the backbone below the module sees both (the
    # layer terms' share is small at the paper's N(0, 0.01) init, but ~100x above float32 rounding).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), zero["aspp"], one["aspp"])
    layer_part = jax.tree.map(lambda a, b: a - b, one["backbone"]["layer3_1"], zero["backbone"]["layer3_1"])
    assert max_abs(layer_part) > 1e-5 * max_abs(zero["backbone"]["layer3_1"])

def test_short_training_lowers_every_loss_term(tiny_variables):
    model, batch, cfg, variables = _tiny_pdn(), _batch(), _model_cfg(1.0), tiny_variables[1]
    optimizer = optax.adam(1e-2)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state):
        def fn(p):
            outputs, updates = model.apply({"params": p, "batch_stats": batch_stats}, batch["image"], train=True,
                                           mutable=["batch_stats"])
            total, terms = pdn.loss(outputs, batch, cfg, {})
            return total, (terms, updates["batch_stats"])

        (_, (terms, new_stats)), grads = jax.value_and_grad(fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, terms

    history = []
    for _ in range(40):
        params, batch_stats, opt_state, terms = step(params, batch_stats, opt_state)
        history.append({k: float(v) for k, v in terms.items()})
    first, last = history[0], history[-1]
    assert sorted(first) == ["ce", "layer1_ce", "layer2_ce", "layer3_ce", "layer4_ce"]
    for name in first:
        assert np.isfinite(last[name]) and last[name] < 0.7 * first[name], (name, first[name], last[name])


# --- the family entry points ------------------------------------------------------------------------------


def test_family_defaults_check_build_backbones_and_extra_predictions():
    cfg = _model_cfg()
    assert dict(pdn.defaults()) == {"neighbors": 24, "modules": 1, "d": 256, "layer_loss_weight": 1.0,
                                    "impl": "patches", "init": "caffe_std", "reduction": "conv"}
    pdn.check(cfg)
    for key, bad in (("neighbors", 12), ("neighbors", 0), ("modules", 3), ("d", 0), ("d", 2.5),
                     ("layer_loss_weight", -1.0), ("layer_loss_weight", True), ("impl", "fft"), ("init", "xavier"),
                     ("reduction", "bn")):
        broken = _model_cfg()
        broken.pdn = ml_collections.ConfigDict({**pdn.defaults().to_dict(), key: bad})
        with pytest.raises(ConfigError, match=f"model.pdn.{key}"):
            pdn.check(broken)
    # read once per config value (check, build and loss share it); a config saved before `impl` reads "patches"
    assert pdn.settings(cfg) is pdn.settings(ml_collections.ConfigDict(cfg.to_dict()))
    old = ml_collections.ConfigDict(cfg.to_dict())
    for key in ("impl", "init", "reduction"):
        del old.pdn[key]
    assert pdn.settings(old) == pdn.Settings(24, 1, 256, 1.0, "patches", "caffe_std", "conv")
    built = pdn.build(old, 5, {})
    assert (built.impl, built.init_std, built.reduction) == ("patches", 0.01, "conv")
    cfg.pdn.update(neighbors=8, modules=2, d=16, impl="conv")
    model = pdn.build(cfg, 5, {})
    assert (model.neighbors, model.num_modules, model.d, model.depth, model.width) == (8, 2, 16, 18, 4)
    assert model.impl == "conv"
    assert model.dtype == np.float32 and not model.frozen_bn
    cfg.update(dtype="bfloat16", frozen_backbone_bn=True)
    assert pdn.build(cfg, 5, {}).dtype == jnp.bfloat16 and not pdn.build(cfg, 5, {}).frozen_bn  # nothing pretrained
    cfg.backbone_init = "imagenet"
    assert pdn.build(cfg, 5, {}).frozen_bn
    assert pdn.backbones(cfg) == ("backbone",) == pdn.PDN.backbones
    layers = tuple(jnp.full((1, 3, 3, 5), t, jnp.float32) for t in range(8))
    extra = pdn.extra_predictions({"score_map": layers[0], "layer_logits": layers})
    assert list(extra) == [f"layer{t}" for t in range(1, 9)]
    assert all(float(extra[f"layer{t}"][0, 0, 0, 0]) == t - 1 for t in range(1, 9))


@pytest.mark.parametrize("reading,std", [("caffe_std", 0.01), ("literal_variance", 0.1)])
def test_both_readings_of_the_init_give_their_std(reading, std):
    """Sec. 4's "Gaussian ... with the mean 0 and the variance 0.01": the diffusion layers' weights have the reading's
    empirical std (and mean 0), through the config key and the family's build; biases start at 0."""
    cfg = _model_cfg()
    cfg.pdn.update(init=reading, d=64)
    model = pdn.build(cfg, 5, {})
    assert model.init_std == std
    module = pdn.DiffusionModule(24, 4, init_std=model.init_std)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 3, 64)))["params"]
    weights = np.concatenate([np.ravel(v) for layer in params.values() for k, v in layer.items() if "bias" not in k])
    biases = np.concatenate([np.ravel(v) for layer in params.values() for k, v in layer.items() if "bias" in k])
    assert weights.size == 1200 * 64  # Table 1's 1200d weights
    assert abs(weights.std() / std - 1) < 0.02 and abs(weights.mean()) < 0.02 * std
    assert not biases.any()


def test_normalised_reduction_is_an_option_that_centres_the_module_input():
    """model.pdn.reduction=conv_bn (a labelled option, not the paper's) puts BatchNorm after the 1x1 reduction: in
    training the module's input has zero mean per channel even when the features are post-ReLU (all positive)."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 5, 8)) + 1.0  # positive, like post-ReLU features
    for reduction, centred in (("conv", False), ("conv_bn", True)):
        block = pdn.DiffusionBlock(3, neighbors=8, d=6, num_layers=1, reduction=reduction)
        variables = block.init(jax.random.PRNGKey(1), x, train=False)
        assert ("reduce_bn" in variables["params"]) == centred
        _, state = block.apply(variables, x, train=True, capture_intermediates=True,
                               mutable=["intermediates", "batch_stats"])
        inputs = state["intermediates"]["reduce_bn" if centred else "reduce"]["__call__"][0]
        offset = float(np.abs(np.asarray(inputs).mean(axis=(0, 1, 2))).max())
        assert (offset < 1e-4) == centred


# --- valid receptive field --------------------------------------------------------------------------------


def test_valid_receptive_field_has_the_module_support_and_plots(tmp_path, tiny_variables):
    module = pdn.DiffusionModule(8, 2, init_std=0.3)
    image = jax.random.normal(jax.random.PRNGKey(0), (15, 15, 3))
    variables = _init(module, image[None])
    apply_fn = lambda x: module.apply(variables, x)[-1]  # (1, h, w, 3) "scores"
    field = valid_receptive_field(apply_fn, image, (7, 7))
    assert field.shape == (15, 15) and field.dtype == np.float32
    rows, cols = np.mgrid[:15, :15]
    np.testing.assert_array_equal(field > 0, np.maximum(np.abs(rows - 7), np.abs(cols - 7)) <= 2)
    # The argmax class's score: the same as differentiating that channel by hand.
    k = int(jnp.argmax(apply_fn(image[None])[0, 7, 7]))
    grad = jax.grad(lambda x: apply_fn(x[None])[0, 7, 7, k])(image)
    np.testing.assert_allclose(field, np.abs(np.asarray(grad)).sum(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        valid_receptive_field(apply_fn, image, (15, 0))

    model, batch, pdn_variables = _tiny_pdn(), _batch(size=33, n=1), tiny_variables[1]
    pdn_field = valid_receptive_field(model_scores(model, pdn_variables), batch["image"][0], (2, 2))
    assert pdn_field.shape == (33, 33) and pdn_field.max() > 0
    path = plot_receptive_fields({"module": field, "PDN-18 8NB": pdn_field[:15, :15]}, str(tmp_path / "vrf.png"),
                                 image=np.full((15, 15, 3), 128.0), point=(7, 7))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 1000
