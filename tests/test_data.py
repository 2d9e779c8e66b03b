"""synthetic_shapes through TFDS (array_record, no TensorFlow) and the grain pipeline."""

import sys

import numpy as np
import pytest

from difnet_jax.data import pipeline, shapes
from difnet_jax.data.normalization import IMAGENET
from tests.helpers import TINY


def test_scenes_are_deterministic_and_voc_like():
    image, label = shapes.render_scene(0, "train", 7)
    again_image, again_label = shapes.render_scene(0, "train", 7)
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(label, again_label)
    assert not np.array_equal(image, shapes.render_scene(0, "validation", 7)[0])
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label.shape == (96, 96)
    labels = np.concatenate([shapes.render_scene(0, "train", i)[1].ravel() for i in range(100)])
    values = set(np.unique(labels))
    assert values <= set(range(shapes.NUM_CLASSES)) | {255}
    assert set(range(shapes.NUM_CLASSES)) <= values  # every class occurs in 100 scenes
    assert 0.02 < np.mean(labels == 255) < 0.15  # a void band, not void regions


def test_void_band_surrounds_every_boundary():
    label = np.zeros((9, 9), np.uint8)
    label[3:6, 3:6] = 4
    banded = shapes.void_band(label)
    assert banded[4, 4] == 4 and banded[0, 0] == 0
    assert (banded[2:7, 2:7][banded[2:7, 2:7] != 4] == 255).all()  # the ring around the square
    assert (banded[3:6, 3:6] == 255).sum() == 8  # the square's own edge pixels


def test_prepared_dataset_reads_back_without_tensorflow(tiny_data_dir):
    train = pipeline.source(TINY, "train", tiny_data_dir)
    val = pipeline.source(TINY, "validation", tiny_data_dir)
    assert (len(train), len(val)) == (48, 16)
    example = train[3]
    split, index = example["id"].decode().rsplit("_", 1)  # TFDS stores records in shuffled order
    image, label = shapes.render_scene(0, split, int(index))
    np.testing.assert_array_equal(example["image"], image)  # PNG is lossless
    np.testing.assert_array_equal(example["label"][..., 0], label)
    assert "tensorflow" not in sys.modules


def _take(loader_iter, count):
    return [next(loader_iter) for _ in range(count)]


def test_train_batches_shapes_ranges_and_determinism(tiny_data_dir):
    source = pipeline.source(TINY, "train", tiny_data_dir)
    make = lambda seed: iter(pipeline.train_loader(source, global_batch_size=4, crop_size=33, seed=seed,
                                                     normalization=IMAGENET))
    batches = _take(make(0), 3)
    for batch in batches:
        assert batch["image"].shape == (4, 33, 33, 3) and batch["image"].dtype == np.uint8  # normalised on device
        assert batch["label"].shape == (4, 33, 33) and batch["label"].dtype == np.int32
        assert set(np.unique(batch["label"])) <= set(range(21)) | {255}
        assert batch["image"].std() > 10  # crops of the scenes, not padding
    for a, b in zip(batches, _take(make(0), 3)):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(batches[0]["image"], next(make(1))["image"])


def test_restored_iterator_continues_with_the_same_batches(tiny_data_dir):
    source = pipeline.source(TINY, "train", tiny_data_dir)
    loader = pipeline.train_loader(source, global_batch_size=4, crop_size=33, seed=3, normalization=IMAGENET)
    it = iter(loader)
    _take(it, 14)  # past the first epoch of 12 batches
    state = it.get_state()
    expected = _take(it, 3)
    resumed = iter(loader)
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 3)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_eval_batches_pad_with_void(tiny_data_dir):
    from difnet_jax.evaluation.evaluator import EvalOptions, eval_batches_with_sizes

    source = pipeline.source(TINY, "validation", tiny_data_dir)
    options = EvalOptions(eval_size=97, normalization=IMAGENET)
    batches = list(eval_batches_with_sizes(source, batch_size=6, options=options))
    assert len(batches) == 3  # 16 images: 6 + 6 + 4 real and 2 void
    assert batches[0]["image"].shape == (6, 97, 97, 3)
    assert (batches[0]["label"][:, 96, :] == 255).all() and (batches[0]["label"][:, :, 96] == 255).all()
    assert (batches[-1]["label"][4:] == 255).all()
    np.testing.assert_array_equal(batches[0]["label"][2, :96, :96], source[2]["label"][..., 0])
    assert [b["count"] for b in batches] == [6, 6, 4] and batches[-1]["size"][4:].tolist() == [[0, 0]] * 2
    with pytest.raises(ValueError, match="larger than the evaluation canvas 64x64"):
        next(eval_batches_with_sizes(source, batch_size=2, options=EvalOptions(eval_size=64, normalization=IMAGENET)))
