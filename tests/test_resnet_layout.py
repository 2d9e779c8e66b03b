"""The DifNet authors' ResNet layout and input (issue 19, item 2) beside torchvision's; old runs load as they ran.

Each difference of github sdujump/DifNet's model_difnet.py / dataset.py is shown by a small forward: which pixels a
block's output depends on (the dilation of each conv, where a Bottleneck's stride sits), the feature grid of a
128 input (the stem max-pool's ceil_mode), and the input normalisation of a known pixel.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax import checkpointing, config_compat, trained_run
from difnet_jax.config_checks import ConfigError, check_config
from difnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from difnet_jax.data import normalization, pipeline
from difnet_jax.data.normalization import CAFFE_BGR, IMAGENET
from difnet_jax.evaluation import evaluator, report
from difnet_jax.models import build_model, resnet
from difnet_jax.models.resnet import BasicBlock, Bottleneck, ResNet
from experiments.configs import voc

LAYOUTS = ("torchvision", "difnet_authors")
KEY = jax.random.PRNGKey(0)


def _eval_norm():
    return lambda **kwargs: nn.BatchNorm(use_running_average=True, **kwargs)


@pytest.mark.parametrize("depth", sorted(resnet.STAGE_SIZES))
def test_both_layouts_have_the_same_parameters(depth):
    """Same names and shapes (so the same counts, and torchvision's state dicts map onto both)."""
    shapes = {}
    for layout in LAYOUTS:
        model = ResNet(depth, width=8, layout=layout)
        variables = jax.eval_shape(lambda m=model: m.init(KEY, jnp.zeros((1, 33, 33, 3)), train=False))
        shapes[layout] = jax.tree.map(lambda leaf: leaf.shape, variables)
    assert shapes["torchvision"] == shapes["difnet_authors"]
    count = sum(int(np.prod(s)) for s in jax.tree.leaves(shapes["torchvision"]["params"],
                                                          is_leaf=lambda x: isinstance(x, tuple)))
    assert count > 0


def _positive(variables):
    """Kernels made positive: with a positive input every ReLU is active, so gradients show the full support."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.abs(x) + 0.01 if "kernel" in str(path[-1]) else x, variables)


def _support(fn, x, centre):
    """Offsets (dy, dx) from `centre` of the input pixels that fn(x)[0, centre] depends on."""
    grad = jax.grad(lambda x: fn(x)[0, centre, centre].sum())(x)
    rows, cols = np.nonzero(np.abs(np.asarray(grad)[0]).sum(-1))
    return {(int(r) - centre, int(c) - centre) for r, c in zip(rows, cols)}


def _square(offsets_1d):
    return {(a, b) for a in offsets_1d for b in offsets_1d}


def _sum(a, b):
    return {(p + r, q + s) for p, q in a for r, s in b}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_basic_block_dilates_both_convs_or_only_the_second(layout):
    """A BasicBlock at dilation 4: torchvision dilates conv1 and conv2; the authors conv2 only (conv1 keeps 1)."""
    block = BasicBlock(4, dilation=4, norm=_eval_norm(), layout=layout)
    x = jnp.ones((1, 25, 25, 4))
    variables = _positive(block.init(KEY, x))

    def conv1_output(x):
        _, state = block.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return state["intermediates"]["conv1"]["__call__"][0]

    conv1 = _support(conv1_output, x, 12)
    whole = _support(lambda x: block.apply(variables, x), x, 12)
    first = 4 if layout == "torchvision" else 1
    assert conv1 == _square((-first, 0, first))
    # The block: conv1's support widened by conv2 at dilation 4 (and the identity shortcut's own pixel).
    assert whole == _sum(conv1, _square((-4, 0, 4))) | {(0, 0)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bottleneck_strides_on_the_3x3_or_on_the_first_1x1(layout):
    """A strided Bottleneck: in the authors' (Caffe) layout the first 1x1 conv already halves the grid, so the
    block never reads its input's odd rows and columns; torchvision's 3x3 stride reads them."""
    block = Bottleneck(2, stride=2, project=True, norm=_eval_norm(), layout=layout)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 9, 9, 8))
    variables = block.init(KEY, x)
    out, state = block.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    conv1 = state["intermediates"]["conv1"]["__call__"][0]
    assert out.shape == (1, 5, 5, 8)
    assert conv1.shape == ((1, 9, 9, 2) if layout == "torchvision" else (1, 5, 5, 2))
    odd = np.zeros(x.shape, bool)
    odd[:, 1::2] = odd[:, :, 1::2] = True
    changed = block.apply(variables, jnp.where(odd, x + 5.0, x))
    assert np.array_equal(np.asarray(changed), np.asarray(out)) == (layout == "difnet_authors")


@pytest.mark.parametrize("depth", [18, 50])
def test_grid_of_a_128_input_and_equality_at_8k_plus_1(depth):
    """The stem max-pool rounds up in the authors' layout: 128 -> 17x17 there, 16x16 in torchvision's; at 8k + 1
    sizes (the evaluator's canvases, the configs' crops) both give (size - 1) / 8 + 1."""
    def grid(layout, size):
        model = ResNet(depth, width=8, layout=layout)
        features = jax.eval_shape(lambda: model.init_with_output(KEY, jnp.zeros((1, size, size, 3)), train=False)[0])
        return {name: f.shape[1:3] for name, f in features.items()}

    assert grid("torchvision", 128)["layer4"] == (16, 16)
    assert grid("difnet_authors", 128)["layer4"] == (17, 17)
    assert grid("torchvision", 128)["stem"] == grid("difnet_authors", 128)["stem"] == (64, 64)
    for size in (97, 129):
        assert grid("torchvision", size) == grid("difnet_authors", size)
        assert grid("difnet_authors", size)["layer4"] == ((size - 1) // 8 + 1,) * 2
        assert evaluator.network_size(size) == size


@pytest.mark.parametrize("size", [6, 7, 8])
def test_ceil_mode_max_pool_is_pytorchs(size):
    """PyTorch's MaxPool2d(3, 2, 1, ceil_mode=True): ceil((s - 1) / 2) + 1 windows, the last starting inside the
    image, padding never the maximum; without ceil_mode (s - 1) // 2 + 1."""
    x = jax.random.normal(jax.random.PRNGKey(2), (1, size, size, 1))
    padded = np.pad(np.asarray(x)[0, ..., 0], 1, constant_values=-np.inf)
    for ceil_mode in (False, True):
        count = -(-(size - 1) // 2) + 1 if ceil_mode else (size - 1) // 2 + 1
        if ceil_mode and (count - 1) * 2 >= size + 1:
            count -= 1
        expected = np.array([[padded[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max() for j in range(count)]
                             for i in range(count)])
        np.testing.assert_array_equal(np.asarray(resnet._stem_max_pool(x, ceil_mode))[0, ..., 0], expected)


def _resnet_layouts(model, size=33):
    """The `layout` of every ResNet the model runs (intercepted while it initialises)."""
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, ResNet) and context.method_name == "__call__":
            seen.append(context.module.layout)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, size, size, 3)), train=False))
    return seen


@pytest.mark.parametrize("variant,backbones", [("difnet18", 2), ("simdeeplab18", 1), ("pdn18_8nb_1m", 1),
                                               ("deeplabv3plus18", 1)])
def test_every_family_passes_the_layout_to_its_resnets(variant, backbones):
    config = voc.get_config(variant + ",synthetic")
    config.model.width = 8
    for layout in LAYOUTS:
        config.model.resnet_layout = layout
        assert _resnet_layouts(build_model(config.model, 5)) == [layout] * backbones


@pytest.mark.parametrize("variant", ["difnet18", "difnet101", "difnet50_noaspp", "difnet50_no24", "simdeeplab18",
                                     "simdeeplab101", "pdn50_24nb_1m", "deeplabv3plus101_affinity"])
def test_configs_use_the_authors_network_for_the_difnet_papers_variants_from_scratch(variant):
    authors = variant.startswith(("difnet", "simdeeplab"))
    for modifiers in ("", ",synthetic"):
        config = voc.get_config(variant + modifiers)
        assert (config.model.resnet_layout, config.data.normalization) == (
            ("difnet_authors", "caffe_bgr") if authors else ("torchvision", "imagenet")), modifiers
    for modifiers in (",imagenet", ",synthetic,imagenet"):  # torchvision's weights: their layout and input
        config = voc.get_config(variant + modifiers)
        assert (config.model.resnet_layout, config.data.normalization) == ("torchvision", "imagenet"), modifiers


def test_caffe_bgr_is_the_authors_input_and_imagenet_the_pipelines():
    pixel = np.array([[[200, 100, 50]]], np.uint8)  # R, G, B
    expected = np.array([50 - 104.00698793, 100 - 116.66876762, 200 - 122.67891434], np.float32)  # B, G, R
    np.testing.assert_allclose(CAFFE_BGR.apply(pixel)[0, 0], expected, rtol=0, atol=1e-5)
    image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    for norm in (IMAGENET, CAFFE_BGR):  # the table lookup is the arithmetic, exactly; invert undoes it
        np.testing.assert_array_equal(norm.apply(image), norm.apply(image.astype(np.float32)))
        np.testing.assert_array_equal(pipeline.normalize(image, norm), norm.apply(image))
        np.testing.assert_allclose(norm.invert(norm.apply(image)), image, atol=1e-4)
        np.testing.assert_array_equal(report.unnormalize(norm.apply(image), norm), norm.invert(norm.apply(image)))
    # imagenet is what the pipeline always did, to the bit
    np.testing.assert_array_equal(pipeline.normalize(image, IMAGENET),
                                  (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD)
    assert IMAGENET.fill == tuple(int(v) for v in IMAGENET_MEAN.round())
    assert normalization.of_config(voc.get_config("difnet18").data) is CAFFE_BGR


@pytest.mark.parametrize("norm", [IMAGENET, CAFFE_BGR])
def test_fill_is_the_colour_that_normalises_nearest_to_zero(norm):
    fill = np.array(norm.fill, np.int16)
    values = np.abs(norm.apply(fill.astype(np.uint8)[None, None])[0, 0])
    assert np.all(values <= 0.5 / np.asarray(norm.std) + 1e-6)
    for step in (-1, 1):  # any other grey level of a channel lands farther from 0
        assert np.all(np.abs(norm.apply((fill + step).astype(np.uint8)[None, None])[0, 0]) > values)
    image = np.full((3, 4, 3), 7, np.uint8)
    padded, label = pipeline.pad_to(image, np.zeros((3, 4), np.uint8), 5, 6, norm)
    assert (padded[3:] == norm.fill).all() and (padded[:, 4:] == norm.fill).all() and (label[3:] == 255).all()


def test_evaluation_batches_use_the_configs_normalization(tiny_data_dir):
    from tests.helpers import tiny_config

    config = tiny_config(tiny_data_dir)  # difnet18,synthetic: the authors' input
    options = evaluator.EvalOptions.from_config(config.data)
    assert options.normalization is CAFFE_BGR
    source = pipeline.source(config.data.name, "validation", config.data.data_dir)
    batch = next(evaluator.eval_batches_with_sizes(source, batch_size=1, options=options))
    image, _ = pipeline.pad_to(source[0]["image"], np.zeros(source[0]["image"].shape[:2], np.uint8),
                               *options.canvas([source[0]["image"].shape[:2]]), CAFFE_BGR)
    np.testing.assert_array_equal(batch["image"][0], CAFFE_BGR.apply(image))


def _old_config_json(tmp_path, arg="difnet18,synthetic") -> None:
    """config.json as runs wrote it before the two keys existed."""
    saved = json.loads(voc.get_config(arg).to_json_best_effort())
    del saved["model"]["resnet_layout"], saved["data"]["normalization"]
    (tmp_path / "config.json").write_text(json.dumps(saved))


def test_old_config_json_loads_as_it_ran(tmp_path):
    """A run saved before the keys was torchvision's network on ImageNet-normalised input, even where today's
    defaults for its arg (filled in by run_config) say otherwise; resuming it with today's config is refused."""
    _old_config_json(tmp_path)
    assert voc.get_config("difnet18,synthetic").model.resnet_layout == "difnet_authors"
    for defaults in (None, voc.get_config("difnet18,synthetic")):
        config = trained_run.load_config(str(tmp_path), defaults=defaults)
        assert (config.model.resnet_layout, config.data.normalization) == ("torchvision", "imagenet")
        check_config(config)
        assert evaluator.EvalOptions.from_config(config.data).normalization is IMAGENET
        assert _resnet_layouts(build_model(config.model, 5)) == ["torchvision"] * 2
    with pytest.raises(ValueError, match="model.resnet_layout: 'torchvision' -> 'difnet_authors'"):
        checkpointing.check_resume_config(str(tmp_path), voc.get_config("difnet18,synthetic"))
    current = json.loads(voc.get_config("difnet18").to_json_best_effort())
    assert config_compat.upgrade_saved(current) == current  # a file with the keys keeps its values


def test_config_checks_name_the_new_keys(tmp_path):
    config = voc.get_config("difnet18,synthetic")
    config.model.resnet_layout = "caffe"
    with pytest.raises(ConfigError, match=r"config.model.resnet_layout='caffe' is invalid: expected one of "
                                          r"\('torchvision', 'difnet_authors'\)"):
        check_config(config)
    config = voc.get_config("difnet18,synthetic")
    config.data.normalization = "bgr"
    with pytest.raises(ConfigError, match=r"config.data.normalization='bgr' is invalid: expected one of "
                                          r"\('imagenet', 'caffe_bgr'\)"):
        check_config(config)
    # torchvision's weights go into torchvision's layout with ImageNet's input, nowhere else
    weights = tmp_path / "resnet18.npz"
    weights.write_bytes(b"")
    config = voc.get_config("difnet18,synthetic,imagenet")
    config.model.backbone_init = str(weights)
    check_config(config)
    config.model.resnet_layout = "difnet_authors"
    with pytest.raises(ConfigError, match="config.model.resnet_layout='difnet_authors' is invalid: expected "
                                          "'torchvision' with model.backbone_init="):
        check_config(config)
    config.model.resnet_layout = "torchvision"
    config.data.normalization = "caffe_bgr"
    with pytest.raises(ConfigError, match="config.data.normalization='caffe_bgr' is invalid: expected 'imagenet' "
                                          "with model.backbone_init="):
        check_config(config)


def test_authors_upsampling_is_pytorchs_half_pixel_bilinear():
    """The authors' main.py upsamples the logits with F.interpolate(..., align_corners=False): PyTorch's values on
    2 -> 4 and 5 -> 2 (source (i + 0.5) * in / out - 0.5, clamped at 0), and jax.image.resize's half-pixel bilinear
    when upsampling; align_corners=True keeps DeepLab's corners."""
    from difnet_jax.models.resize import resize_bilinear

    column = lambda values: jnp.asarray(values, jnp.float32).reshape(1, -1, 1, 1)  # noqa: E731
    np.testing.assert_allclose(resize_bilinear(column([0.0, 4.0]), (4, 1), align_corners=False).ravel(),
                               [0.0, 1.0, 3.0, 4.0])
    np.testing.assert_allclose(resize_bilinear(column(np.arange(5.0)), (2, 1), align_corners=False).ravel(),
                               [0.75, 3.25])
    np.testing.assert_allclose(resize_bilinear(column([0.0, 4.0]), (4, 1)).ravel(), [0.0, 4 / 3, 8 / 3, 4.0],
                               rtol=1e-6)
    x = jax.random.normal(KEY, (2, 11, 7, 3))
    np.testing.assert_allclose(resize_bilinear(x, (81, 49), align_corners=False),
                               jax.image.resize(x, (2, 81, 49, 3), "bilinear", antialias=False), atol=1e-5)


def test_the_authors_network_variants_upsample_as_the_authors_and_old_runs_load_as_they_ran(tmp_path):
    """difnet*/simdeeplab* run the authors' network, so their logits use half-pixel centres; fine-tuning from
    torchvision's weights (and every other family) keeps aligned corners; a config.json saved before the key
    ran with aligned corners and loads so; the Sim-DeepLab forward really upsamples that way."""
    for arg, upsampling in (("difnet18,synthetic", "half_pixel"), ("simdeeplab18,synthetic", "half_pixel"),
                            ("difnet18,synthetic,pretrained", "align_corners"),
                            ("pdn18_24nb_1m,synthetic,pretrained", "align_corners"), ("difnet18", "half_pixel")):
        config = voc.get_config(arg)
        assert config.model.logits_upsampling == upsampling, arg
        model = build_model(config.model, 5)
        if config.model.name in ("difnet", "simdeeplab"):
            assert model.align_corners == (upsampling == "align_corners"), arg
    config = voc.get_config("simdeeplab18,synthetic")
    config.model.width = 4
    model = build_model(config.model, 5)
    x = jax.random.normal(KEY, (1, 33, 33, 3))
    variables = model.init(KEY, x, train=False)
    logits, intermediates = model.apply(variables, x, train=False)
    from difnet_jax.models.resize import resize_bilinear
    np.testing.assert_allclose(logits, resize_bilinear(intermediates["score_map"], (33, 33), align_corners=False),
                               atol=1e-5)
    saved = json.loads(voc.get_config("difnet18,synthetic").to_json_best_effort())
    del saved["model"]["logits_upsampling"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = trained_run.load_config(str(tmp_path))
    assert loaded.model.logits_upsampling == "align_corners"
    assert build_model(loaded.model, 5).align_corners
    config.model.logits_upsampling = "nearest"
    with pytest.raises(ConfigError, match="config.model.logits_upsampling='nearest'"):
        check_config(config)
