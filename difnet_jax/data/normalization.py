"""The network's input: how uint8 RGB images become the float32 arrays a ResNet reads (`config.data.normalization`).

Every image arrives as uint8 RGB (the TFDS decoders, `predict`'s PIL). Two normalisations:
- "imagenet": RGB, (x - mean) / std with torchvision's ImageNet mean and std on the 0..255 scale; what
  torchvision's ResNets (`model.backbone_init`) were trained on.
- "caffe_bgr": the DifNet authors' input (github sdujump/DifNet, dataset.py): the image loaded as BGR
  (`pil_loader(path, 'BGR')`), then `F.normalize(img, [104.00698793, 116.66876762, 122.67891434], [1.0, 1.0, 1.0])`,
  i.e. the Caffe ImageNet mean (B, G, R) subtracted on the 0..255 scale and no scaling.
Padding fills images with `fill`, the uint8 RGB colour nearest to 0 once normalised (the mean colour), as the
pipeline always has. Our choice: the authors pad their images with black before normalising (`F.pad`'s default
fill 0 in JointPad / PadForTest); padding stays the mean colour here for both normalisations.
"""

from __future__ import annotations

import dataclasses
import functools

import cv2
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from difnet_jax.user_errors import require


@functools.cache
def _table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(1, 256, 3) float32: entry [0, v, c] = (v - mean[c]) / std[c], computed in float32 as the arithmetic is."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    table = ((np.arange(256, dtype=np.float32)[:, None] - mean32) / std32)[None].astype(np.float32)
    table.flags.writeable = False
    return table


@dataclasses.dataclass(frozen=True)
class Normalization:
    """uint8 RGB -> network input, and back.

    mean, std: per channel of the network's input, in its channel order (B, G, R when `bgr`), 0..255 scale.
    bgr: the network reads the channels reversed (B, G, R).
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    bgr: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """float32 (image[..., ::-1] if bgr - mean) / std, any leading shape (..., 3), channels last.

        uint8 (..., W, 3) images are looked up in a 256-entry table per channel (`cv2.LUT`: one pass, the same
        float32 values as the arithmetic, which other inputs go through).
        """
        image = np.asarray(image)
        if self.bgr:
            image = image[..., ::-1]
        if image.dtype == np.uint8 and image.ndim >= 3 and image.shape[-1] == 3 and image.size:
            rows = np.ascontiguousarray(image).reshape(-1, image.shape[-2], 3)
            return cv2.LUT(rows, _table(self.mean, self.std)).reshape(image.shape)
        return (np.asarray(image, np.float32) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

    def apply_on_device(self, images):
        """`apply` of uint8 (..., 3) images inside a jitted function: the same 256-entry table, indexed per channel
        (jnp), so the float32 values are `apply`'s exactly. The train loader hands the step uint8 crops (a quarter of
        float32's bytes through grain's worker processes and to the device) and the step normalises them here.
        With a unit std (caffe_bgr) the table's entries are float32(v) - mean: computed as that subtraction, the same
        values without the gather (issue 31: 2.6 ms of a 300 ms synthetic DifNet-18 step); a division by another
        std is not, as XLA multiplies by its reciprocal, so those keep the table (tests/test_pipeline_transform.py)."""
        if self.bgr:
            images = images[..., ::-1]
        if all(s == 1.0 for s in self.std):
            return images.astype(jnp.float32) - jnp.asarray(self.mean, jnp.float32)
        table = jnp.asarray(_table(self.mean, self.std)[0])  # (256, 3)
        return table[images.astype(jnp.int32), jnp.arange(3)]

    def invert(self, images: np.ndarray) -> np.ndarray:
        """Inverse of `apply`: float32 RGB colours on 0..255 (not rounded or clipped), any leading shape."""
        colours = (np.asarray(images, np.float32) * np.asarray(self.std, np.float32)
                   + np.asarray(self.mean, np.float32))
        return colours[..., ::-1] if self.bgr else colours

    @property
    def fill(self) -> tuple[int, int, int]:
        """The uint8 RGB colour padding fills images with: the mean rounded, the nearest to 0 after `apply`."""
        rgb = self.mean[::-1] if self.bgr else self.mean
        return tuple(int(np.clip(np.round(v), 0, 255)) for v in rgb)


IMAGENET = Normalization("imagenet", mean=tuple(float(v) for v in IMAGENET_MEAN),
                         std=tuple(float(v) for v in IMAGENET_STD))
# The authors' values to the last digit they wrote (dataset.py), B, G, R.
CAFFE_BGR = Normalization("caffe_bgr", mean=(104.00698793, 116.66876762, 122.67891434), bgr=True)

NORMALIZATIONS = {n.name: n for n in (IMAGENET, CAFFE_BGR)}  # config.data.normalization -> Normalization


def check(value) -> None:
    """ConfigError naming `data.normalization` unless `value` is a name of NORMALIZATIONS."""
    require(isinstance(value, str) and value in NORMALIZATIONS, "data.normalization", value,
            f"one of {tuple(NORMALIZATIONS)}")


def of_config(data: ml_collections.ConfigDict) -> Normalization:
    """The normalisation `config.data` names; "imagenet" for configs saved before the key existed."""
    name = data.get("normalization", IMAGENET.name)
    check(name)
    return NORMALIZATIONS[name]
