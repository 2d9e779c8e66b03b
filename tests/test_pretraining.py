"""The synthetic "ImageNet": its classification data, the pretraining's weights, `VARIANT,synthetic,pretrained`."""

import colorsys
import json
import os
import pathlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from difnet_jax import optimizer
from difnet_jax.backbone_weights import loading, pretraining
from difnet_jax.config_checks import check_config
from difnet_jax.data import shapes
from difnet_jax.data.synthetic_classes import CLASS_NAMES
from difnet_jax.train import Trainer
from difnet_jax.user_errors import ConfigError
from experiments.configs.voc import get_config
from tests.helpers import tiny_config

TINY_CLASSES = "synthetic_classes/tiny"
WIDTH = 8


def _hue(rgb: np.ndarray, around_red: bool) -> float:
    """The median hue of uint8 RGB pixels, in [0, 1) or, `around_red`, in [-0.5, 0.5)."""
    hues = np.array([colorsys.rgb_to_hsv(*(p / 255.0))[0] for p in rgb])
    return float(np.median((hues + 0.5) % 1.0 - 0.5 if around_red else hues))


@pytest.fixture(scope="module")
def classes_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("classes"))
    pretraining.prepare(TINY_CLASSES, data_dir)
    return data_dir


def test_each_image_holds_one_object_of_its_label(classes_dir):
    builder = tfds.builder(TINY_CLASSES, data_dir=classes_dir)
    assert builder.info.features["label"].names == list(shapes.CLASS_NAMES[1:]) == list(CLASS_NAMES)
    images, labels = pretraining.load_split(TINY_CLASSES, "train", classes_dir)
    assert images.shape == (64, 64, 64, 3) and images.dtype == np.uint8 and labels.shape == (64,)
    assert len(set(labels.tolist())) >= 15  # 64 draws of 20 classes
    source = tfds.data_source(TINY_CLASSES, split="train", data_dir=classes_dir)
    for record in (source[i] for i in range(len(source))):
        index = int(record["id"].decode().split("_")[1])
        image, class_id, mask = shapes.render_object(0, "train", index, with_mask=True)
        np.testing.assert_array_equal(record["image"], image)
        assert record["label"] == class_id - 1
        # the object really is of the labelled class: visible, and in the class's colour family
        assert mask.sum() > 100, index
        name = CLASS_NAMES[record["label"]]
        warm = name.startswith("warm")
        hue = _hue(image[mask & (image.max(axis=-1) > 60)], warm)  # the stripes' dark halves carry little hue
        assert (-0.1 <= hue <= 0.14) if warm else (0.43 <= hue <= 0.72), (index, name, hue)


def test_validation_images_are_other_images(classes_dir):
    train, _ = pretraining.load_split(TINY_CLASSES, "train", classes_dir)
    validation, _ = pretraining.load_split(TINY_CLASSES, "validation", classes_dir)
    assert not any(np.array_equal(v, t) for v in validation for t in train)
    scene, _ = shapes.render_scene(0, "train", 0)
    assert not np.array_equal(shapes.render_object(0, "train", 0, size=96)[0], scene)  # a stream of its own


@pytest.fixture(scope="module")
def weights(classes_dir, tmp_path_factory):
    """`VARIANT,synthetic,pretrained`'s missing weights, made by `ensure_weights` (a few steps on the tiny set)."""
    config = get_config("simdeeplab18,synthetic,pretrained")
    config.model.width = WIDTH
    path = str(tmp_path_factory.mktemp("cache") / "resnet18_w8.npz")
    config.model.backbone_init = path
    assert pretraining.ensure_weights(config.model, classes_dir, dataset=TINY_CLASSES, steps=3, batch_size=8,
                                      log_every=1)
    assert not pretraining.ensure_weights(config.model, classes_dir)  # made once: there now, left alone
    return path


def test_pretraining_writes_torchvision_weights_that_backbone_init_verifies(weights):
    tensors = np.load(weights)
    assert tensors["conv1.weight"].shape == (WIDTH, 3, 7, 7)
    assert tensors["layer4.1.bn2.running_var"].shape == (8 * WIDTH,)
    assert tensors["fc.weight"].shape == (20, 8 * WIDTH) and tensors["fc.bias"].shape == (20,)
    resnet = loading.load_resnet(weights, 18, WIDTH, verify=True)  # the reference forward pass agrees
    np.testing.assert_array_equal(resnet["params"]["layer2_0"]["downsample_conv"]["kernel"],
                                  tensors["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    assert not np.allclose(tensors["bn1.running_mean"], 0)  # trained: the statistics moved
    record = json.load(open(os.path.splitext(weights)[0] + ".json"))
    assert record["settings"]["steps"] == 3 and 0 <= record["val_accuracy"] <= 1 and record["val_images"] == 32


def test_pretrained_modifier_fine_tunes_like_imagenet_from_the_cached_weights(weights, tiny_data_dir):
    config = tiny_config(tiny_data_dir, "simdeeplab18,synthetic,pretrained")
    imagenet = get_config("simdeeplab18,synthetic,imagenet")
    assert config.model.backbone_init == pretraining.default_weights_path(18, WIDTH)  # follows model.width
    for key in ("model.resnet_layout", "data.normalization", "train.optimizer", "train.lr", "train.new_lr_scale",
                "train.pretrained_lr_scale", "train.weight_decay_on", "train.num_steps"):
        section, name = key.split(".")
        assert config[section][name] == imagenet[section][name], key
    assert (config.model.resnet_layout, config.data.normalization, config.train.new_lr_scale) == (
        "torchvision", "imagenet", 10.0)
    config.model.backbone_init = weights
    check_config(config)
    trainer = Trainer(config, num_classes=21)
    state = trainer.initial_state(jax.random.PRNGKey(0))
    resnet = loading.load_resnet(weights, 18, WIDTH)
    for a, b in zip(jax.tree.leaves((state.params["backbone"], state.batch_stats["backbone"])),
                    jax.tree.leaves((resnet["params"], resnet["batch_stats"]))):
        np.testing.assert_array_equal(a, b)
    groups = optimizer.parameter_groups(state.params, config.train, trainer.pretrained)
    labels = {name: set(jax.tree.leaves(tree)) for name, tree in groups.items()}
    assert labels["backbone"] == {"pretrained_decay", "pretrained_no_decay"}
    assert all(group <= {"new_decay", "new_no_decay"} for name, group in labels.items() if name != "backbone")
    # the lr groups: AdamW's first step moves a parameter by lr x scale (times sign(gradient); no decay on a bias)
    ones = jax.tree.map(np.ones_like, state.params)
    updates, _ = trainer.tx.update(ones, trainer.tx.init(state.params), state.params)
    head = next(name for name in state.params if name != "backbone")
    head_bias = next(path for path, label in jax.tree_util.tree_leaves_with_path(groups[head])
                     if label == "new_no_decay")
    np.testing.assert_allclose(updates["backbone"]["bn1"]["bias"], -config.train.lr, rtol=1e-4)
    np.testing.assert_allclose(_at(updates[head], head_bias), -10 * config.train.lr, rtol=1e-4)
    batch = {"image": np.random.default_rng(0).normal(size=(4, 33, 33, 3)).astype(np.float32),
             "label": np.random.default_rng(1).integers(0, 21, (4, 33, 33)).astype(np.int32)}
    new_state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    assert np.isfinite(float(metrics["loss"])) and int(new_state.step) == 1


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def test_pretrained_needs_synthetic_and_names_it():
    with pytest.raises(ConfigError, match="'pretrained'.*'synthetic'"):
        get_config("difnet18,pretrained")
    with pytest.raises(ConfigError, match="'pretrained'.*'imagenet'"):
        get_config("difnet18,synthetic,imagenet,pretrained")
    config = get_config("pdn18_24nb_1m,synthetic,pretrained")
    config.model.depth = 34
    assert config.model.backbone_init == pretraining.default_weights_path(34, 16)
    assert config.model.backbone_init.startswith(pretraining.cache_dir()) and config.train.lr == 2.5e-4  # PDN's


def test_training_reads_the_weights_the_entry_point_makes(tiny_data_dir, tmp_path):
    """train.py makes no weights: a fresh run whose `pretrained` weights are missing names them and the command
    that makes them (experiments.voc calls `pretraining.ensure_weights` before training)."""
    from difnet_jax import train
    from difnet_jax.user_errors import MissingPathError

    config = tiny_config(tiny_data_dir, "simdeeplab18,synthetic,pretrained")
    config.model.backbone_init = str(tmp_path / "missing.npz")
    with pytest.raises(MissingPathError, match="missing.npz.*experiments.pretrain"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    voc = (pathlib.Path(__file__).resolve().parents[1] / "experiments" / "voc.py").read_text()
    assert "pretraining.ensure_weights(config.model, config.data.data_dir)" in voc
