"""Input-pipeline throughput vs. the train step's consumption rate, on VOC- or Cityscapes-sized images.

--dataset=voc_aug: builds a `voc_aug` manual_dir in the real layout from synthetic scenes
resized to 500x375 (VOC's usual size; JPEG images, palette-PNG and GTcls .mat labels).
--dataset=cityscapes: a Cityscapes manual_dir in the real layout (leftImg8bit RGB PNGs of
2048x1024 with mild noise, so that they are about the real files' 2 MB, and gtFine labelIds PNGs).
Prepares it with the project's builder, then measures images/s of the grain train loader
(decode, random scale 0.5-1.5, pad, crop, flip, normalise) at the dataset's crop (321 / 769) for
several worker counts, and the images/s a DifNet train step consumes at that crop on this machine.

  python -m benchmarks.input_pipeline --num_images=160 --workers=0,1,2 --depths=18
  python -m benchmarks.input_pipeline --dataset=cityscapes --num_images=24 --workers=0,2 --depths= \
      --batch_size=8 --batches=6 --output=BENCHMARKS.md
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time

import jax
import numpy as np
import scipy.io
from absl import app, flags
from PIL import Image

from benchmarks import report
from difnet_jax import train
from difnet_jax.data import pipeline, shapes
from experiments.configs import cityscapes as cityscapes_config
from experiments.configs import voc as voc_config

_DATASET = flags.DEFINE_enum("dataset", "voc_aug", ["voc_aug", "cityscapes"], "Which dataset's layout and sizes.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 160, "Images in the generated train split.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_DEPTHS = flags.DEFINE_list("depths", ["18"], "DifNet depths whose train step is timed (the dataset's crop).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size of the loader and the train step.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches timed per worker count.")
_OUTPUT = flags.DEFINE_string("output", "", "Markdown file the section is appended to; empty: print only.")

CROP_SIZE = {"voc_aug": voc_config.DATASET.crop_size, "cityscapes": cityscapes_config.DATASET.crop_size}
GET_CONFIG = {"voc_aug": voc_config.get_config, "cityscapes": cityscapes_config.get_config}
CITYSCAPES_SIZE = (2048, 1024)
CITIES = ("aachen", "bochum", "bremen")


def _scene(index: int) -> tuple[np.ndarray, np.ndarray]:
    image, label = shapes.render_scene(0, "train", index)
    size = (500, 375)
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


def write_voc_aug_tree(root: str, num_images: int) -> None:
    """VOC 2012 (half the images, palette PNGs) and SBD (the other half, GTcls .mat) in their real layouts."""
    voc, sbd = os.path.join(root, "VOCdevkit/VOC2012"), os.path.join(root, "benchmark_RELEASE/dataset")
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, folder), exist_ok=True)
    for folder in ("img", "cls"):
        os.makedirs(os.path.join(sbd, folder), exist_ok=True)
    voc_ids, sbd_ids = [], []
    for index in range(num_images):
        image, label = _scene(index)
        image_id = f"2008_{index:06d}"
        if index % 2:
            Image.fromarray(image).save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=90)
            png = Image.fromarray(label, mode="P")
            png.putpalette(np.random.default_rng(0).integers(0, 256, 768).tolist())
            png.save(os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
            voc_ids.append(image_id)
        else:
            Image.fromarray(image).save(os.path.join(sbd, "img", f"{image_id}.jpg"), quality=90)
            scipy.io.savemat(os.path.join(sbd, "cls", f"{image_id}.mat"),
                             {"GTcls": {"Segmentation": np.where(label == 255, 0, label)}})
            sbd_ids.append(image_id)
    val = voc_ids[:2]
    for path, ids in ((os.path.join(voc, "ImageSets/Segmentation/train.txt"), voc_ids[2:]),
                      (os.path.join(voc, "ImageSets/Segmentation/val.txt"), val),
                      (os.path.join(sbd, "train.txt"), sbd_ids), (os.path.join(sbd, "val.txt"), [])):
        with open(path, "w") as f:
            f.writelines(f"{i}\n" for i in ids)


def write_cityscapes_tree(root: str, num_images: int) -> None:
    """leftImg8bit (RGB PNG) and gtFine (labelIds PNG) of 2048x1024 in the real layout; one validation image."""
    rng = np.random.default_rng(0)
    # the scenes' 21 classes (and 255 void) as Cityscapes label ids: ids with and without a trainId, 0 unlabeled
    label_ids = np.zeros(256, np.uint8)
    label_ids[:21] = [0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33, 4]
    for index in range(num_images + 1):
        split, city = ("val", "frankfurt") if index == num_images else ("train", CITIES[index % len(CITIES)])
        image, label = shapes.render_scene(0, "train", index)
        image = np.asarray(Image.fromarray(image).resize(CITYSCAPES_SIZE, Image.BILINEAR), np.float32)
        image = np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)  # about 2 MB as PNG
        label = np.asarray(Image.fromarray(label).resize(CITYSCAPES_SIZE, Image.NEAREST))
        image_id = f"{city}_{index:06d}_000019"
        for folder, name, array in (("leftImg8bit", f"{image_id}_leftImg8bit.png", image),
                                    ("gtFine", f"{image_id}_gtFine_labelIds.png", label_ids[label])):
            os.makedirs(os.path.join(root, folder, split, city), exist_ok=True)
            Image.fromarray(array).save(os.path.join(root, folder, split, city, name))


def loader_rate(source, workers: int, batches: int, batch_size: int, crop_size: int) -> float:
    loader = pipeline.train_loader(source, global_batch_size=batch_size, crop_size=crop_size, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes) not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batch_size * batches / (time.perf_counter() - start)


def cpu_seconds_per_image(source, crop_size: int, count: int = 8) -> float:
    """CPU time (this process, so less sensitive to other jobs than wall time) to decode and augment one image."""
    transform, rng = pipeline.TrainTransform(crop_size), np.random.default_rng(0)
    start = time.process_time()
    for index in range(count):
        transform.random_map(source[index % len(source)], rng)
    return (time.process_time() - start) / count


def step_rate(dataset: str, depth: int, batch_size: int) -> float:
    config = GET_CONFIG[dataset](f"difnet{depth}")
    crop = config.data.crop_size
    trainer = train.Trainer(config, num_classes=21)
    state = trainer.initial_state(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = trainer.global_batch({"image": rng.normal(size=(batch_size, crop, crop, 3)).astype(np.float32),
                                  "label": rng.integers(0, 21, (batch_size, crop, crop)).astype(np.int32)})
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    return batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    start, load = time.perf_counter(), os.getloadavg()
    dataset, batch_size, crop = _DATASET.value, _BATCH_SIZE.value, CROP_SIZE[_DATASET.value]
    with tempfile.TemporaryDirectory() as tmp:
        manual_dir, data_dir = os.path.join(tmp, "manual"), os.path.join(tmp, "tfds")
        if dataset == "cityscapes":
            write_cityscapes_tree(manual_dir, _NUM_IMAGES.value)
            image_size = "x".join(map(str, CITYSCAPES_SIZE))
        else:
            write_voc_aug_tree(manual_dir, _NUM_IMAGES.value)
            image_size = "500x375"
        prepare_start = time.perf_counter()
        pipeline.prepare(dataset, data_dir, manual_dir)
        prepare_seconds = time.perf_counter() - prepare_start
        source = pipeline.source(dataset, "train", data_dir)
        rates = {w: loader_rate(source, int(w), _BATCHES.value, batch_size, crop) for w in _WORKERS.value}
        rows = [f"| grain train loader, {w} worker(s) | {rate:.1f} |" for w, rate in rates.items()]
        cpu_seconds = cpu_seconds_per_image(source, crop)
        rows.append(f"| decode + augment in one thread: {cpu_seconds:.2f} CPU s per image, i.e. per free core | "
                    f"{1 / cpu_seconds:.1f} |")
    device = jax.devices()[0]
    rows += [f"| DifNet-{d} train step (fwd+bwd, batch {batch_size}, {device.platform}) | "
             f"{step_rate(dataset, int(d), batch_size):.2f} |" for d in _DEPTHS.value if d]
    flags_text = (f"--dataset={dataset} --num_images={_NUM_IMAGES.value} --workers={','.join(_WORKERS.value)} "
                  f"--depths={','.join(_DEPTHS.value)} --batch_size={batch_size} --batches={_BATCHES.value}")
    text = "\n".join([
        f"## Input pipeline vs. train step, {dataset}, crop {crop} ({datetime.date.today()}, {platform.node()}, "
        f"{os.cpu_count()} CPU cores, {device.device_kind})",
        "",
        f"Command: `python -m benchmarks.input_pipeline {flags_text}`",
        "",
        f"{dataset} prepare of {len(source)} train images of {image_size}: {prepare_seconds:.1f} s. "
        f"Loader: {_BATCHES.value} batches of {batch_size} timed after the first. {report.conditions(start, load)} "
        f"Load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| what | images/s |",
        "| --- | --- |",
        *rows,
        "",
    ])
    if _OUTPUT.value:
        report.append_section(_OUTPUT.value, text)
    else:
        print("\n" + text)


if __name__ == "__main__":
    app.run(main)
