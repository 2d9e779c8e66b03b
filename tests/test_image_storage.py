"""`image_storage`: a dataset prepared "uncompressed" holds exactly the pixels the released files decode to, records
its storage, and is never read or re-prepared as the other storage without a one-line error."""

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from difnet_jax.data import example_files, image_storage, pipeline
from difnet_jax.data.normalization import IMAGENET
from difnet_jax.user_errors import ConfigError
from tests.helpers import TINY
from tests.test_more_datasets import CITYSCAPES_SPLITS, make_cityscapes_tree
from tests.test_real_datasets import SBD, VOC2012, VOC_SEG_TRAIN, VOC_SEG_VAL, make_voc_aug_tree


def records(name, data_dir, split="train"):
    source = pipeline.encoded_images(pipeline.source(name, split, str(data_dir)))
    return {record["id"].decode(): record for record in source}


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """The generated Cityscapes tree prepared both ways: (manual_dir, {storage: data_dir})."""
    manual = tmp_path_factory.mktemp("cityscapes_manual")
    make_cityscapes_tree(manual)
    data_dirs = {}
    for storage in image_storage.STORAGES:
        data_dirs[storage] = tmp_path_factory.mktemp(f"cityscapes_{storage}")
        pipeline.prepare("cityscapes", str(data_dirs[storage]), str(manual), storage)
    return manual, data_dirs


def test_png_release_stored_uncompressed_decodes_to_its_pixels(cityscapes):
    manual, data_dirs = cityscapes
    released, uncompressed = (records("cityscapes", data_dirs[s]) for s in image_storage.STORAGES)
    assert set(uncompressed) == set(CITYSCAPES_SPLITS["train"])
    for image_id, record in uncompressed.items():
        assert record["image"][:2] == b"BM"
        city = image_id.split("_")[0]
        release = cv2.imread(str(manual / "leftImg8bit/train" / city / f"{image_id}_leftImg8bit.png"))
        np.testing.assert_array_equal(pipeline._decode(record["image"], image_storage.DECODE_FLAGS), release)
        np.testing.assert_array_equal(pipeline._decode(record["label"], cv2.IMREAD_UNCHANGED),
                                      pipeline._decode(released[image_id]["label"], cv2.IMREAD_UNCHANGED))
    decoded = {r["id"].decode(): r for r in pipeline.source("cityscapes", "train", str(data_dirs["uncompressed"]))}
    for image_id, record in decoded.items():  # TFDS's decoding (the evaluator's) reads it too, as RGB
        np.testing.assert_array_equal(record["image"][..., ::-1], cv2.imdecode(
            np.frombuffer(released[image_id]["image"], np.uint8), cv2.IMREAD_COLOR))
    files = list((data_dirs["uncompressed"] / "cityscapes_fine/1.0.0").glob("*-train.array_record*"))
    assert sum(f.stat().st_size for f in files) > sum(len(r["image"]) for r in uncompressed.values())  # uncompressed
    transform = pipeline.TrainTransform(15, normalization=IMAGENET)  # the same draws give the same crops, exactly
    for image_id in uncompressed:
        a, b = (transform.random_map(r[image_id], np.random.default_rng(3)) for r in (released, uncompressed))
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_jpeg_release_stored_uncompressed_is_opencvs_decode(tmp_path):
    manual, data = tmp_path / "manual", tmp_path / "data"
    make_voc_aug_tree(manual)
    pipeline.prepare("voc_aug", str(data), str(manual), image_storage.UNCOMPRESSED)
    stored = records("voc_aug", data) | records("voc_aug", data, "validation")
    for image_id, record in stored.items():
        folder = f"{VOC2012}/JPEGImages" if image_id in VOC_SEG_TRAIN + VOC_SEG_VAL else f"{SBD}/img"  # VOC's wins
        np.testing.assert_array_equal(pipeline._decode(record["image"], image_storage.DECODE_FLAGS),
                                      cv2.imread(str(manual / folder / f"{image_id}.jpg")))


def test_storage_is_recorded_and_never_mixed(cityscapes):
    manual, data_dirs = cityscapes
    for storage, data_dir in data_dirs.items():
        builder = tfds.builder("cityscapes_fine", data_dir=str(data_dir))
        assert image_storage.recorded(builder.info.metadata) == storage
        before = records("cityscapes", data_dir)
        other = next(s for s in image_storage.STORAGES if s != storage)
        with pytest.raises(ConfigError, match=rf"prepared with image_storage='{storage}', not '{other}'.*"
                                              rf"prepare_data --dataset=cityscapes --image_storage={other}"):
            pipeline.prepare("cityscapes", str(data_dir), str(manual), other)
        assert pipeline.prepare("cityscapes", str(data_dir), None, storage).is_prepared()
        assert pipeline.prepare("cityscapes", str(data_dir)).is_prepared()  # None: what is there
        after = records("cityscapes", data_dir)
        assert {k: r["image"] for k, r in after.items()} == {k: r["image"] for k, r in before.items()}


def test_dataset_prepared_before_the_choice_reads_as_released(tmp_path):
    manual, data = tmp_path / "manual", tmp_path / "data"
    make_cityscapes_tree(manual)
    builder = tfds.builder("cityscapes_fine", data_dir=str(data))  # as every prepare did: no storage recorded
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    assert image_storage.METADATA_KEY not in tfds.builder("cityscapes_fine", data_dir=str(data)).info.metadata
    assert pipeline.prepare("cityscapes", str(data), None, image_storage.RELEASED).is_prepared()
    with pytest.raises(ConfigError, match="prepared with image_storage='released'"):
        pipeline.prepare("cityscapes", str(data), str(manual), image_storage.UNCOMPRESSED)


def test_generated_datasets_refuse_uncompressed(tmp_path):
    with pytest.raises(ConfigError, match="'synthetic_shapes/tiny' is generated"):
        pipeline.prepare(TINY, str(tmp_path), None, image_storage.UNCOMPRESSED)
    assert not (tmp_path / "synthetic_shapes").exists()


def test_failed_uncompressed_prepare_leaves_nothing_and_tfds_as_it_was(tmp_path):
    manual, data = tmp_path / "manual", tmp_path / "data"
    make_cityscapes_tree(manual)
    next(manual.glob("leftImg8bit/val/*/*.png")).write_bytes(b"not a png")
    with pytest.raises(example_files.BadExampleError, match="not a readable image"):
        pipeline.prepare("cityscapes", str(data), str(manual), image_storage.UNCOMPRESSED)
    assert not tfds.builder("cityscapes_fine", data_dir=str(data)).is_prepared()
    array_record = file_adapters.FileFormat.ARRAY_RECORD
    assert file_adapters.ADAPTER_FOR_FORMAT[array_record] is file_adapters.ArrayRecordFileAdapter
