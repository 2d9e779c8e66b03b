"""The grain input pipeline over `tfds.data_source` (array_record, no TensorFlow).

Train: random scale, pad (image with the mean colour, label with 255), random crop,
random horizontal flip, normalisation; shuffled, repeated, sharded per host, batched.
Evaluation batches (padded canvases, void fillers) are made by `difnet_jax.evaluation.evaluator`,
the one evaluator, from `source` and the `pad_to` / `normalize` here.

Decoding: `source`'s records come decoded by TFDS's `Image` feature, which uses OpenCV (`cv2.imdecode`, then
BGR -> RGB) when it is installed, as it is here (requirements.txt: opencv-python-headless), and PIL otherwise;
both give the same pixels for the 8-bit PNGs, JPEGs and BMPs the builders store (BMP: images prepared with
`image_storage` "uncompressed", which skips the decode's cost). The train loader reads the records
undecoded (`encoded_images`) and `TrainTransform` decodes them with OpenCV itself: the same pixels without
TFDS's copies (a per-pixel `np.repeat` of every label, BGR -> RGB of the whole image rather than of the crop).
Importing this module calls `cv2.setNumThreads(0)`: OpenCV then runs every function in the calling thread,
so grain's worker processes (one per core) do not each start a pool of OpenCV threads and oversubscribe the CPUs.
"""

from __future__ import annotations

import dataclasses
import logging

import cv2
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources.base import BaseDataSource

import difnet_jax.data  # noqa: F401  (registers the builders)
from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import image_storage as _storage
from difnet_jax.data import tfds_side_effects
from difnet_jax.data.normalization import Normalization

cv2.setNumThreads(0)  # see the module's docstring: one thread per grain worker

# config `data.name` -> TFDS builder name, where they differ: TFDS registers `cityscapes` and
# `scene_parse150` itself (generated through TensorFlow), so the project's builders have names of their own.
DATASET_NAMES = {
    "ade20k": "ade20k_scene_parsing",
    "person_part": "pascal_person_part",
    "cityscapes": "cityscapes_fine",
}


def builder_name(data_name: str) -> str:
    """The TFDS builder name (and config) of a config's `data.name`: "ade20k" -> "ade20k_scene_parsing"."""
    dataset, slash, config = data_name.partition("/")
    return DATASET_NAMES.get(dataset, dataset) + slash + config


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            image_storage: str | None = None) -> tfds.core.DatasetBuilder:
    """Builds the dataset `name` (a `data.name` or TFDS name) in `data_dir` as array_record unless it is there.

    A dataset read from downloaded archives (its builder has MANUAL_DOWNLOAD_INSTRUCTIONS) is built only
    when `manual_dir` is given; otherwise `DatasetNotPreparedError` names the dataset, the folder looked
    in and the prepare command, and nothing is created (`builder.is_prepared()` only reads; no temp folder
    either: `tfds_side_effects`). Generated datasets (synthetic_shapes) build themselves. TFDS's "Downloading
    and preparing dataset Unknown size" print (this project's builders download nothing) is replaced by one log
    line, and its progress bars by plain lines where stderr is not a terminal.

    `image_storage` (`image_storage.STORAGES`; downloaded datasets only): how a build stores the images; a dataset
    already prepared must record that storage, or ConfigError says what it holds and what to run, and nothing
    is written. None: whatever is prepared (logged), and "released" for a build.
    """
    builder = tfds.builder(builder_name(name), data_dir=data_dir or None, file_format="array_record")
    manual = bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
    if image_storage is not None and not manual and _storage.check(image_storage) != _storage.RELEASED:
        from difnet_jax.user_errors import ConfigError

        raise ConfigError(f"image_storage={image_storage!r} applies to the downloaded datasets; {name!r} is "
                          f"generated and stores its images as PNG ({_storage.RELEASED!r})")
    if builder.is_prepared():
        recorded = _storage.recorded(builder.info.metadata)
        if image_storage is not None and image_storage != recorded:
            raise _storage_mismatch(name, builder, image_storage, recorded)
        if manual:
            logging.getLogger(__name__).info("%s in %s: images stored %s", name, builder.data_dir, recorded)
        return builder
    if manual and not manual_dir:
        from difnet_jax.user_errors import DatasetNotPreparedError

        raise DatasetNotPreparedError(_not_prepared_message(name, builder))
    logging.getLogger(__name__).info("Preparing %s in %s (once: later runs reuse it)", name, builder.data_dir)
    if manual:
        builder = tfds.builder(builder_name(name), data_dir=data_dir or None, file_format="array_record",
                               image_storage=image_storage or _storage.RELEASED)
    builder._log_download_bytes = builder._log_download_done = lambda: None  # TFDS's own size prints
    with tfds_side_effects.plain_progress():  # no bar redraws in a redirected log
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
    return builder


def _storage_mismatch(name: str, builder: tfds.core.DatasetBuilder, asked: str, recorded: str) -> Exception:
    from difnet_jax.user_errors import ConfigError

    return ConfigError(
        f"dataset {name!r} in data_dir {builder.data_dir_root} is prepared with image_storage={recorded!r}, not "
        f"{asked!r} as asked: read it as it is (--image_storage={recorded}), or prepare {asked} into another data_dir "
        f"(`python -m experiments.prepare_data --dataset={name} --image_storage={asked} "
        f"--manual_dir=FOLDER_WITH_ITS_ARCHIVES --data_dir=OTHER_DIR`) or after deleting {builder.data_dir}")


def _not_prepared_message(name: str, builder: tfds.core.DatasetBuilder) -> str:
    return (f"dataset {name!r} is not prepared in data_dir {builder.data_dir_root} (no {builder.data_dir}): "
            f"prepare it once with `python -m experiments.prepare_data --dataset={name} "
            f"--manual_dir=FOLDER_WITH_ITS_ARCHIVES --data_dir={builder.data_dir_root}`, "
            "or set config.data.manual_dir=FOLDER_WITH_ITS_ARCHIVES to prepare it before training")


def class_names(builder: tfds.core.DatasetBuilder) -> list[str]:
    return list(builder.info.metadata["class_names"])


def source(name: str, split: str, data_dir: str | None = None):
    """The random-access records of `split` of the prepared dataset `name` (a `data.name` or TFDS name)."""
    return tfds.data_source(builder_name(name), split=split, data_dir=data_dir or None)


def encoded_images(data_source):
    """`data_source` reading each record's image and label as their stored PNG / JPEG / BMP bytes, where it is a TFDS
    source that decodes them (as `source`'s do); any other source as it is. `TrainTransform` decodes bytes."""
    if isinstance(data_source, BaseDataSource) and not data_source.decoders:
        return dataclasses.replace(data_source, decoders={"image": tfds.decode.SkipDecoding(),
                                                          "label": tfds.decode.SkipDecoding()})
    return data_source


def _decode(data: bytes, flags: int) -> np.ndarray:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise ValueError(f"a record's image or label ({len(data)} bytes) is not a readable PNG, JPEG or BMP")
    return array


def _label_2d(label: np.ndarray) -> np.ndarray:
    return label[..., 0] if label.ndim == 3 else label


def normalize(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """uint8 RGB images (any leading shape) -> the float32 network input: `normalization.apply`
    (config.data.normalization, `normalization.of_config`: required, each variant reads its own input)."""
    return normalization.apply(image)


def _pad(image: np.ndarray, label: np.ndarray, bottom: int, left: int, right: int, fill: tuple[int, int, int]):
    """image (uint8 RGB) padded with `fill` and label with 255: `bottom` rows, `left` / `right` columns."""
    image = cv2.copyMakeBorder(image, 0, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
    if label.dtype == np.uint8:  # as the builders store labels; OpenCV's padding is the faster
        return image, cv2.copyMakeBorder(label, 0, bottom, left, right, cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
    return image, np.pad(label, ((0, bottom), (left, right)), constant_values=IGNORE_LABEL)


def pad_to(image: np.ndarray, label: np.ndarray, height: int, width: int, normalization: Normalization):
    """Pads bottom/right to at least (height, width): image (uint8 RGB) with `normalization.fill` (the mean colour,
    0 once normalised), label with 255."""
    pad_y, pad_x = max(height - image.shape[0], 0), max(width - image.shape[1], 0)
    if pad_y or pad_x:
        image = cv2.copyMakeBorder(image, 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT, value=normalization.fill)
        label = np.pad(label, ((0, pad_y), (0, pad_x)), constant_values=IGNORE_LABEL)
    return image, label


def nearest_indices(size: int, scaled_size: int) -> np.ndarray:
    """The source index of each of the `scaled_size` pixels of an axis of `size` pixels resized by nearest neighbour.

    Pixel i of the resized axis samples the source at (i + 0.5) * size / scaled_size (pixel centres), i.e. the source
    pixel floor((i + 0.5) * size / scaled_size). The position is accumulated in float64 one step at a time, as PIL's
    `resize(..., NEAREST)` does, so that the indices are PIL's exactly (they differ from the closed form for some
    sizes where a position falls within rounding of an integer).
    """
    step = size / scaled_size
    positions = np.full(scaled_size, step)
    positions[0] = step * 0.5
    return np.minimum(np.floor(np.add.accumulate(positions)).astype(np.intp), size - 1)


def scaled_crop(image: np.ndarray, label: np.ndarray, scaled_size: tuple[int, int], top: int, left: int,
                crop_size: int, flip: bool = False, *, fill: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The crop_size x crop_size window at (top, left) of `image` and `label` resized to `scaled_size`, computed alone.

    Same result as resizing the whole image and label to scaled_size = (height, width), padding them bottom/right to
    at least crop_size (image with `fill`, the input's mean colour `Normalization.fill`, label with 255), cropping
    at (top, left) and, if `flip`, mirroring the crop left-right; but only the window's pixels are interpolated.

    The image is resampled bilinearly from the source pixels around each window pixel's centre, mapped back as
    (x + 0.5) * width_in / width_out - 0.5 (the pixel-centre convention of cv2.resize and PIL): `cv2.warpAffine`,
    INTER_LINEAR, edges replicated: `cv2.resize(..., INTER_LINEAR)` of the whole image up to warpAffine's sampling
    positions, which are rounded to 1/32 pixel (a difference of at most 1 + (dx + dy) / 64 grey levels, dx and dy
    the largest steps between horizontal and vertical neighbours in the source: up to 6 at the hard edges of the
    synthetic scenes, 1 on the benchmark's smooth, noisy 2048x1024 ones). Like cv2.resize and unlike PIL's
    BILINEAR, downscaling does not low-pass filter first: a window pixel blends the 2x2 source pixels around its
    centre at any scale.
    The label takes the nearest source pixel on the same grid (`nearest_indices`), exactly as PIL's NEAREST resize
    of the whole label.
    Returns (uint8 (crop_size, crop_size, 3), (crop_size, crop_size) of the label's dtype).
    """
    in_height, in_width = image.shape[:2]
    scaled_height, scaled_width = scaled_size
    height, width = min(crop_size, scaled_height - top), min(crop_size, scaled_width - left)  # inside the image
    if height <= 0 or width <= 0:
        raise ValueError(f"window at ({top}, {left}) lies outside the scaled image {scaled_size}")
    ry, rx = in_height / scaled_height, in_width / scaled_width
    rows = nearest_indices(in_height, scaled_height)[top : top + height]
    cols = nearest_indices(in_width, scaled_width)[left : left + width]
    if flip:  # window column x shows scaled column left + width - 1 - x
        matrix = [[-rx, 0.0, (left + width - 0.5) * rx - 0.5], [0.0, ry, (top + 0.5) * ry - 0.5]]
        cols = cols[::-1]
    else:
        matrix = [[rx, 0.0, (left + 0.5) * rx - 0.5], [0.0, ry, (top + 0.5) * ry - 0.5]]
    window = cv2.warpAffine(image, np.array(matrix), (width, height),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    window_label = label.take(rows, axis=0).take(cols, axis=1)
    if height == width == crop_size:
        return window, window_label
    # the scaled image ends inside the window: the rest is padding, on the right (on the left once mirrored)
    pad_x = crop_size - width
    return _pad(window, window_label, crop_size - height, pad_x if flip else 0, 0 if flip else pad_x, fill)


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Random scale in [min_scale, max_scale), pad, random crop, random flip; uint8 RGB out, normalised on the device.

    Draws, in this order: the scale s (uniform), the crop's top and left (uniform over the positions of a
    crop_size window in the image resized to round(s * size) and padded to at least crop_size), and the flip
    (probability 1/2). Only the window is resampled (`scaled_crop`: OpenCV bilinear for the image, nearest for the
    label), padding with `normalization.fill` (the colour nearest to 0 once normalised). The image comes out uint8
    RGB, not normalised: the train step normalises it on the device (`Normalization.apply_on_device`, the values of
    `normalize` exactly), so grain's worker processes pass, and the host sends the device, a quarter of float32's
    bytes. The element's image and label are arrays (RGB; (H, W) or
    (H, W, 1)) or their PNG / JPEG / BMP bytes (`encoded_images`), decoded here by OpenCV: the image in 8-bit colour,
    its EXIF orientation ignored as TFDS and PIL do, so that it stays on its label's grid.

    Until this change the whole image was resized with PIL (BILINEAR, which low-pass filters when downscaling)
    and then cropped: the same draws give the same windows, flips and labels (exactly); image pixels agree
    within `scaled_crop`'s bound where s >= 1 and differ more where s < 1, OpenCV's bilinear not low-pass
    filtering (as in DeepLab's Caffe data layer, mmsegmentation and albumentations, all OpenCV's). PIL's
    resampling of the window alone (`resize(..., box=...)`) would keep the old pixels but costs 5-10 ms per
    769 crop of a 2048x1024 image here, against 1.5 ms for warpAffine.
    """

    crop_size: int
    min_scale: float = 0.5
    max_scale: float = 1.5
    # config.data.normalization (`normalization.of_config`): required, so that no path pads with another's colour
    normalization: Normalization = dataclasses.field(kw_only=True)
    scale_step: float = 0.0  # config.data.scale_step: 0 = any scale in [min_scale, max_scale)

    def draw_scale(self, rng: np.random.Generator) -> float:
        """Uniform in [min_scale, max_scale), or with `scale_step` > 0 one of min_scale, min_scale + step, ...,
        max_scale, each equally likely (the DeepLabv3+ reference: `preprocess_utils.get_random_scale`)."""
        if self.scale_step <= 0:
            return rng.uniform(self.min_scale, self.max_scale)
        scales = np.linspace(self.min_scale, self.max_scale,
                             int((self.max_scale - self.min_scale) / self.scale_step + 1 + 1e-9))
        return float(scales[rng.integers(len(scales))])

    def random_map(self, element, rng: np.random.Generator):
        image, label = element["image"], element["label"]
        bgr = isinstance(image, bytes)  # OpenCV decodes to B, G, R: made R, G, B once cropped
        if bgr:
            image = _decode(image, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if isinstance(label, bytes):
            label = _decode(label, cv2.IMREAD_UNCHANGED)
        label = _label_2d(label)
        crop = self.crop_size
        scale = self.draw_scale(rng)
        height, width = max(int(image.shape[0] * scale + 0.5), 1), max(int(image.shape[1] * scale + 0.5), 1)
        top = rng.integers(0, max(height, crop) - crop + 1)
        left = rng.integers(0, max(width, crop) - crop + 1)
        flip = rng.uniform() < 0.5
        fill = self.normalization.fill[::-1] if bgr else self.normalization.fill
        image, label = scaled_crop(image, label, (height, width), int(top), int(left), crop, bool(flip), fill=fill)
        if bgr:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return {"image": image, "label": label.astype(np.int32)}


def train_loader(
    data_source, *, global_batch_size: int, crop_size: int, scale_range=(0.5, 1.5), seed: int = 0,
    normalization: Normalization, num_workers: int = 0, scale_step: float = 0.0, read_threads: int = 2,
) -> grain.DataLoader:
    """An endless, shuffled loader yielding this host's share of each global batch: 'image' uint8 RGB (B, H, W, 3),
    normalised by the train step on the device, 'label' int32 (B, H, W). Each loader process reads records ahead
    with `read_threads` threads, `read_threads` batches in flight (grain's default, 16 threads and 500 records, made
    the loader up to 2x slower on 2 cores reading local disk: BENCHMARKS.md, I4).

    Its iterator's `get_state()`/`set_state()` let a resumed run see exactly the
    batches it would have seen. A TFDS source is read undecoded (`encoded_images`): `TrainTransform` decodes.
    """
    data_source = encoded_images(data_source)
    num_hosts = jax.process_count()
    if global_batch_size % num_hosts:
        raise ValueError(f"train.batch_size={global_batch_size} is not divisible by the {num_hosts} hosts")
    shard = grain.sharding.ShardOptions(jax.process_index(), num_hosts, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(data_source), shard_options=shard, shuffle=True, num_epochs=None, seed=seed
    )
    return grain.DataLoader(
        data_source=data_source,
        sampler=sampler,
        operations=[
            TrainTransform(crop_size, *scale_range, normalization=normalization, scale_step=scale_step),
            grain.transforms.Batch(global_batch_size // num_hosts, drop_remainder=True),
        ],
        worker_count=num_workers,
        read_options=grain.ReadOptions(num_threads=read_threads,
                                       prefetch_buffer_size=read_threads * (global_batch_size // num_hosts)),
    )
