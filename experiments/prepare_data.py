"""Prepares a dataset once: reads manual_dir, writes array_record files to data_dir (TFDS).

  python -m experiments.prepare_data --dataset=voc_aug --manual_dir=~/downloads/voc --data_dir=~/tensorflow_datasets

--dataset is a config's `data.name` (ade20k, person_part and cityscapes are the TFDS builders
ade20k_scene_parsing, pascal_person_part and cityscapes_fine: `pipeline.DATASET_NAMES`).
manual_dir holds the official archives or what they extract to; see the builder's module
docstring (difnet_jax/data/voc_aug.py, pascal_context.py, ade20k.py, person_part.py,
cityscapes.py). --skip_bad_examples sets DIFNET_SKIP_BAD_EXAMPLES=1 (see
difnet_jax/data/example_files.py). Prints the split counts and the disk space of the prepared
dataset. A dataset already prepared is not prepared again; one that is not needs --manual_dir
(the synthetic ones generate themselves).

--image_storage (downloaded datasets): "released" (the default for a new dataset) stores the images as the
release's JPEG / PNG files; "uncompressed" decodes each once and stores its pixels as BMP, about 3 bytes per pixel
(Cityscapes: about 6.3 MB an image instead of 2-3 MB; VOC: 0.56 MB instead of about 0.1 MB), so that training does
not decode them (see difnet_jax/data/image_storage.py). The storage is recorded with the dataset; asking for the
other one of a dataset already prepared is refused with what to run.
"""

from __future__ import annotations

import os

from absl import flags
from etils import epath

from difnet_jax.data import example_files, image_storage, pipeline
from difnet_jax.user_errors import ArgumentError, DatasetNotPreparedError
from experiments import cli

DATASETS = ("voc_aug", "pascal_context", "pascal_context/60", "pascal_context/59", "ade20k", "person_part",
            "cityscapes", "synthetic_shapes", "synthetic_shapes/tiny")
_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "The dataset (data.name, with config) to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Folder with the downloaded archives or their contents.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir to write to; empty: TFDS's default.")
_IMAGE_STORAGE = flags.DEFINE_enum("image_storage", None, image_storage.STORAGES,
                                   "How the images are stored: as released (JPEG / PNG) or uncompressed (BMP: "
                                   "about 3 bytes per pixel, no decode when training). Default: a new dataset "
                                   "'released', one already prepared as it is.")
_SKIP_BAD_EXAMPLES = flags.DEFINE_bool("skip_bad_examples", False, "Leave unreadable or invalid examples out.")
flags.mark_flags_as_required(["dataset"])


def disk_bytes(folder: epath.Path) -> int:
    return sum(disk_bytes(path) if path.is_dir() else path.stat().length for path in folder.iterdir())


def human_size(num_bytes: int) -> str:
    size, unit = float(num_bytes), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{size:.1f} {unit}"


def main():
    if _SKIP_BAD_EXAMPLES.value:
        os.environ[example_files.SKIP_ENV] = "1"
    manual_dir = os.path.expanduser(_MANUAL_DIR.value)
    data_dir = os.path.expanduser(_DATA_DIR.value)
    print(f"Preparing {_DATASET.value}{f' from {manual_dir}' if manual_dir else ''} "
          f"into {data_dir or 'the default data_dir'}", flush=True)
    try:
        builder = pipeline.prepare(_DATASET.value, data_dir, manual_dir, _IMAGE_STORAGE.value)
    except DatasetNotPreparedError as error:
        module = f"difnet_jax/data/{_DATASET.value.split('/')[0]}.py"
        raise ArgumentError(f"--manual_dir is required to prepare {_DATASET.value}: the folder holding its official "
                            f"archives or what they extract to (which ones: the docstring of {module})") from error
    print(f"Prepared {builder.info.full_name} in {builder.data_dir}, images stored "
          f"{image_storage.recorded(builder.info.metadata)}")
    for split, info in sorted(builder.info.splits.items()):
        print(f"  {split}: {info.num_examples:,} examples")
    print(f"  disk: {human_size(disk_bytes(epath.Path(builder.data_dir)))}")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
