"""Atrous ResNets (He et al. 2016) in the DeepLabV2 layout: output stride 8 (or 16).

At output stride 8, layer3 and layer4 keep stride 1 and dilate their 3x3 convolutions
by 2 and 4 (DeepLabV2, Chen et al. 2017), so a 321x321 crop gives a 41x41 feature grid.
At output stride 16 (DeepLabv3+'s training setting) layer3 strides 2 and layer4 dilates
by 2. The same parameters serve both strides, so a network trained at 16 evaluates at 8.
Paddings follow torchvision exactly (conv1 pad 3, max-pool pad 1, 3x3 pad =
dilation), so torchvision weights map one-to-one and the parameter counts equal
torchvision's ResNets without the fc layer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BOTTLENECK_DEPTHS = (50, 101)
# (stride, dilation) of layer1..layer4 at each output stride.
STAGE_STRIDE_DILATION = {
    8: ((1, 1), (2, 1), (1, 2), (1, 4)),
    16: ((1, 1), (2, 1), (2, 1), (1, 2)),
}


def _conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, dtype: Any, name: str):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation, use_bias=False, dtype=dtype, name=name,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    features: int
    stride: int = 1
    dilation: int = 1
    project: bool = False
    norm: Any = nn.BatchNorm
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype)
        y = conv(self.features, 3, stride=self.stride, dilation=self.dilation, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv(self.features, 3, dilation=self.dilation, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.project:
            x = conv(self.features, 1, stride=self.stride, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, dilated), 1x1 expand by 4; torchvision v1.5."""

    features: int
    stride: int = 1
    dilation: int = 1
    project: bool = False
    norm: Any = nn.BatchNorm
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype)
        y = nn.relu(self.norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
        y = conv(self.features, 3, stride=self.stride, dilation=self.dilation, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = conv(self.features * 4, 1, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        if self.project:
            x = conv(self.features * 4, 1, stride=self.stride, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Atrous ResNet-`depth` returning {'stem', 'layer1', ..., 'layer4'} feature maps.

    `width` is the channel count of the stem and layer1 (64 in the paper); smaller
    widths give the quick CPU variants used by the synthetic configs. `frozen_bn`
    normalises with the running statistics in training too and leaves them as they
    are (fine-tuning ImageNet weights with small per-device batches).

    `after_block` maps a block name (`layer4_1` is layer4's second block, the paper's
    "5b") to a callable `(features, *, train) -> features` applied right after that
    block: the seam through which PDN inserts its diffusion module into the backbone.
    A module passed here belongs to the module that built it (its parameters live there).
    """

    depth: int
    width: int = 64
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    frozen_bn: bool = False
    output_stride: int = 8
    after_block: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)

    @nn.compact
    def __call__(self, x, *, train: bool) -> dict[str, jnp.ndarray]:
        if self.depth not in STAGE_SIZES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}")
        if self.output_stride not in STAGE_STRIDE_DILATION:
            raise ValueError(f"ResNet output_stride must be one of {sorted(STAGE_STRIDE_DILATION)}, "
                             f"got {self.output_stride}")
        unknown = set(self.after_block) - {
            f"layer{stage + 1}_{i}" for stage, n in enumerate(STAGE_SIZES[self.depth]) for i in range(n)}
        if unknown:
            raise ValueError(f"after_block names blocks ResNet-{self.depth} does not have: {sorted(unknown)}")
        block = Bottleneck if self.depth in BOTTLENECK_DEPTHS else BasicBlock
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train or self.frozen_bn, momentum=self.bn_momentum,
            epsilon=1e-5, dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        features = {}
        x = _conv(self.width, 7, stride=2, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        features["stem"] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_channels = self.width
        for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
            stride, dilation = STAGE_STRIDE_DILATION[self.output_stride][stage]
            channels = self.width * 2**stage
            for i in range(num_blocks):
                first = i == 0
                x = block(
                    channels,
                    stride=stride if first else 1,
                    dilation=dilation,
                    project=first and (stride != 1 or in_channels != channels * block.expansion),
                    norm=norm,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{i}",
                )(x)
                if f"layer{stage + 1}_{i}" in self.after_block:
                    x = self.after_block[f"layer{stage + 1}_{i}"](x, train=train)
                in_channels = channels * block.expansion
            features[f"layer{stage + 1}"] = x
        return features


ResNet18 = functools.partial(ResNet, depth=18)
ResNet34 = functools.partial(ResNet, depth=34)
ResNet50 = functools.partial(ResNet, depth=50)
ResNet101 = functools.partial(ResNet, depth=101)
