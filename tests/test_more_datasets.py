"""ade20k, person_part and cityscapes built from tiny trees in the real manual_dir layouts, and their bad inputs.

Layouts and file kinds as released: ADEChallengeData2016 (JPEG images, mode L annotation PNGs with
values 0..150), PASCAL-Person-Part (VOC 2010 JPEGs, VOC-palette PNGs with indices 0..6, split lists
of `/JPEGImages/<id>.jpg /SegmentationPart/<id>.png` lines), Cityscapes (RGB leftImg8bit PNGs,
8-bit mode L gtFine labelIds PNGs with ids 0..33, next to the color/instanceIds/polygons files).
"""

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from difnet_jax.data import ade20k, cityscapes, example_files, person_part, pipeline
from tests.test_real_datasets import HEIGHT, ROOT, WIDTH, write_jpeg, write_lines, write_palette_png

ADE = "ADEChallengeData2016"
ADE_SPLITS = {"training": ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"],
              "validation": ["ADE_val_00000001", "ADE_val_00000002"]}
ADE_VALUES = [0, 1, 2, 13, 149, 150]  # 0 "other", 1 wall ... 150 flag

PERSON_PART_LISTS = "pascal_person_part/pascal_person_part_trainval_list"
PERSON_PART_GT = "pascal_person_part/pascal_person_part_gt"
VOC2010 = "VOCdevkit/VOC2010"
PERSON_PART_SPLITS = {"train": ["2008_000003", "2008_000008", "2008_000026"], "val": ["2008_000034", "2008_000041"]}

CITYSCAPES_SPLITS = {
    "train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
    "val": ["frankfurt_000000_000294", "lindau_000000_000019"],
    "test": ["berlin_000000_000019"],  # its labels are not public: never read
}


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def stripes(values, height=HEIGHT, width=WIDTH):
    """Every value of `values`, in vertical stripes (cycling when there are more values than columns)."""
    return np.asarray(values, np.uint8)[np.arange(width) % len(values)][None, :].repeat(height, axis=0)


def make_ade20k_tree(root):
    """ADEChallengeData2016 as extracted; returns the expected training labels by id."""
    expected = {}
    for folder, ids in ADE_SPLITS.items():
        for number, image_id in enumerate(ids):
            write_jpeg(root / ADE / "images" / folder / f"{image_id}.jpg", number, mode="L" if number == 1 else "RGB")
            raw = stripes(np.roll(ADE_VALUES, number))
            write_png(root / ADE / "annotations" / folder / f"{image_id}.png", raw, mode="L")
            expected[image_id] = np.where(raw == 0, 255, raw.astype(int) - 1)
    write_lines(root / ADE / "objectInfo150.txt", ["Idx\tRatio\tTrain\tVal\tName", "1\t0.1576\t11664\t1172\twall"])
    write_lines(root / ADE / "sceneCategories.txt", ["ADE_train_00000001 airport_terminal"])
    return expected


def make_person_part_tree(root):
    """pascal_person_part (labels, lists) and VOC 2010 (images) as extracted; returns the expected labels by id."""
    expected = {}
    for split, ids in PERSON_PART_SPLITS.items():
        for number, image_id in enumerate(ids):
            write_jpeg(root / VOC2010 / "JPEGImages" / f"{image_id}.jpg", number)
            expected[image_id] = stripes(np.roll(range(7), number))
            write_palette_png(root / PERSON_PART_GT / f"{image_id}.png", expected[image_id])
        write_lines(root / PERSON_PART_LISTS / f"{split}.txt",
                    [f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png" for i in ids])
    write_jpeg(root / VOC2010 / "JPEGImages" / "2008_000002.jpg", 9)  # a VOC image without person parts
    return expected


def make_cityscapes_tree(root):
    """leftImg8bit and gtFine as extracted (with gtFine's other files); returns the expected train ids by id."""
    expected = {}
    table = cityscapes.label_id_table()
    for split, ids in CITYSCAPES_SPLITS.items():
        for number, image_id in enumerate(ids):
            city = image_id.split("_")[0]
            image = np.random.default_rng(number).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            write_png(root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png", image, mode="RGB")
            label_ids = ((np.arange(HEIGHT * WIDTH) + number) % cityscapes.NUM_LABEL_IDS).reshape(HEIGHT, WIDTH)
            label_ids = label_ids.astype(np.uint8)  # every id 0..33
            gt = root / "gtFine" / split / city
            write_png(gt / f"{image_id}_gtFine_labelIds.png", label_ids, mode="L")
            write_png(gt / f"{image_id}_gtFine_color.png", np.zeros((HEIGHT, WIDTH, 4), np.uint8), mode="RGBA")
            write_png(gt / f"{image_id}_gtFine_instanceIds.png", label_ids.astype(np.uint16) * 1000)  # 16-bit
            (gt / f"{image_id}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": HEIGHT, "objects": []}))
            expected[image_id] = table[label_ids]
    return expected


MAKE_TREE = {"ade20k": make_ade20k_tree, "person_part": make_person_part_tree, "cityscapes": make_cityscapes_tree}
SPLIT_IDS = {
    "ade20k": (ADE_SPLITS["training"], ADE_SPLITS["validation"]),
    "person_part": (PERSON_PART_SPLITS["train"], PERSON_PART_SPLITS["val"]),
    "cityscapes": (CITYSCAPES_SPLITS["train"], CITYSCAPES_SPLITS["val"]),
}


def read_split(name, split, data_dir):
    return {record["id"].decode(): record for record in pipeline.source(name, split, str(data_dir))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The three datasets prepared once from their trees: {name: (manual_dir, data_dir, expected labels)}."""
    result = {}
    for name, make_tree in MAKE_TREE.items():
        manual, data = tmp_path_factory.mktemp(f"{name}_manual"), tmp_path_factory.mktemp(f"{name}_data")
        expected = make_tree(manual)
        pipeline.prepare(name, str(data), str(manual))
        result[name] = manual, data, expected
    return result


@pytest.mark.parametrize("name, builder, num_classes, first, last", [
    ("ade20k", "ade20k_scene_parsing", 150, "wall", "flag"),
    ("person_part", "pascal_person_part", 7, "background", "lower legs"),
    ("cityscapes", "cityscapes_fine", 19, "road", "bicycle"),
])
def test_splits_ids_labels_and_class_names(prepared, name, builder, num_classes, first, last):
    _, data, expected = prepared[name]
    assert pipeline.builder_name(name) == builder and tfds.builder(builder).name == builder
    train, validation = read_split(name, "train", data), read_split(name, "validation", data)
    assert (sorted(train), sorted(validation)) == tuple(sorted(ids) for ids in SPLIT_IDS[name])
    info = tfds.builder(builder, data_dir=str(data)).info
    assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    names = pipeline.class_names(tfds.builder(builder, data_dir=str(data)))
    assert (len(names), len(set(names)), names[0], names[-1]) == (num_classes, num_classes, first, last)
    for image_id, record in (train | validation).items():
        assert record["image"].shape == (HEIGHT, WIDTH, 3) and record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["label"][..., 0], expected[image_id])


def test_ade20k_other_is_ignored_and_classes_shift_down(prepared):
    _, data, _ = prepared["ade20k"]
    label = read_split("ade20k", "train", data)["ADE_train_00000001"]["label"][0, :6, 0]
    np.testing.assert_array_equal(label, [255, 0, 1, 12, 148, 149])  # raw 0, 1, 2, 13, 149, 150
    gray = read_split("ade20k", "train", data)["ADE_train_00000002"]["image"]  # a grayscale JPEG comes out as RGB
    assert (gray[..., 0] == gray[..., 2]).all()


def test_cityscapes_label_ids_become_the_19_train_ids(prepared):
    manual, data, _ = prepared["cityscapes"]
    record = read_split("cityscapes", "train", data)["aachen_000000_000019"]
    label_ids = np.asarray(Image.open(manual / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"))
    label = record["label"][..., 0]
    assert set(np.unique(label)) == set(range(19)) | {255}
    for label_id, train_id in [(0, 255), (6, 255), (7, 0), (8, 1), (9, 255), (11, 2), (23, 10), (24, 11),
                               (29, 255), (30, 255), (31, 16), (33, 18)]:
        assert (label[label_ids == label_id] == train_id).all(), label_id
    image = np.asarray(Image.open(manual / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"))
    np.testing.assert_array_equal(record["image"], image)


def test_person_part_keeps_palette_indices(prepared):
    _, data, _ = prepared["person_part"]
    label = read_split("person_part", "validation", data)["2008_000034"]["label"][0, :7, 0]
    np.testing.assert_array_equal(label, range(7))


def test_plain_tfds_call_without_tensorflow(tmp_path):
    """`tfds.builder(name).download_and_prepare(...)` with no file_format writes array_record, without TensorFlow."""
    assert importlib.util.find_spec("tensorflow") is None  # else this test would not show anything
    make_cityscapes_tree(tmp_path / "manual")
    builder = tfds.builder("cityscapes_fine", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert len(tfds.data_source("cityscapes_fine", split="validation", data_dir=str(tmp_path / "data"))) == 2


def zip_folders(archive, root, folders):
    with zipfile.ZipFile(archive, "w") as zip_file:
        for folder in folders:
            for path in sorted((root / folder).rglob("*")):
                zip_file.write(path, path.relative_to(root).as_posix())


def test_the_official_archives_work(tmp_path):
    """The zips (and VOC's tar) as downloaded, in one manual_dir, which is left as it was."""
    tree, manual = tmp_path / "tree", tmp_path / "manual"
    for make_tree in MAKE_TREE.values():
        make_tree(tree)
    manual.mkdir()
    zip_folders(manual / ade20k.ARCHIVE, tree, [ADE])
    zip_folders(manual / person_part.PARTS_ARCHIVE, tree, ["pascal_person_part"])
    with tarfile.open(manual / person_part.VOC_ARCHIVE, "w") as tar:
        tar.add(tree / "VOCdevkit", "VOCdevkit")
    zip_folders(manual / cityscapes.IMAGES_ARCHIVE, tree, ["leftImg8bit"])
    zip_folders(manual / cityscapes.LABELS_ARCHIVE, tree, ["gtFine"])
    archives = sorted(p.name for p in manual.iterdir())
    for name, (train_ids, validation_ids) in SPLIT_IDS.items():
        builder = pipeline.prepare(name, str(tmp_path / "data"), str(manual))
        counts = builder.info.splits["train"].num_examples, builder.info.splits["validation"].num_examples
        assert counts == (len(train_ids), len(validation_ids)), name
    assert sorted(p.name for p in manual.iterdir()) == archives


def test_corrupt_zip_is_named(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / ade20k.ARCHIVE).write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(ValueError, match=r"Cannot extract .*ADEChallengeData2016\.zip"):
        pipeline.prepare("ade20k", str(tmp_path / "data"), str(manual))
    assert not list((tmp_path / "data").glob("downloads/extracted/*"))


@pytest.mark.parametrize("name, remove, expected_path, archive", [
    ("ade20k", f"{ADE}/images", f"{ADE}/images/training", ade20k.ARCHIVE),
    ("ade20k", f"{ADE}/annotations/validation/ADE_val_00000002.png",
     f"{ADE}/annotations/validation/ADE_val_00000002.png", ade20k.ARCHIVE),
    ("ade20k", f"{ADE}/images/validation/ADE_val_00000001.jpg", f"{ADE}/images/validation/ADE_*.jpg",
     ade20k.ARCHIVE),  # with ADE_val_00000002.jpg also gone: an empty split folder
    ("person_part", PERSON_PART_LISTS, f"{PERSON_PART_LISTS}/train.txt", person_part.PARTS_ARCHIVE),
    ("person_part", f"{PERSON_PART_GT}/2008_000026.png", f"{PERSON_PART_GT}/2008_000026.png",
     person_part.PARTS_ARCHIVE),
    ("person_part", f"{VOC2010}/JPEGImages/2008_000041.jpg", f"{VOC2010}/JPEGImages/2008_000041.jpg",
     person_part.VOC_ARCHIVE),
    ("cityscapes", "gtFine", "gtFine/train", cityscapes.LABELS_ARCHIVE),
    ("cityscapes", "leftImg8bit/val", "leftImg8bit/val", cityscapes.IMAGES_ARCHIVE),
    ("cityscapes", "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png",
     "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png", cityscapes.LABELS_ARCHIVE),
])
def test_missing_paths_name_the_path_and_the_archive(tmp_path, name, remove, expected_path, archive):
    manual = tmp_path / "manual"
    MAKE_TREE[name](manual)
    for target in [manual / remove] + ([manual / ADE / "images/validation/ADE_val_00000002.jpg"]
                                       if expected_path.endswith("ADE_*.jpg") else []):
        target.unlink() if target.is_file() else shutil.rmtree(target)
    with pytest.raises(FileNotFoundError) as error:
        pipeline.prepare(name, str(tmp_path / "data"), str(manual))
    assert str(manual / expected_path) in str(error.value)
    assert archive in str(error.value)


def _ade_value_151(manual):
    path = manual / ADE / "annotations/training/ADE_train_00000003.png"
    write_png(path, stripes([0, 5, 151]), mode="L")
    return "ade20k", path, r"values \[151\] are not SceneParsing annotation values 0..150"


def _ade_colour_annotation(manual):
    path = manual / ADE / "annotations/validation/ADE_val_00000001.png"
    Image.open(path).convert("RGB").save(path)
    return "ade20k", path, "not mode RGB"


def _ade_corrupt_jpeg(manual):
    path = manual / ADE / "images/training/ADE_train_00000002.jpg"
    path.write_bytes(path.read_bytes()[:100])
    return "ade20k", path, "not a readable image"


def _person_part_index_7(manual):
    path = manual / PERSON_PART_GT / "2008_000008.png"
    write_palette_png(path, stripes([0, 1, 7]))
    return "person_part", path, r"label values \[7\] outside 0..6 and 255"


def _person_part_size_mismatch(manual):
    write_jpeg(manual / VOC2010 / "JPEGImages" / "2008_000041.jpg", 0, size=(WIDTH, HEIGHT))
    return "person_part", manual / PERSON_PART_GT / "2008_000041.png", "label is 20x30 but image .*2008_000041.jpg"


def _cityscapes_label_id_34(manual):
    path = manual / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    write_png(path, stripes([7, 34, 40]), mode="L")
    return "cityscapes", path, r"values \[34, 40\] are not Cityscapes label ids 0..33"


def _cityscapes_corrupt_png(manual):
    path = manual / "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"
    path.write_bytes(path.read_bytes()[:60])
    return "cityscapes", path, "not a readable image"


def _cityscapes_corrupt_label(manual):
    path = manual / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return "cityscapes", path, "not a readable PNG"


BAD_EXAMPLES = [_ade_value_151, _ade_colour_annotation, _ade_corrupt_jpeg, _person_part_index_7,
                _person_part_size_mismatch, _cityscapes_label_id_34, _cityscapes_corrupt_png, _cityscapes_corrupt_label]


@pytest.mark.parametrize("spoil", BAD_EXAMPLES, ids=lambda spoil: spoil.__name__.strip("_"))
def test_bad_example_is_named_and_leaves_no_dataset(tmp_path, monkeypatch, spoil):
    monkeypatch.delenv(example_files.SKIP_ENV, raising=False)
    manual, data = tmp_path / "manual", tmp_path / "data"
    for make_tree in MAKE_TREE.values():
        make_tree(manual)
    name, path, message = spoil(manual)
    with pytest.raises(example_files.BadExampleError, match=message) as error:
        pipeline.prepare(name, str(data), str(manual))
    assert str(path) in str(error.value)
    assert not tfds.builder(pipeline.builder_name(name), data_dir=str(data)).is_prepared()
    assert not list(data.glob("**/dataset_info.json"))
    assert not list(data.glob("**/incomplete*"))


def test_skip_option_leaves_bad_examples_out_and_counts_them(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(example_files.SKIP_ENV, "1")
    manual, data = tmp_path / "manual", str(tmp_path / "data")
    make_cityscapes_tree(manual)
    _cityscapes_corrupt_png(manual)
    _cityscapes_corrupt_label(manual)
    with caplog.at_level(logging.WARNING, logger="difnet_jax.data.example_files"):
        builder = pipeline.prepare("cityscapes", data, manual_dir=str(manual))
    assert builder.info.splits["train"].num_examples == 1 and builder.info.splits["validation"].num_examples == 2
    assert set(read_split("cityscapes", "train", data)) == {"aachen_000000_000019"}
    assert "cityscapes_fine train: skipped 2 bad examples of 3" in caplog.text
    assert "bochum_000000_000313_leftImg8bit.png" in caplog.text


@pytest.mark.parametrize("name", list(MAKE_TREE))
def test_prepare_command(prepared, name):
    manual, data, _ = prepared[name]  # already prepared: the command reports it
    command = [sys.executable, "-m", "experiments.prepare_data", f"--dataset={name}", f"--manual_dir={manual}",
               f"--data_dir={data}"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    train_ids, validation_ids = SPLIT_IDS[name]
    assert f"Prepared {pipeline.builder_name(name)}/" in result.stdout
    assert f"train: {len(train_ids)} examples" in result.stdout
    assert f"validation: {len(validation_ids)} examples" in result.stdout
