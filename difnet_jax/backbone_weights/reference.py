"""A numpy forward pass of a torchvision-layout ResNet state dict: the reference imports are checked against.

Written independently of the Flax modules, straight from torchvision's definition
(NCHW, OIHW kernels, float64, eval-mode BatchNorm with eps 1e-5), with the stage
strides and dilations as arguments: (1, 2, 1, 1) / (1, 1, 2, 4) is this project's
output-stride-8 DeepLabV2 network, (1, 2, 2, 2) / (1, 1, 1, 1) torchvision's own.
Slow, but a 65x65 input through ResNet-101 takes about a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
OUTPUT_STRIDE_8 = ((1, 2, 1, 1), (1, 1, 2, 4))


def conv2d(x: np.ndarray, weight: np.ndarray, *, stride: int = 1, padding: int = 0, dilation: int = 1) -> np.ndarray:
    """torch.nn.functional.conv2d without bias: x (B, C, H, W), weight (O, C, kh, kw)."""
    batch, channels, height, width = x.shape
    _, _, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    columns = np.empty((batch, channels, kh, kw, out_h, out_w), x.dtype)
    for i in range(kh):
        for j in range(kw):
            columns[:, :, i, j] = x[:, :, i * dilation : i * dilation + stride * (out_h - 1) + 1 : stride,
                                    j * dilation : j * dilation + stride * (out_w - 1) + 1 : stride]
    return np.tensordot(columns, weight, axes=([1, 2, 3], [1, 2, 3])).transpose(0, 3, 1, 2)


def batch_norm(x: np.ndarray, sd: Mapping[str, np.ndarray], name: str, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode BatchNorm2d with the running statistics `name.running_mean/var`."""
    def channel(key):
        return np.asarray(sd[f"{name}.{key}"], np.float64)[None, :, None, None]

    return (x - channel("running_mean")) / np.sqrt(channel("running_var") + eps) * channel("weight") + channel("bias")


def max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
    """torch.nn.MaxPool2d(3, stride=2, padding=1)."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    out_h, out_w = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    windows = [x[:, :, i : i + 2 * (out_h - 1) + 1 : 2, j : j + 2 * (out_w - 1) + 1 : 2]
               for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def _block(x, sd, name: str, bottleneck: bool, stride: int, dilation: int):
    relu = lambda v: np.maximum(v, 0.0)
    def weight(key):
        return np.asarray(sd[f"{name}.{key}.weight"], np.float64)

    if bottleneck:
        y = relu(batch_norm(conv2d(x, weight("conv1")), sd, f"{name}.bn1"))
        y = relu(batch_norm(conv2d(y, weight("conv2"), stride=stride, padding=dilation, dilation=dilation), sd,
                            f"{name}.bn2"))
        y = batch_norm(conv2d(y, weight("conv3")), sd, f"{name}.bn3")
    else:
        y = relu(batch_norm(conv2d(x, weight("conv1"), stride=stride, padding=dilation, dilation=dilation), sd,
                            f"{name}.bn1"))
        y = batch_norm(conv2d(y, weight("conv2"), padding=dilation, dilation=dilation), sd, f"{name}.bn2")
    if f"{name}.downsample.0.weight" in sd:
        x = batch_norm(conv2d(x, weight("downsample.0"), stride=stride), sd, f"{name}.downsample.1")
    return relu(x + y)


def resnet_features(sd: Mapping[str, np.ndarray], images_nhwc: np.ndarray, depth: int,
                    strides: Sequence[int] = OUTPUT_STRIDE_8[0],
                    dilations: Sequence[int] = OUTPUT_STRIDE_8[1]) -> dict[str, np.ndarray]:
    """{'stem', 'layer1'..'layer4'} feature maps (NHWC, float64) of a torchvision ResNet-`depth` state dict."""
    x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)
    x = np.maximum(batch_norm(conv2d(x, np.asarray(sd["conv1.weight"], np.float64), stride=2, padding=3), sd, "bn1"),
                   0.0)
    features = {"stem": x}
    x = max_pool_3x3_s2(x)
    for stage, num_blocks in enumerate(_BLOCKS[depth]):
        for i in range(num_blocks):
            x = _block(x, sd, f"layer{stage + 1}.{i}", depth >= 50, strides[stage] if i == 0 else 1, dilations[stage])
        features[f"layer{stage + 1}"] = x
    return {name: value.transpose(0, 2, 3, 1) for name, value in features.items()}
