"""Reading one segmentation example from its image and label files, validated, for a TFDS builder.

Every image is decoded with PIL before it is written (and stored as `image_storage` says); every label is decoded
to an (H, W) array of class indices (palette PNGs to their indices, never to colours) and
checked: values in 0..K-1 or 255, same size as the image. A bad example (corrupt
image or label file, label value out of range, size mismatch) stops the build with a
`BadExampleError` naming the file, unless the environment variable
`DIFNET_SKIP_BAD_EXAMPLES=1` is set: then it is left out, with a warning naming it,
and each split logs how many it left out. A build that stops leaves no dataset
behind (TFDS writes into `incomplete.*` and renames it only on success).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import scipy.io
from etils import epath
from PIL import Image

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import image_storage
from difnet_jax.data.builder_base import png_bytes

log = logging.getLogger(__name__)

SKIP_ENV = "DIFNET_SKIP_BAD_EXAMPLES"


class BadExampleError(ValueError):
    """One example's files cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ExampleFiles:
    """Where one example is: its id, image file, and label file with the function decoding it to (H, W) ints."""

    id: str
    image: epath.Path
    label: epath.Path
    read_label: Callable[[epath.Path], np.ndarray]


def skip_bad_examples() -> bool:
    """Whether `DIFNET_SKIP_BAD_EXAMPLES` asks to skip bad examples: "1" yes, unset, "" or "0" no."""
    value = os.environ.get(SKIP_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{SKIP_ENV}={value!r}: expected 1 (skip bad examples) or 0")
    return value == "1"


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
    """The encoded RGB image (the file's own bytes, or 8-bit PNG for a non-RGB or 16-bit file) and its (height, width).

    A 16-bit RGB PNG is mode "RGB" to PIL (which keeps the high byte) but decodes to 16 bits in OpenCV,
    which TFDS and the train pipeline decode with: it is stored re-encoded at 8 bits, as PIL reads it.
    """
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            sixteen_bit_png = data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 and data[24] != 8
            if image.mode != "RGB" or sixteen_bit_png:
                data = png_bytes(np.asarray(image.convert("RGB"))).getvalue()
            return data, (image.height, image.width)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadExampleError(f"{path}: not a readable image ({error})") from error


def read_index_png(path: epath.Path) -> np.ndarray:
    """The class indices of a palette (mode P) or grayscale (mode L) PNG, as an (H, W) uint8 array."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
            mode, indices = image.mode, np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadExampleError(f"{path}: not a readable PNG ({error})") from error
    if mode not in ("P", "L"):
        raise BadExampleError(
            f"{path}: a label PNG must be a palette (P) or grayscale (L) image of class indices, not mode {mode}"
        )
    return indices


def read_png_through_table(path: epath.Path, table: np.ndarray, annotation: str) -> np.ndarray:
    """`table[v]` for each value v of an index PNG: maps a dataset's annotation values to training labels.

    `table` has 256 entries, -1 for the values the dataset's annotations never hold; such a
    value is a BadExampleError naming the file and `annotation`, what the values should be.
    """
    raw = read_index_png(path)
    labels = table[raw]
    if (labels < 0).any():
        raise BadExampleError(f"{path}: values {np.unique(raw[labels < 0])[:10].tolist()} are not {annotation}")
    return labels.astype(np.uint8)


def read_mat_array(path: epath.Path, variable: str, field: str | None = None) -> np.ndarray:
    """The 2-D integer array `variable` (or the struct field `variable.field`) of a MATLAB .mat file."""
    name = f"{variable}.{field}" if field else variable
    try:
        value = scipy.io.loadmat(io.BytesIO(path.read_bytes()), squeeze_me=True, struct_as_record=False)[variable]
        array = np.asarray(getattr(value, field) if field else value)
    except Exception as error:  # scipy raises many types for a corrupt file.
        raise BadExampleError(f"{path}: cannot read {name} from this .mat file ({error!r})") from error
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise BadExampleError(f"{path}: {name} is {array.dtype} of shape {array.shape}, not a 2-D integer array")
    return array


def check_label_values(label: np.ndarray, num_classes: int, path: epath.Path) -> None:
    bad = np.setdiff1d(np.unique(label), [*range(num_classes), IGNORE_LABEL])
    if bad.size:
        raise BadExampleError(
            f"{path}: label values {bad[:10].tolist()} outside 0..{num_classes - 1} and {IGNORE_LABEL}"
        )


def check_same_size(image_size: tuple[int, int], label: np.ndarray, files: ExampleFiles) -> None:
    if tuple(label.shape) != tuple(image_size):
        raise BadExampleError(
            f"{files.label}: label is {label.shape[0]}x{label.shape[1]} but image {files.image} is "
            f"{image_size[0]}x{image_size[1]} (height x width)"
        )


def read_example(files: ExampleFiles, num_classes: int, storage: str = image_storage.RELEASED) -> dict:
    """The TFDS example of `files`: image bytes, label PNG bytes of uint8 indices, id; stored as `storage` says
    (`image_storage`)."""
    image, image_size = read_image(files.image)
    label = files.read_label(files.label)
    check_label_values(label, num_classes, files.label)
    check_same_size(image_size, label, files)
    try:
        image = image_storage.stored_image(image, storage, image_size)
    except image_storage.StorageError as error:
        raise BadExampleError(f"{files.image}: cannot be stored {storage} ({error})") from error
    return {"image": image, "label": image_storage.stored_label(label.astype(np.uint8), storage), "id": files.id}


def generate(examples: Sequence[ExampleFiles], num_classes: int, description: str,
             storage: str = image_storage.RELEASED) -> Iterator[tuple[str, dict]]:
    """Yields (id, example) for TFDS, stopping at a bad example or skipping it (see the module docstring); images
    and labels stored as `storage` says (`image_storage`)."""
    skip = skip_bad_examples()
    skipped = 0
    for index, files in enumerate(examples):
        if index % 1000 == 0:
            log.info("%s: example %d of %d", description, index, len(examples))
        try:
            example = read_example(files, num_classes, storage)
        except BadExampleError as error:
            if not skip:
                error.add_note(f"Set {SKIP_ENV}=1 to leave bad examples out.")
                raise
            skipped += 1
            log.warning("%s: skipping a bad example: %s", description, error)
            continue
        yield files.id, example
    if skipped:
        log.warning("%s: skipped %d bad examples of %d (%s=1)", description, skipped, len(examples), SKIP_ENV)
