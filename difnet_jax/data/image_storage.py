"""How a prepared dataset stores its images: "released" (the release's own JPEG / PNG bytes) or "uncompressed" (BMP).

Chosen when a downloaded dataset is prepared (`experiments.prepare_data --image_storage`, `pipeline.prepare`) and
recorded in the prepared dataset's metadata (`METADATA_KEY`; a dataset without it, prepared before the choice
existed, is "released", which is what it holds).
- released (default): images as the release's files (JPEG; Cityscapes' PNG), labels as PNG (PIL's settings).
  Compact; every read pays a full JPEG / PNG decode.
- uncompressed: each image is decoded once, at prepare time, with OpenCV exactly as the train pipeline decodes a
  released record (`cv2.imdecode`, 8-bit colour, EXIF orientation ignored) and stored as uncompressed 24-bit BMP,
  so training reads the same pixels without the decode; labels as PNG with the fastest-decoding settings (zlib
  level 1, no row filters), still a few KB to tens of KB; array_record files written uncompressed
  (`uncompressed_records`). About 3 bytes per pixel on disk: a 2048x1024 Cityscapes image 6.3 MB (2-3 MB as
  released), a 500x375 VOC image 0.56 MB (about 0.1 MB as JPEG).
Measured (one core, OpenCV 4.14, a 2048x1024 RGB image): decode of its PNG 30 ms, of the same pixels as BMP 0.4 ms,
as uncompressed PNG 11 ms (6 ms without row filters): BMP, not uncompressed PNG, because PNG still checksums and
unfilters every row. Both `cv2.imdecode` and PIL read BMP, so TFDS's decoding, the evaluator and the train
pipeline read either storage unchanged, to the same pixels. TFDS writes array_record with the library's default
compression, which shrinks a 2048x1024 BMP record only from 6.3 to 5.8 MB and makes reading it cost about 8 ms
(0.7 ms a 500x375 one) against 2.5 ms (0.13 ms) uncompressed; array_record reads either.
"""

from __future__ import annotations

import contextlib
import os

import cv2
import numpy as np
from array_record.python import array_record_module
from tensorflow_datasets.core import file_adapters

from difnet_jax.data.builder_base import png_bytes

RELEASED = "released"
UNCOMPRESSED = "uncompressed"
STORAGES = (RELEASED, UNCOMPRESSED)
METADATA_KEY = "image_storage"
DECODE_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # as `pipeline.TrainTransform` decodes images
_LABEL_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class StorageError(ValueError):
    """An image that cannot be stored uncompressed (OpenCV cannot decode what PIL could); the message says why."""


def check(storage: str) -> str:
    """`storage` if it is one of STORAGES; otherwise ValueError naming the value and the choices."""
    if storage not in STORAGES:
        raise ValueError(f"image_storage={storage!r}: expected one of {STORAGES}")
    return storage


def stored_image(data: bytes, storage: str, size: tuple[int, int]) -> bytes:
    """The bytes to store for an image whose released bytes are `data` and (height, width) `size`."""
    if storage == RELEASED:
        return data
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), DECODE_FLAGS)
    if bgr is None or bgr.shape[:2] != tuple(size):
        found = "unreadable" if bgr is None else f"{bgr.shape[0]}x{bgr.shape[1]}"
        raise StorageError(f"OpenCV decodes it as {found}, PIL as {size[0]}x{size[1]} (height x width)")
    return cv2.imencode(".bmp", bgr)[1].tobytes()


def stored_label(label: np.ndarray, storage: str) -> bytes:
    """The PNG bytes to store for an (H, W) uint8 label."""
    if storage == RELEASED:
        return png_bytes(label).getvalue()
    return cv2.imencode(".png", label, _LABEL_PNG)[1].tobytes()


def recorded(metadata) -> str:
    """The storage a prepared dataset's metadata (`builder.info.metadata` of a builder made without
    `image_storage`) records: RELEASED where it records none."""
    return (metadata or {}).get(METADATA_KEY, RELEASED)


class _UncompressedArrayRecord(file_adapters.ArrayRecordFileAdapter):
    """TFDS's array_record writer (one record per group, for random access) without compression."""

    @classmethod
    def write_examples(cls, path, iterator):
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1,uncompressed")
        for _, serialized_example in iterator:
            writer.write(serialized_example)
        writer.close()


@contextlib.contextmanager
def uncompressed_records(storage: str):
    """Within: TFDS writes array_record files uncompressed when `storage` is UNCOMPRESSED (TFDS 4.9's writer looks
    its adapter up in `file_adapters.ADAPTER_FOR_FORMAT` per shard); otherwise as TFDS does."""
    formats = file_adapters.ADAPTER_FOR_FORMAT
    array_record = file_adapters.FileFormat.ARRAY_RECORD
    original = formats[array_record]
    if storage == UNCOMPRESSED:
        formats[array_record] = _UncompressedArrayRecord
    try:
        yield
    finally:
        formats[array_record] = original
