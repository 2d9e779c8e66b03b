"""Atrous ResNets (He et al. 2016) in the DeepLabV2 layout: output stride 8 (or 16).

At output stride 8, layer3 and layer4 keep stride 1 and dilate their 3x3 convolutions
by 2 and 4 (DeepLabV2, Chen et al. 2017), so a 321x321 crop gives a 41x41 feature grid.
At output stride 16 (DeepLabv3+'s training setting) layer3 strides 2 and layer4 dilates
by 2. The same parameters serve both strides, so a network trained at 16 evaluates at 8.
Paddings follow torchvision exactly (conv1 pad 3, max-pool pad 1, 3x3 pad =
dilation), so torchvision weights map one-to-one and the parameter counts equal
torchvision's ResNets without the fc layer.

Two layouts (`ResNet.layout`, config.model.resnet_layout), with the same parameters:
- "torchvision": torchvision's ResNet (v1.5) made atrous: both 3x3 convs of a BasicBlock
  dilated, a Bottleneck's stride on its 3x3 conv, the stem max-pool rounding down.
- "difnet_authors": the DifNet authors' network (github sdujump/DifNet, model_difnet.py), the
  one the paper's from-scratch numbers come from: a BasicBlock dilates only its second 3x3
  conv (`conv3x3(inplanes, planes, stride)` then `conv3x3(planes, planes, dilation=...)`), a
  Bottleneck strides on its first 1x1 conv (Caffe's layout, marked `# change` there) and the
  stem max-pool rounds up (`ceil_mode=True`, also `# change`). The max-pool differs only where
  the stem's output side is even: an 8k + 1 input gives the same grids in both layouts, a 128
  input a 17x17 layer4 grid in the authors' and 16x16 in torchvision's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from difnet_jax.models.max_pool import max_pool_3x3_stride2

LAYOUTS = ("torchvision", "difnet_authors")
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


class ResidualBlock(nn.Module):
    """What both blocks share: their fields and the shortcut, the input itself or, with `project`, its 1x1
    projection (stride `stride`) to the block's `features * expansion` output channels."""

    features: int
    stride: int = 1
    dilation: int = 1
    project: bool = False
    norm: Any = nn.BatchNorm
    dtype: Any = jnp.float32
    layout: str = "torchvision"
    expansion = 1  # output channels per `features`

    def conv(self, features: int, kernel: int, *, stride: int = 1, dilation: int = 1, name: str):
        """A bias-free convolution in the block's dtype (`_conv`)."""
        return _conv(features, kernel, stride=stride, dilation=dilation, dtype=self.dtype, name=name)

    def shortcut(self, x):
        if not self.project:
            return x
        x = self.conv(self.features * self.expansion, 1, stride=self.stride, name="downsample_conv")(x)
        return self.norm(name="downsample_bn")(x)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut; `layout` "difnet_authors"
    dilates only the second (module docstring)."""

    @nn.compact
    def __call__(self, x):
        first_dilation = self.dilation if self.layout == "torchvision" else 1
        y = self.conv(self.features, 3, stride=self.stride, dilation=first_dilation, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, 3, dilation=self.dilation, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        return nn.relu(self.shortcut(x) + y)


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (dilated), 1x1 expand by 4; the stride on the 3x3 (torchvision v1.5) or, in
    `layout` "difnet_authors", on the first 1x1 (Caffe's ResNet; module docstring)."""

    expansion = 4

    @nn.compact
    def __call__(self, x):
        reduce_stride, conv_stride = (1, self.stride) if self.layout == "torchvision" else (self.stride, 1)
        y = nn.relu(self.norm(name="bn1")(self.conv(self.features, 1, stride=reduce_stride, name="conv1")(x)))
        y = self.conv(self.features, 3, stride=conv_stride, dilation=self.dilation, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * self.expansion, 1, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        return nn.relu(self.shortcut(x) + y)


def _stem_max_pool(x, ceil_mode: bool):
    """3x3 max-pool, stride 2, pad 1 (PyTorch's MaxPool2d(3, 2, 1)); `ceil_mode` rounds the output size up.

    With ceil_mode an even side 2m gives m + 1 windows instead of m: the last window starts on the
    last pixel and reaches one beyond the padding (-inf there, as PyTorch's ceil_mode=True).
    """
    padding = tuple((1, 1 + (ceil_mode and size % 2 == 0)) for size in x.shape[1:3])
    return max_pool_3x3_stride2(x, padding)  # nn.max_pool's values and gradient, without select-and-scatter


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

    `layout` is "torchvision" or "difnet_authors" (module docstring): the same parameters,
    a different network.

    `multi_grid` (DeepLabv3's multi-grid, Chen et al. 2017 Sec. 3.2): one unit rate per layer4
    block; block i dilates its 3x3 convolutions by the stage's dilation times `multi_grid[i]`
    (the DeepLabv3+ reference's block4: `rate * unit_rate`). () = 1 for every block. Only
    dilations change, not parameters.
    """

    depth: int
    width: int = 64
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    frozen_bn: bool = False
    output_stride: int = 8
    layout: str = "torchvision"
    after_block: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
    multi_grid: Sequence[int] = ()

    @nn.compact
    def __call__(self, x, *, train: bool) -> dict[str, jnp.ndarray]:
        if self.depth not in STAGE_SIZES:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_SIZES)}, got {self.depth}")
        if self.output_stride not in STAGE_STRIDE_DILATION:
            raise ValueError(f"ResNet output_stride must be one of {sorted(STAGE_STRIDE_DILATION)}, "
                             f"got {self.output_stride}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ResNet layout must be one of {LAYOUTS}, got {self.layout!r}")
        unknown = set(self.after_block) - {
            f"layer{stage + 1}_{i}" for stage, n in enumerate(STAGE_SIZES[self.depth]) for i in range(n)}
        if unknown:
            raise ValueError(f"after_block names blocks ResNet-{self.depth} does not have: {sorted(unknown)}")
        unit_rates = tuple(self.multi_grid) or (1,) * STAGE_SIZES[self.depth][3]
        if len(unit_rates) != STAGE_SIZES[self.depth][3]:
            raise ValueError(f"multi_grid {tuple(self.multi_grid)} needs one rate per block of ResNet-{self.depth}'s "
                             f"layer4 ({STAGE_SIZES[self.depth][3]})")
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
        x = _stem_max_pool(x, ceil_mode=self.layout == "difnet_authors")
        in_channels = self.width
        for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
            stride, dilation = STAGE_STRIDE_DILATION[self.output_stride][stage]
            channels = self.width * 2**stage
            for i in range(num_blocks):
                first = i == 0
                x = block(
                    channels,
                    stride=stride if first else 1,
                    dilation=dilation * (unit_rates[i] if stage == 3 else 1),
                    project=first and (stride != 1 or in_channels != channels * block.expansion),
                    norm=norm,
                    dtype=self.dtype,
                    layout=self.layout,
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
