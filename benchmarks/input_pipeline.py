"""Input-pipeline throughput: the project's train transform against an albumentations + OpenCV peer, per core,
the grain loader at several worker counts, and the images/s a train step consumes.

For each --dataset, writes a manual_dir in the real layout and prepares it with the project's builder:
--dataset=voc_aug: VOC 2012 + SBD from synthetic scenes resized to 500x375 (VOC's usual size; JPEG images,
palette-PNG and GTcls .mat labels), crop 321. --dataset=cityscapes: leftImg8bit RGB PNGs of 2048x1024 with mild
noise, so that they are about the real files' 2-3 MB, and gtFine labelIds PNGs, crop 769.

Per core (CPU seconds of this process; OpenCV single-threaded, as `pipeline` sets it), on the same stored records,
interleaved round by round so that both see the same load:
- project: what the train loader does: the record's bytes (`pipeline.encoded_images`) + `TrainTransform`, which
  decodes them (OpenCV) and crops before it resizes;
- peer: the record's bytes, `cv2.imdecode` (+ BGR -> RGB) of image and label, then albumentations'
  RandomScale(0.5..1.5, bilinear) + PadIfNeeded(crop, mean / 255, bottom-right) + RandomCrop + HorizontalFlip +
  Normalize (ImageNet mean and std): the same steps. albumentations is not a requirement of the project:
  `pip install albumentations` to get these rows;
- decode alone: the record's bytes and `cv2.imdecode` of image and label, which both of the above do first; its
  rate over the peer's is the most project / peer could reach with a transform costing nothing;
- previous: the record's bytes decoded with PIL (TFDS's fallback) and the transform as it was before issue 23
  (the whole image resized with PIL, then padded and cropped).
Then the grain train loader's images/s (wall clock, start-up not counted) for each --workers count.

  python -m benchmarks.input_pipeline --dataset=voc_aug,cityscapes --workers=0,1,2 --depths=
  python -m benchmarks.input_pipeline --dataset=voc_aug --workers=0,1,2 --depths=18 --output=BENCHMARKS.md
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time

import cv2
import jax
import numpy as np
import scipy.io
from absl import app, flags
from PIL import Image
from tensorflow_datasets.core.features import image_feature

from benchmarks import report
from difnet_jax import train
from difnet_jax.constants import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD
from difnet_jax.data import pipeline, shapes
from experiments.configs import cityscapes as cityscapes_config
from experiments.configs import voc as voc_config

DATASETS = ("voc_aug", "cityscapes")
_DATASET = flags.DEFINE_list("dataset", ["voc_aug", "cityscapes"], f"Datasets to generate and time, of {DATASETS}.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 0, "Images in each generated train split; 0: 160 voc_aug, 24 "
                                   "cityscapes.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_DEPTHS = flags.DEFINE_list("depths", ["18"], "DifNet depths whose train step is timed (the dataset's crop).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size of the loader and the train step.")
_BATCHES = flags.DEFINE_integer("batches", 8, "Batches timed per worker count.")
_PER_CORE_IMAGES = flags.DEFINE_integer("per_core_images", 64, "Images timed per way in the per-core comparison, "
                                        "in rounds of 8 that alternate the ways.")
_PREVIOUS = flags.DEFINE_bool("previous", True, "Also time the transform as it was before issue 23.")
_OUTPUT = flags.DEFINE_string("output", "", "Markdown file the section is appended to; empty: print only.")

CROP_SIZE = {"voc_aug": voc_config.DATASET.crop_size, "cityscapes": cityscapes_config.DATASET.crop_size}
GET_CONFIG = {"voc_aug": voc_config.get_config, "cityscapes": cityscapes_config.get_config}
DEFAULT_IMAGES = {"voc_aug": 160, "cityscapes": 24}
DESCRIPTION = {"voc_aug": "500x375 JPEG", "cityscapes": "2048x1024 PNG"}
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


def previous_transform(image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator):
    """`pipeline.TrainTransform` before issue 23: the whole image resized (PIL), padded, cropped, flipped."""
    scale = rng.uniform(0.5, 1.5)
    height, width = max(int(image.shape[0] * scale + 0.5), 1), max(int(image.shape[1] * scale + 0.5), 1)
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((width, height), Image.NEAREST))
    pad_y, pad_x = max(crop - height, 0), max(crop - width, 0)
    if pad_y or pad_x:
        padded = np.empty((height + pad_y, width + pad_x, 3), np.uint8)
        padded[:] = IMAGENET_MEAN.round().astype(np.uint8)
        padded[:height, :width] = image
        image = padded
        label = np.pad(label, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_LABEL)
    top = rng.integers(0, image.shape[0] - crop + 1)
    left = rng.integers(0, image.shape[1] - crop + 1)
    image, label = image[top : top + crop, left : left + crop], label[top : top + crop, left : left + crop]
    if rng.uniform() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return {"image": (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD,
            "label": np.ascontiguousarray(label, dtype=np.int32)}


def albumentations_peer(crop: int):
    """(decode + augment of one record's bytes, albumentations' version) the peer's way, or None if not installed."""
    try:
        import albumentations as A  # noqa: N812 (its documented name)
    except ImportError:
        return None
    augment = A.Compose([
        A.RandomScale(scale_limit=(-0.5, 0.5), interpolation=cv2.INTER_LINEAR, p=1.0),  # factor 1 + U(-0.5, 0.5)
        A.PadIfNeeded(crop, crop, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=pipeline.PAD_COLOUR,
                      fill_mask=IGNORE_LABEL),
        A.RandomCrop(crop, crop),
        A.HorizontalFlip(p=0.5),
        A.Normalize(mean=tuple(float(v) for v in IMAGENET_MEAN / 255), std=tuple(float(v) for v in IMAGENET_STD / 255),
                    max_pixel_value=255.0),
    ], seed=0)

    def peer(record):
        image = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        label = cv2.imdecode(np.frombuffer(record["label"], np.uint8), cv2.IMREAD_UNCHANGED)
        return augment(image=image, mask=label)

    return peer, A.__version__


def per_core_rates(source, crop: int, count: int, previous: bool) -> tuple[dict[str, float], str | None]:
    """Images per CPU-second of each way (project, decode, peer, previous) over the same records, in alternating
    rounds."""
    transform, raw_source = pipeline.TrainTransform(crop), pipeline.encoded_images(source)
    features = source.dataset_info.features

    def project(index, rng):
        return transform.random_map(raw_source[index], rng)

    def previous_way(index, rng):
        record = raw_source[index]
        image = features["image"].decode_example_np_with_pil(record["image"], 3)
        label = features["label"].decode_example_np_with_pil(record["label"], 1)[..., 0]
        return previous_transform(image, label, crop, rng)

    def decode_only(index, rng):  # what both project and peer do first: no transform can go below it
        record = raw_source[index]
        image = cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR)
        return image, cv2.imdecode(np.frombuffer(record["label"], np.uint8), cv2.IMREAD_UNCHANGED)

    ways = {"project": project, "decode": decode_only}
    peer = albumentations_peer(crop)
    if peer is not None:
        ways["peer"] = lambda index, rng: peer[0](raw_source[index])
    if previous:
        ways["previous"] = previous_way
    seconds, done = dict.fromkeys(ways, 0.0), dict.fromkeys(ways, 0)
    round_size, images = 8, min(len(source), 8)
    for way in ways.values():  # warm-up, not counted
        way(0, np.random.default_rng(0))
    for round_index in range((count + round_size - 1) // round_size):
        for name, way in ways.items():
            rng = np.random.default_rng(round_index)  # project and previous: the same draws
            start = time.process_time()
            for i in range(round_size):
                way((round_index * round_size + i) % images, rng)
            seconds[name] += time.process_time() - start
            done[name] += round_size
    return {name: done[name] / seconds[name] for name in ways}, (peer[1] if peer else None)


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


def measure(dataset: str, tmp: str, batch_size: int) -> dict:
    """The figures of one dataset: prepare time, per-core rates, loader rates, train-step rates."""
    crop, num_images = CROP_SIZE[dataset], _NUM_IMAGES.value or DEFAULT_IMAGES[dataset]
    manual_dir, data_dir = os.path.join(tmp, dataset, "manual"), os.path.join(tmp, dataset, "tfds")
    (write_cityscapes_tree if dataset == "cityscapes" else write_voc_aug_tree)(manual_dir, num_images)
    prepare_start = time.perf_counter()
    pipeline.prepare(dataset, data_dir, manual_dir)
    prepare_seconds = time.perf_counter() - prepare_start
    source = pipeline.source(dataset, "train", data_dir)
    rates, peer_version = per_core_rates(source, crop, _PER_CORE_IMAGES.value, _PREVIOUS.value)
    loader = {w: loader_rate(source, int(w), _BATCHES.value, batch_size, crop) for w in _WORKERS.value}
    steps = {d: step_rate(dataset, int(d), batch_size) for d in _DEPTHS.value if d}
    return {"crop": crop, "train_images": len(source), "prepare_seconds": prepare_seconds, "per_core": rates,
            "peer_version": peer_version, "loader": loader, "steps": steps}


def table(results: dict[str, dict], batch_size: int) -> list[str]:
    names = list(results)
    cell = lambda value, fmt="{:.1f}": fmt.format(value) if value is not None else "n/a"
    rows = [("| what | " + " | ".join(f"{n}: {DESCRIPTION[n]}, crop {r['crop']}" for n, r in results.items()) + " |"),
            "| --- |" + " --- |" * len(names)]

    def row(label, values):
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    rate = lambda r, way: r["per_core"].get(way)
    ratio = lambda r, way: (rate(r, way) / rate(r, "peer")) if rate(r, way) and rate(r, "peer") else None
    version = next((r["peer_version"] for r in results.values() if r["peer_version"]), None)
    row("project: TrainTransform (OpenCV decode, crop, then resize the window), images per CPU-second",
        [cell(rate(r, "project")) for r in results.values()])
    row(f"peer: cv2.imdecode + albumentations {version or '(not installed: pip install albumentations)'}, "
        "images per CPU-second", [cell(rate(r, "peer")) for r in results.values()])
    row("**project / peer**", [f"**{cell(ratio(r, 'project'), '{:.2f}x')}**" for r in results.values()])
    row("decode alone (record read + cv2.imdecode of image and label, as both do), images per CPU-second",
        [cell(rate(r, "decode")) for r in results.values()])
    row("ceiling of project / peer (a transform costing nothing): decode alone / peer",
        [cell(ratio(r, "decode"), "{:.2f}x") for r in results.values()])
    if _PREVIOUS.value:
        row("previous project (PIL decode, whole image resized then cropped), images per CPU-second",
            [cell(rate(r, "previous")) for r in results.values()])
        row("previous / peer", [cell(ratio(r, "previous"), "{:.2f}x") for r in results.values()])
    for workers in _WORKERS.value:
        row(f"grain train loader, {workers} worker(s), images/s (wall clock)",
            [cell(r["loader"][workers]) for r in results.values()])
    device = jax.devices()[0]
    for depth in (d for d in _DEPTHS.value if d):
        row(f"DifNet-{depth} train step (fwd+bwd, batch {batch_size}, {device.platform}), images/s",
            [cell(r["steps"][depth], "{:.2f}") for r in results.values()])
    return rows


def main(argv):
    del argv
    unknown = set(_DATASET.value) - set(DATASETS)
    if unknown:
        raise app.UsageError(f"--dataset: {sorted(unknown)} not among {DATASETS}")
    start, load = time.perf_counter(), os.getloadavg()
    batch_size = _BATCH_SIZE.value
    with tempfile.TemporaryDirectory() as tmp:
        results = {dataset: measure(dataset, tmp, batch_size) for dataset in _DATASET.value}
    if not any(r["peer_version"] for r in results.values()):
        print("albumentations is not installed: the peer's rows are empty (pip install albumentations)")
    decoder = f"OpenCV {cv2.__version__}" if image_feature.cv2 is not None else "PIL"
    flags_text = (f"--dataset={','.join(_DATASET.value)} --num_images={_NUM_IMAGES.value} "
                  f"--workers={','.join(_WORKERS.value)} --depths={','.join(_DEPTHS.value)} --batch_size={batch_size} "
                  f"--batches={_BATCHES.value} --per_core_images={_PER_CORE_IMAGES.value}")
    prepared = "; ".join(f"{n}: {r['train_images']} train images prepared in {r['prepare_seconds']:.1f} s"
                         for n, r in results.items())
    text = "\n".join([
        f"## Input pipeline per core vs. albumentations + OpenCV, and the grain loader ({datetime.date.today()}, "
        f"{platform.node()}, {os.cpu_count()} CPU cores, {jax.devices()[0].device_kind})",
        "",
        f"Command: `python -m benchmarks.input_pipeline {flags_text}`",
        "",
        f"{prepared}. TFDS decodes (evaluation) with {decoder}. Per core: {_PER_CORE_IMAGES.value} images per way, "
        "CPU time of this process, OpenCV single-threaded, in alternating rounds of 8 over the same records. Loader: "
        f"{_BATCHES.value} batches of {batch_size} timed after the first. {report.conditions(start, load)} Load "
        f"average at the end {os.getloadavg()[0]:.1f}.",
        "",
        *table(results, batch_size),
        "",
    ])
    if _OUTPUT.value:
        report.append_section(_OUTPUT.value, text)
    else:
        print("\n" + text)


if __name__ == "__main__":
    app.run(main)
