"""Input-pipeline throughput: the project's train transform against an albumentations + OpenCV peer, per core,
the grain loader at several worker counts, and the images/s a train step consumes.

For each --dataset, writes a manual_dir in the real layout and prepares it with the project's builder twice, with
each `image_storage` (released: the release's JPEG / PNG bytes; uncompressed: BMP, what the project row reads):
--dataset=voc_aug: VOC 2012 + SBD from synthetic scenes resized to 500x375 (VOC's usual size; JPEG images,
palette-PNG and GTcls .mat labels), crop 321. --dataset=cityscapes: leftImg8bit RGB PNGs of 2048x1024 with mild
noise, so that they are about the real files' 2-3 MB, and gtFine labelIds PNGs, crop 769.

Per core (CPU seconds of this process; OpenCV single-threaded, as `pipeline` sets it), interleaved round by round
so that every way sees the same load:
- project: what the train loader does on a dataset prepared with `--image_storage=uncompressed`: the record's
  bytes (`pipeline.encoded_images`) + `TrainTransform`, which decodes them (OpenCV) and crops before it resizes,
  + `pipeline.normalize` (training normalises on the device instead; counted here so that both sides do the same
  steps); "project, released storage": the same on the default storage;
- peer: what a researcher's albumentations pipeline reads and does: `cv2.imread` of the release's image file (JPEG
  / PNG) and of an 8-bit class-index label PNG (as VOC's SegmentationClassAug or Cityscapes' labelTrainIds files;
  written here from the prepared labels), then albumentations' RandomScale(0.5..1.5, bilinear) +
  PadIfNeeded(crop, mean, bottom-right) + RandomCrop + HorizontalFlip + Normalize (ImageNet mean and std): the same
  steps. "peer on the project's records": the same augmentation after `cv2.imdecode` of the uncompressed records,
  so that project / peer there is the transform's share of the gain. albumentations is not a requirement of the
  project: `pip install albumentations` to get these rows;
- decode alone: the peer's file reads and decodes, and the project's record reads and decodes (no transform);
  decode alone / peer is the most project / peer could reach with a transform costing nothing;
- previous: the released record's bytes decoded with PIL (TFDS's fallback) and the transform as it was before
  issue 23 (the whole image resized with PIL, then padded and cropped).
Then the grain train loader's images/s on the uncompressed records (wall clock, start-up not counted; uint8 crops,
as training receives them) for each --workers count. Measure on a quiet machine (`uptime`): the load average is printed.

  python -m benchmarks.input_pipeline --dataset=voc_aug,cityscapes --workers=0,1,2 --depths= --per_core_images=96
  python -m benchmarks.input_pipeline --dataset=voc_aug --workers=0,1,2 --depths=18 --output=BENCHMARKS.md
"""

from __future__ import annotations

import datetime
import glob
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
from difnet_jax.data import image_storage, pipeline, shapes
from difnet_jax.data.normalization import IMAGENET
from experiments.configs import cityscapes as cityscapes_config
from experiments.configs import voc as voc_config

DATASETS = ("voc_aug", "cityscapes")
_DATASET = flags.DEFINE_list("dataset", ["voc_aug", "cityscapes"], f"Datasets to generate and time, of {DATASETS}.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 0, "Images in each generated train split; 0: 160 voc_aug, 24 "
                                   "cityscapes.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_DEPTHS = flags.DEFINE_list("depths", ["18"], "DifNet depths whose train step is timed (the dataset's crop).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size of the loader and the train step.")
_BATCHES = flags.DEFINE_integer("batches", 16, "Batches timed per worker count.")
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
    loader = pipeline.train_loader(source, global_batch_size=batch_size, crop_size=crop_size, num_workers=workers,
                                   normalization=IMAGENET)
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
    """(augment(image RGB, label) -> albumentations' output, albumentations' version), or None if not installed."""
    try:
        import albumentations as A  # noqa: N812 (its documented name)
    except ImportError:
        return None
    augment = A.Compose([
        A.RandomScale(scale_limit=(-0.5, 0.5), interpolation=cv2.INTER_LINEAR, p=1.0),  # factor 1 + U(-0.5, 0.5)
        A.PadIfNeeded(crop, crop, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=IMAGENET.fill,
                      fill_mask=IGNORE_LABEL),
        A.RandomCrop(crop, crop),
        A.HorizontalFlip(p=0.5),
        A.Normalize(mean=tuple(float(v) for v in IMAGENET_MEAN / 255), std=tuple(float(v) for v in IMAGENET_STD / 255),
                    max_pixel_value=255.0),
    ], seed=0)
    return (lambda image, label: augment(image=image, mask=label)), A.__version__


def release_files(manual_dir: str, source, label_dir: str) -> list[tuple[str, str]]:
    """(image, label) file per record of `source`, in its order: the release's image file, and an 8-bit class-index
    label PNG written into `label_dir` from the record (what researchers' pipelines read: SegmentationClassAug,
    labelTrainIds)."""
    images = {}
    for path in glob.glob(os.path.join(manual_dir, "**", "*.jpg"), recursive=True) + glob.glob(
            os.path.join(manual_dir, "leftImg8bit", "**", "*_leftImg8bit.png"), recursive=True):
        images[os.path.basename(path).removesuffix("_leftImg8bit.png").removesuffix(".jpg")] = path
    os.makedirs(label_dir, exist_ok=True)
    raw = pipeline.encoded_images(source)
    files = []
    for index in range(len(source)):
        record = raw[index]
        image_id = record["id"].decode()
        label_path = os.path.join(label_dir, f"{image_id}.png")
        with open(label_path, "wb") as f:
            f.write(record["label"])
        files.append((images[image_id], label_path))
    return files


def per_core_rates(sources: dict, files: list[tuple[str, str]], crop: int, count: int, previous: bool
                   ) -> tuple[dict[str, float], str | None]:
    """Images per CPU-second of each way over the same examples, in alternating rounds. `sources`: the prepared
    records by storage; `files`: the release's (image, label) files, in the records' order."""
    transform = pipeline.TrainTransform(crop, normalization=IMAGENET)
    raw = {storage: pipeline.encoded_images(source) for storage, source in sources.items()}
    features = sources[image_storage.RELEASED].dataset_info.features

    def read_files(index):
        image_path, label_path = files[index]
        return cv2.imread(image_path, cv2.IMREAD_COLOR), cv2.imread(label_path, cv2.IMREAD_UNCHANGED)

    def decode_records(index):
        record = raw[image_storage.UNCOMPRESSED][index]
        return (cv2.imdecode(np.frombuffer(record["image"], np.uint8), cv2.IMREAD_COLOR),
                cv2.imdecode(np.frombuffer(record["label"], np.uint8), cv2.IMREAD_UNCHANGED))

    def previous_way(index, rng):
        record = raw[image_storage.RELEASED][index]
        image = features["image"].decode_example_np_with_pil(record["image"], 3)
        label = features["label"].decode_example_np_with_pil(record["label"], 1)[..., 0]
        return previous_transform(image, label, crop, rng)

    def project_way(storage, index, rng):  # + normalising on the host: the peer's steps, though training does it
        out = transform.random_map(raw[storage][index], rng)  # on the device
        return pipeline.normalize(out["image"], IMAGENET), out["label"]

    ways = {
        "project": lambda index, rng: project_way(image_storage.UNCOMPRESSED, index, rng),
        "project_released": lambda index, rng: project_way(image_storage.RELEASED, index, rng),
        "decode_files": lambda index, rng: read_files(index),
        "decode_records": lambda index, rng: decode_records(index),
    }
    peer = albumentations_peer(crop)
    if peer is not None:
        def peer_way(decoded):
            image, label = decoded
            return peer[0](cv2.cvtColor(image, cv2.COLOR_BGR2RGB), label)

        ways["peer"] = lambda index, rng: peer_way(read_files(index))
        ways["peer_records"] = lambda index, rng: peer_way(decode_records(index))
    if previous:
        ways["previous"] = previous_way
    seconds, done = dict.fromkeys(ways, 0.0), dict.fromkeys(ways, 0)
    round_size, images = 8, min(len(files), 8)
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
    batch = trainer.global_batch({"image": rng.integers(0, 256, (batch_size, crop, crop, 3), np.uint8),
                                  "label": rng.integers(0, 21, (batch_size, crop, crop)).astype(np.int32)})
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batch)
    jax.block_until_ready(metrics)
    return batch_size / (time.perf_counter() - start)


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def measure(dataset: str, tmp: str, batch_size: int) -> dict:
    """The figures of one dataset: prepare time and size per storage, per-core rates, loader rates, train steps."""
    crop, num_images = CROP_SIZE[dataset], _NUM_IMAGES.value or DEFAULT_IMAGES[dataset]
    manual_dir = os.path.join(tmp, dataset, "manual")
    (write_cityscapes_tree if dataset == "cityscapes" else write_voc_aug_tree)(manual_dir, num_images)
    sources, prepared = {}, {}
    for storage in image_storage.STORAGES:
        data_dir = os.path.join(tmp, dataset, storage)
        start = time.perf_counter()
        builder = pipeline.prepare(dataset, data_dir, manual_dir, storage)
        examples = sum(split.num_examples for split in builder.info.splits.values())
        prepared[storage] = (time.perf_counter() - start, folder_bytes(builder.data_dir) / examples)
        sources[storage] = pipeline.source(dataset, "train", data_dir)
    files = release_files(manual_dir, sources[image_storage.RELEASED], os.path.join(tmp, dataset, "labels"))
    rates, peer_version = per_core_rates(sources, files, crop, _PER_CORE_IMAGES.value, _PREVIOUS.value)
    loader = {w: loader_rate(sources[image_storage.UNCOMPRESSED], int(w), _BATCHES.value, batch_size, crop)
              for w in _WORKERS.value}
    steps = {d: step_rate(dataset, int(d), batch_size) for d in _DEPTHS.value if d}
    return {"crop": crop, "train_images": len(files), "prepared": prepared, "per_core": rates,
            "peer_version": peer_version, "loader": loader, "steps": steps}


def table(results: dict[str, dict], batch_size: int) -> list[str]:
    names = list(results)
    cell = lambda value, fmt="{:.1f}": fmt.format(value) if value is not None else "n/a"
    rows = [("| what | " + " | ".join(f"{n}: {DESCRIPTION[n]}, crop {r['crop']}" for n, r in results.items()) + " |"),
            "| --- |" + " --- |" * len(names)]

    def row(label, values):
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    rate = lambda r, way: r["per_core"].get(way)
    ratio = lambda r, way, to="peer": (rate(r, way) / rate(r, to)) if rate(r, way) and rate(r, to) else None
    version = next((r["peer_version"] for r in results.values() if r["peer_version"]), None)
    peer = f"albumentations {version}" if version else "albumentations (not installed: pip install albumentations)"
    per_second = lambda way: [cell(rate(r, way)) for r in results.values()]
    times = lambda way, to="peer": [cell(ratio(r, way, to), "{:.2f}x") for r in results.values()]
    row("project: TrainTransform on uncompressed records (OpenCV decode of BMP, crop, then resize the window), "
        "images per CPU-second", per_second("project"))
    row(f"peer: cv2.imread of the release's image and label files + {peer}, images per CPU-second",
        per_second("peer"))
    row("**project / peer** (target >= 1.5)", [f"**{cell(ratio(r, 'project'), '{:.2f}x')}**" for r in results.values()])
    row("project on released records (the default storage: JPEG / PNG), images per CPU-second",
        per_second("project_released"))
    row("project on released records / peer", times("project_released"))
    row(f"peer on the project's uncompressed records (cv2.imdecode + {peer}), images per CPU-second",
        per_second("peer_records"))
    row("project / peer, both on uncompressed records (the transform's share)", times("project", "peer_records"))
    row("decode alone: the peer's (cv2.imread of the release's image and label files), images per CPU-second",
        per_second("decode_files"))
    row("decode alone: the project's (uncompressed record read + cv2.imdecode of image and label), images per "
        "CPU-second", per_second("decode_records"))
    row("ceiling of project / peer (a transform costing nothing): decode alone on release files / peer",
        times("decode_files"))
    row("ceiling of project / peer with uncompressed records: project's decode alone / peer", times("decode_records"))
    if _PREVIOUS.value:
        row("previous project (PIL decode of released records, whole image resized then cropped), images per "
            "CPU-second", per_second("previous"))
        row("previous / peer", times("previous"))
    for workers in _WORKERS.value:
        row(f"grain train loader on uncompressed records, {workers} worker(s), images/s (wall clock)",
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
    prepared = "; ".join(
        f"{n}: {r['train_images']} train images, prepared " + ", ".join(
            f"{storage} in {seconds:.1f} s ({size / 2**20:.2f} MiB per example)"
            for storage, (seconds, size) in r["prepared"].items()) for n, r in results.items())
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
