"""voc_aug and pascal_context built from tiny trees in the real manual_dir layouts, and their bad inputs."""

import importlib.util
import logging
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import tensorflow_datasets as tfds
from PIL import Image

from difnet_jax.data import example_files, pascal_context, pipeline
from experiments.configs import context

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 20, 30
VOC2012 = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"
VOC2010 = "VOCdevkit/VOC2010"

# Split lists with the real kinds of overlap: SBD train/val share images with VOC seg train and val.
VOC_SEG_TRAIN = ["2007_000032", "2007_000039", "2008_000008"]
VOC_SEG_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2008_000008", "2007_000033", "2008_000015", "2008_000019"]  # 2008_000008 also VOC train
SBD_VAL = ["2007_000042", "2008_000023"]  # 2007_000042 is VOC seg val: not in train
VOC_AUG_TRAIN = {"2007_000032", "2007_000039", "2008_000008", "2008_000015", "2008_000019", "2008_000023"}


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (VOCdevkit's VOClabelcolormap.m)."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        code = index
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette += [red, green, blue]
    return palette


def write_jpeg(path, seed, size=(HEIGHT, WIDTH), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(image).convert(mode).save(path, quality=95)


def write_palette_png(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_palette())
    image.save(path)


def write_sbd_mat(path, segmentation):
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for index in range(20):
        boundaries[index, 0] = scipy.sparse.csc_matrix(segmentation.shape, dtype=bool)
    present = np.unique(segmentation[segmentation > 0]).astype(np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": segmentation, "Boundaries": boundaries,
                                      "CategoriesPresent": present}})


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def voc_label(class_index):
    """A VOC-style mask: background, one object with a 255 border."""
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[3:17, 4:26] = 255
    label[4:16, 5:25] = class_index
    return label


def sbd_label(class_index):
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    label[:, WIDTH // 2 :] = class_index
    return label


def make_voc_aug_tree(root):
    """VOC2012 + SBD as extracted from the official archives; returns the expected labels by id."""
    expected = {}
    for number, image_id in enumerate(VOC_SEG_TRAIN + VOC_SEG_VAL):
        write_jpeg(root / VOC2012 / "JPEGImages" / f"{image_id}.jpg", number)
        expected[image_id] = voc_label(number + 1)
        write_palette_png(root / VOC2012 / "SegmentationClass" / f"{image_id}.png", expected[image_id])
    write_lines(root / VOC2012 / "ImageSets/Segmentation/train.txt", VOC_SEG_TRAIN)
    write_lines(root / VOC2012 / "ImageSets/Segmentation/val.txt", VOC_SEG_VAL)
    for number, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        write_jpeg(root / SBD / "img" / f"{image_id}.jpg", 100 + number)
        write_sbd_mat(root / SBD / "cls" / f"{image_id}.mat", sbd_label(10 + number))
        expected.setdefault(image_id, sbd_label(10 + number))  # VOC annotation wins
    write_lines(root / SBD / "train.txt", SBD_TRAIN)
    write_lines(root / SBD / "val.txt", SBD_VAL)
    return expected


CONTEXT_OTHERS = ("accordion", "air conditioner", "baby carriage", "candle", "zebra")
CONTEXT_TRAIN = ["2008_000002", "2008_000003", "2008_000007"]
CONTEXT_VAL = ["2008_000009", "2008_000010"]


def context_ids(names=pascal_context.CONTEXT_59 + CONTEXT_OTHERS):
    """labels.txt ids: the names sorted and numbered from 1, like the real file."""
    return {name: number for number, name in enumerate(sorted(names), start=1)}


def context_label_map(ids):
    """A LabelMap: unlabelled (0), accordion, aeroplane, person, wood in five vertical stripes."""
    label_map = np.zeros((HEIGHT, WIDTH), np.uint16)
    for stripe, name in enumerate(["accordion", "aeroplane", "person", "wood"], start=1):
        label_map[:, 6 * stripe : 6 * stripe + 6] = ids[name]
    return label_map


def make_context_tree(root, ids=None):
    ids = ids or context_ids()
    (root / "trainval").mkdir(parents=True)
    for number, image_id in enumerate(CONTEXT_TRAIN + CONTEXT_VAL):
        write_jpeg(root / VOC2010 / "JPEGImages" / f"{image_id}.jpg", number, mode="L" if number == 1 else "RGB")
        scipy.io.savemat(root / "trainval" / f"{image_id}.mat", {"LabelMap": context_label_map(ids)})
    write_lines(root / VOC2010 / "ImageSets/Main/train.txt", CONTEXT_TRAIN)
    write_lines(root / VOC2010 / "ImageSets/Main/val.txt", CONTEXT_VAL)
    write_lines(root / "labels.txt", [f"{number}: {name}" for name, number in sorted(ids.items(), key=lambda x: x[1])])


def read_split(name, split, data_dir):
    return {record["id"].decode(): record for record in pipeline.source(name, split, str(data_dir))}


@pytest.fixture(scope="module")
def voc_aug(tmp_path_factory):
    manual, data = tmp_path_factory.mktemp("voc_manual"), tmp_path_factory.mktemp("voc_data")
    expected = make_voc_aug_tree(manual)
    pipeline.prepare("voc_aug", str(data), str(manual))
    return manual, data, expected


def test_voc_aug_splits_follow_the_union_minus_val_rule(voc_aug):
    _, data, _ = voc_aug
    assert set(read_split("voc_aug", "train", data)) == VOC_AUG_TRAIN
    assert set(read_split("voc_aug", "validation", data)) == set(VOC_SEG_VAL)
    builder = tfds.builder("voc_aug", data_dir=str(data))
    assert builder.info.splits["train"].num_examples == 6 and builder.info.splits["validation"].num_examples == 2
    assert len(pipeline.class_names(builder)) == 21


def test_voc_aug_labels_keep_palette_indices_and_voc_wins(voc_aug):
    manual, data, expected = voc_aug
    records = read_split("voc_aug", "train", data) | read_split("voc_aug", "validation", data)
    for image_id, record in records.items():
        assert record["label"].shape == (HEIGHT, WIDTH, 1) and record["label"].dtype == np.uint8
        np.testing.assert_array_equal(record["label"][..., 0], expected[image_id])
        assert record["image"].shape == (HEIGHT, WIDTH, 3) and record["image"].dtype == np.uint8
    assert 255 in records["2007_000032"]["label"]  # the VOC border survives
    assert set(np.unique(records["2008_000008"]["label"])) == {0, 3, 255}  # VOC's, not SBD's class 10
    sbd_image = np.asarray(Image.open(manual / SBD / "img" / "2008_000015.jpg"))
    np.testing.assert_array_equal(records["2008_000015"]["image"], sbd_image)  # the JPEG bytes as they were


@pytest.mark.parametrize("config, background, first", [("pascal_context", 0, 1), ("pascal_context/59", 255, 0)])
def test_pascal_context_maps_459_classes_to_59(tmp_path, config, background, first):
    make_context_tree(tmp_path / "manual")
    builder = pipeline.prepare(config, str(tmp_path / "data"), str(tmp_path / "manual"))
    names = pipeline.class_names(builder)
    assert len(names) == 59 + first and names[first] == "aeroplane" and names[-1] == "wood"
    train = read_split(config, "train", tmp_path / "data")
    validation = read_split(config, "validation", tmp_path / "data")
    assert (set(train), set(validation)) == (set(CONTEXT_TRAIN), set(CONTEXT_VAL))
    label = train["2008_000002"]["label"][..., 0]
    index = {name: first + number for number, name in enumerate(pascal_context.CONTEXT_59)}
    stripes = [background, background, index["aeroplane"], index["person"], index["wood"]]  # unlabelled, accordion
    np.testing.assert_array_equal(label[0, ::6], stripes)
    assert (first, index["person"], index["wood"]) == ((1, 37, 59) if first else (0, 36, 58))
    gray = train["2008_000003"]["image"]  # a grayscale JPEG comes out as RGB
    assert gray.shape == (HEIGHT, WIDTH, 3) and (gray[..., 0] == gray[..., 2]).all()


def test_pascal_context_name_missing_from_labels_txt(tmp_path):
    ids = context_ids([name for name in pascal_context.CONTEXT_59 + CONTEXT_OTHERS if name != "sofa"])
    make_context_tree(tmp_path / "manual", ids)
    with pytest.raises(ValueError, match=r"labels\.txt has no class named 'sofa'"):
        pipeline.prepare("pascal_context", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_plain_tfds_call_writes_array_record_without_tensorflow(tmp_path):
    """The plain TFDS way, no file_format given: the builder's own default is array_record (TFRecord needs TF)."""
    assert importlib.util.find_spec("tensorflow") is None  # else this test would not show anything
    make_voc_aug_tree(tmp_path / "manual")
    builder = tfds.builder("voc_aug", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert len(tfds.data_source("voc_aug", split="train", data_dir=str(tmp_path / "data"))) == 6
    assert tfds.builder("voc_aug", file_format="tfrecord").info.file_format == tfds.core.FileFormat.TFRECORD


def test_voc_aug_accepts_the_archives(tmp_path):
    tree, manual = tmp_path / "tree", tmp_path / "manual"
    make_voc_aug_tree(tree)
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_11-May-2012.tar", "w") as tar:
        tar.add(tree / "VOCdevkit", "VOCdevkit")
    with tarfile.open(manual / "benchmark.tgz", "w:gz") as tar:
        tar.add(tree / "benchmark_RELEASE", "benchmark_RELEASE")
    builder = pipeline.prepare("voc_aug", str(tmp_path / "data"), str(manual))
    assert builder.info.splits["train"].num_examples == 6 and builder.info.splits["validation"].num_examples == 2
    assert sorted(p.name for p in manual.iterdir()) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]


def test_corrupt_archive_is_named_and_manual_dir_untouched(tmp_path):
    manual = tmp_path / "manual"
    make_voc_aug_tree(manual)
    shutil.rmtree(manual / "benchmark_RELEASE")
    (manual / "benchmark.tgz").write_bytes(b"not a tar file" * 10)
    with pytest.raises(ValueError, match=r"Cannot extract .*benchmark\.tgz"):
        pipeline.prepare("voc_aug", str(tmp_path / "data"), str(manual))
    assert sorted(p.name for p in manual.iterdir()) == ["VOCdevkit", "benchmark.tgz"]
    assert not list((tmp_path / "data").glob("downloads/extracted/*"))


@pytest.mark.parametrize("dataset, remove, expected_path, archive", [
    ("voc_aug", None, "", "VOCtrainval_11-May-2012.tar"),  # no manual_dir at all
    ("voc_aug", "benchmark_RELEASE", f"{SBD}/img", "benchmark.tgz"),
    ("voc_aug", "VOCdevkit/VOC2012/ImageSets", f"{VOC2012}/ImageSets/Segmentation/train.txt",
     "VOCtrainval_11-May-2012.tar"),
    ("voc_aug", f"{SBD}/cls/2008_000019.mat", f"{SBD}/cls/2008_000019.mat", "benchmark.tgz"),
    ("pascal_context", "trainval", "trainval", "trainval.tar.gz"),
    ("pascal_context", "VOCdevkit", f"{VOC2010}/JPEGImages", "VOCtrainval_03-May-2010.tar"),
    ("pascal_context", f"{VOC2010}/JPEGImages/2008_000009.jpg", f"{VOC2010}/JPEGImages/2008_000009.jpg",
     "VOCtrainval_03-May-2010.tar"),
])
def test_missing_paths_name_the_path_and_the_archive(tmp_path, dataset, remove, expected_path, archive):
    manual = tmp_path / "manual"
    if remove is not None:
        (make_voc_aug_tree if dataset == "voc_aug" else make_context_tree)(manual)
        target = manual / remove
        target.unlink() if target.is_file() else shutil.rmtree(target)
    with pytest.raises(FileNotFoundError) as error:
        pipeline.prepare(dataset, str(tmp_path / "data"), str(manual))
    assert str(manual / expected_path) in str(error.value)
    assert archive in str(error.value)


def _corrupt_jpeg(manual):
    path = manual / VOC2012 / "JPEGImages" / "2007_000039.jpg"
    path.write_bytes(path.read_bytes()[:200])  # truncated
    return path, "not a readable image"


def _corrupt_mat(manual):
    path = manual / SBD / "cls" / "2008_000015.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    return path, "cannot read GTcls.Segmentation"


def _out_of_range_png(manual):
    path = manual / VOC2012 / "SegmentationClass" / "2007_000032.png"
    write_palette_png(path, voc_label(21))
    return path, r"label values \[21\] outside 0..20 and 255"


def _colour_png(manual):
    path = manual / VOC2012 / "SegmentationClass" / "2008_000008.png"
    Image.open(path).convert("RGB").save(path)
    return path, "not mode RGB"


def _out_of_range_mat(manual):
    path = manual / SBD / "cls" / "2008_000023.mat"
    write_sbd_mat(path, sbd_label(40))
    return path, r"label values \[40\]"


def _size_mismatch(manual):
    write_jpeg(manual / SBD / "img" / "2008_000019.jpg", 0, size=(WIDTH, HEIGHT))
    return manual / SBD / "cls" / "2008_000019.mat", "label is 20x30 but image .*2008_000019.jpg is 30x20"


BAD_EXAMPLES = [_corrupt_jpeg, _corrupt_mat, _out_of_range_png, _colour_png, _out_of_range_mat, _size_mismatch]


@pytest.mark.parametrize("spoil", BAD_EXAMPLES, ids=lambda spoil: spoil.__name__.strip("_"))
def test_bad_example_is_named_and_leaves_no_dataset(tmp_path, monkeypatch, spoil):
    monkeypatch.delenv(example_files.SKIP_ENV, raising=False)
    manual, data = tmp_path / "manual", str(tmp_path / "data")
    make_voc_aug_tree(manual)
    path, message = spoil(manual)
    with pytest.raises(example_files.BadExampleError, match=message) as error:
        pipeline.prepare("voc_aug", data, str(manual))
    assert str(path) in str(error.value)
    assert not tfds.builder("voc_aug", data_dir=data).is_prepared()
    assert not list((tmp_path / "data").glob("**/dataset_info.json"))
    assert not list((tmp_path / "data").glob("**/incomplete*"))
    if spoil is _corrupt_jpeg:  # a later good prepare works
        make_voc_aug_tree(manual)
        assert pipeline.prepare("voc_aug", data, str(manual)).info.splits["train"].num_examples == 6


def test_pascal_context_unknown_class_id_is_named(tmp_path):
    make_context_tree(tmp_path / "manual")
    path = tmp_path / "manual" / "trainval" / "2008_000010.mat"
    scipy.io.savemat(path, {"LabelMap": np.full((HEIGHT, WIDTH), 460, np.uint16)})
    with pytest.raises(example_files.BadExampleError, match=r"2008_000010\.mat: LabelMap values \[460\]"):
        pipeline.prepare("pascal_context/59", str(tmp_path / "data"), str(tmp_path / "manual"))


def test_skip_option_leaves_bad_examples_out_and_counts_them(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(example_files.SKIP_ENV, "1")
    manual, data = tmp_path / "manual", str(tmp_path / "data")
    make_voc_aug_tree(manual)
    for spoil in (_corrupt_jpeg, _corrupt_mat, _size_mismatch):
        spoil(manual)
    with caplog.at_level(logging.WARNING, logger="difnet_jax.data.example_files"):
        builder = pipeline.prepare("voc_aug", data, str(manual))
    assert builder.info.splits["train"].num_examples == 3 and builder.info.splits["validation"].num_examples == 2
    assert set(read_split("voc_aug", "train", data)) == VOC_AUG_TRAIN - {"2007_000039", "2008_000015", "2008_000019"}
    assert "voc_aug train: skipped 3 bad examples of 6" in caplog.text
    assert "2008_000015.mat" in caplog.text
    monkeypatch.setenv(example_files.SKIP_ENV, "yes")
    with pytest.raises(ValueError, match="DIFNET_SKIP_BAD_EXAMPLES='yes'"):
        example_files.skip_bad_examples()


def test_prepare_command_prints_counts_and_disk_space(voc_aug):
    manual, data, _ = voc_aug
    command = [sys.executable, "-m", "experiments.prepare_data", "--dataset=voc_aug", f"--manual_dir={manual}",
               f"--data_dir={data}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    assert "train: 6 examples" in result.stdout and "validation: 2 examples" in result.stdout
    assert "images stored released" in result.stdout
    assert re.search(r"disk: \d+\.\d (B|KiB|MiB)", result.stdout)


def test_context_config():
    config = context.get_config("difnet50")
    assert (config.data.name, config.data.eval_size, config.train.num_steps) == ("pascal_context", 505, 62_475)
    assert config.model.depth == 50
