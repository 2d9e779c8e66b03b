"""Input-pipeline throughput vs. the train step's consumption rate, on VOC-sized images.

Builds a `voc_aug` manual_dir in the real layout from synthetic scenes resized to 500x375
(VOC's usual size; JPEG images, palette-PNG and GTcls .mat labels), prepares it with the
project's builder, then measures images/s of the grain train loader at crop 321 for several
worker counts, and the images/s a DifNet train step consumes at crop 321 on this machine.

  python -m benchmarks.input_pipeline --num_images=160 --workers=0,1,2 --depths=18
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

from difnet_jax import train
from difnet_jax.data import pipeline, shapes
from experiments.configs.voc import get_config

_NUM_IMAGES = flags.DEFINE_integer("num_images", 160, "Images in the generated train split.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_DEPTHS = flags.DEFINE_list("depths", ["18"], "DifNet depths whose train step is timed (crop 321, batch 16).")
_BATCHES = flags.DEFINE_integer("batches", 20, "Batches of 16 timed per worker count.")


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


def loader_rate(source, workers: int, batches: int) -> float:
    loader = pipeline.train_loader(source, global_batch_size=16, crop_size=321, num_workers=workers)
    iterator = iter(loader)
    next(iterator)  # start-up (worker processes) not counted
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return 16 * batches / (time.perf_counter() - start)


def step_rate(depth: int) -> float:
    config = get_config(f"difnet{depth}")
    trainer = train.Trainer(config, num_classes=21)
    state = trainer.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = trainer.global_batch({"image": rng.normal(size=(16, 321, 321, 3)).astype(np.float32),
                                  "label": rng.integers(0, 21, (16, 321, 321)).astype(np.int32)})
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    return 16 / (time.perf_counter() - start)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        manual_dir, data_dir = os.path.join(tmp, "manual"), os.path.join(tmp, "tfds")
        write_voc_aug_tree(manual_dir, _NUM_IMAGES.value)
        start = time.perf_counter()
        pipeline.prepare("voc_aug", data_dir, manual_dir)
        prepare_seconds = time.perf_counter() - start
        source = pipeline.source("voc_aug", "train", data_dir)
        rows = [f"| grain loader, {w} worker(s) | {loader_rate(source, int(w), _BATCHES.value):.1f} |"
                for w in _WORKERS.value]
    rows += [f"| DifNet-{d} train step (fwd+bwd, batch 16, {jax.devices()[0].platform}) | {step_rate(int(d)):.2f} |"
             for d in _DEPTHS.value]
    print(f"\n## Input pipeline vs. train step, crop 321 ({datetime.date.today()}, {platform.node()}, "
          f"{os.cpu_count()} CPU cores, {jax.devices()[0].device_kind})\n")
    print(f"Command: `python -m benchmarks.input_pipeline --num_images={_NUM_IMAGES.value} "
          f"--workers={','.join(_WORKERS.value)} --depths={','.join(_DEPTHS.value)}`\n")
    print(f"voc_aug prepare of {len(source)} train images of 500x375: {prepare_seconds:.1f} s\n")
    print("| what | images/s |\n| --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
