"""DeepLabv3+ (Chen et al. 2018) with the optional dilated-affinity head of Wu et al. (papers/004, Sec. 3.2).

Atrous ResNet -> ASPP (1x1, three 3x3 atrous convolutions, image pooling; each conv + BN + ReLU,
concatenated and projected by a 1x1 conv) -> decoder (the ASPP output upsampled to stride 4,
concatenated with a 1x1 projection of layer1, two 3x3 convs) -> 1x1 classifier, upsampled
bilinearly to the input size. Plain (not separable) convolutions, no dropout.

Output stride: the network trains at `output_stride` (16) and evaluates at `eval_output_stride`
(8), the paper's protocol (Sec. 4.1): `train=True` uses the first, `train=False` the second. The
ResNet and the ASPP rates (given at OS 16, scaled by 16 / stride) follow the stride; the parameter
tree is the same at both strides, so one set of parameters serves both.

Width: `width` is the ResNet's stem width (64 in the paper); the ASPP, decoder and low-level
channel counts are given at width 64 and scale with it, `channels * width // 64` (at width 16:
64, 64 and 12), for the tiny CPU variants.

Affinity head (with `affinity_rates`): a 1x1 conv with 8|R| channels beside the classifier on the
decoder's features, upsampled bilinearly like the logits (rates are in input pixels), returned
pre-sigmoid as intermediates["affinity_logits"]; layout and loss in `difnet_jax.models.affinity`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import losses
from difnet_jax.config_errors import positive_int, require
from difnet_jax.constants import COMPUTE_DTYPES
from difnet_jax.models import affinity, family
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.models.resnet import STAGE_STRIDE_DILATION, ResNet

STATS_COMMAND = "python -m experiments.affinity_stats --config=<this run's --config and overrides>"


def _conv(features: int, kernel: int, *, dilation: int = 1, dtype: Any, name: str) -> nn.Conv:
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), kernel_dilation=dilation,
                   use_bias=False, dtype=dtype, name=name,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, the unit of the ASPP and the decoder."""

    features: int
    kernel: int = 1
    dilation: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = _conv(self.features, self.kernel, dilation=self.dilation, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class ASPPv3(nn.Module):
    """DeepLabv3's ASPP: 1x1, 3x3 at each rate, image pooling; concatenated, projected by a 1x1 (C channels)."""

    channels: int = 256
    rates: Sequence[int] = (6, 12, 18)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        unit = functools.partial(ConvBNReLU, self.channels, dtype=self.dtype)
        branches = [unit(1, name="conv1x1")(x, train=train)]
        branches += [unit(3, dilation=r, name=f"conv3x3_{i}")(x, train=train) for i, r in enumerate(self.rates)]
        pooled = unit(1, name="image_pool")(x.mean(axis=(1, 2), keepdims=True), train=train)
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
        return unit(1, name="project")(jnp.concatenate(branches, axis=-1), train=train)


class Decoder(nn.Module):
    """DeepLabv3+'s decoder: ASPP output upsampled to stride 4, + 1x1 projection of layer1, two 3x3 convs."""

    channels: int = 256
    low_level_channels: int = 48
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, low_level, *, train: bool):
        low = ConvBNReLU(self.low_level_channels, 1, dtype=self.dtype, name="low_level")(low_level, train=train)
        x = resize_bilinear(x, low.shape[1:3]).astype(self.dtype)
        x = jnp.concatenate([x, low], axis=-1)
        x = ConvBNReLU(self.channels, 3, dtype=self.dtype, name="conv1")(x, train=train)
        return ConvBNReLU(self.channels, 3, dtype=self.dtype, name="conv2")(x, train=train)


def _scaled(channels: int, width: int) -> int:
    return max(1, channels * width // 64)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ on an atrous ResNet; `(logits, {"affinity_logits": ...} or {})` (module docstring).

    affinity_rates: a rate spec (`affinity.expand_rates`: r, or (a, b) for both orientations;
        expanding an expanded tuple changes nothing); () = no affinity head.
    affinity_bias_init: pi_r per expanded rate: the head's bias is logit(pi_r) so that the first
        predicted affinity is the positive frequency (Focal loss, Lin et al. 2017). () = bias 0.
    """

    backbones = ("backbone",)

    num_classes: int
    depth: int = 101
    width: int = 64
    output_stride: int = 16  # train=True
    eval_output_stride: int = 8  # train=False
    aspp_rates: Sequence[int] = (6, 12, 18)  # at output stride 16
    aspp_channels: int = 256  # at width 64
    decoder_channels: int = 256  # at width 64
    low_level_channels: int = 48  # at width 64
    affinity_rates: Sequence[Any] = ()
    affinity_bias_init: Sequence[float] = ()
    dtype: Any = jnp.float32
    frozen_bn: bool = False  # the backbone's BatchNorm uses and keeps its running statistics

    @nn.compact
    def __call__(self, images, *, train: bool):
        stride = self.output_stride if train else self.eval_output_stride
        if stride not in STAGE_STRIDE_DILATION:
            raise ValueError(f"DeepLabV3Plus output stride must be one of {sorted(STAGE_STRIDE_DILATION)}, "
                             f"got {stride} ({'output_stride' if train else 'eval_output_stride'})")
        rates_r = affinity.expand_rates(self.affinity_rates)
        if self.affinity_bias_init and len(self.affinity_bias_init) != len(rates_r):
            raise ValueError(f"affinity_bias_init has {len(self.affinity_bias_init)} values for the "
                             f"{len(rates_r)} rates {rates_r}")
        backbone = ResNet(self.depth, self.width, dtype=self.dtype, frozen_bn=self.frozen_bn, output_stride=stride,
                          name="backbone")
        features = backbone(images, train=train)
        rates = tuple(r * 16 // stride for r in self.aspp_rates)  # doubled at OS 8
        x = ASPPv3(_scaled(self.aspp_channels, self.width), rates, dtype=self.dtype, name="aspp")(
            features["layer4"], train=train)
        x = Decoder(_scaled(self.decoder_channels, self.width), _scaled(self.low_level_channels, self.width),
                    dtype=self.dtype, name="decoder")(x, features["layer1"], train=train)
        size = images.shape[1:3]
        score_map = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(x)
        logits = resize_bilinear(score_map.astype(jnp.float32), size)
        intermediates = {}
        if rates_r:
            intermediates["affinity_logits"] = resize_bilinear(
                self._affinity_head(rates_r)(x).astype(jnp.float32), size)
        return logits, intermediates

    def _affinity_head(self, rates: tuple[affinity.Rate, ...]) -> nn.Conv:
        # Biases logit(pi_r) so that sigmoid(b_r) = pi_r, the focal-loss paper's prior init. The
        # paper (Sec. 4.1) prints b_r = -log(pi_r / (1 - pi_r)), whose sigmoid is 1 - pi_r: a sign error.
        pi = np.clip(np.asarray(self.affinity_bias_init or [0.5] * len(rates), np.float64), 1e-6, 1 - 1e-6)
        bias = np.repeat(np.log(pi / (1 - pi)), 8).astype(np.float32)
        return nn.Conv(8 * len(rates), (1, 1), dtype=self.dtype, name="affinity",
                       kernel_init=nn.initializers.normal(0.01),
                       bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype).reshape(shape))


# The family's entry points (difnet_jax.models.FAMILIES["deeplabv3plus"]); own keys in config.model.deeplabv3plus.

NAME = "deeplabv3plus"


def default_stats_path(data_name: str) -> str:
    """Where `experiments.affinity_stats` writes a dataset's statistics (relative to the working directory,
    like weights/): the dataset configs set `model.deeplabv3plus.affinity_stats` to this."""
    return os.path.join("affinity_stats", f"{data_name}.json")


def defaults() -> ml_collections.ConfigDict:
    own = ml_collections.ConfigDict()
    own.output_stride = 16  # training (the paper's Sec. 4.1)
    own.eval_output_stride = 8  # evaluation: same parameters, layer3/4 and ASPP rates re-dilated
    own.aspp_rates = (6, 12, 18)  # at output stride 16 (doubled at 8)
    own.aspp_channels = 256  # at width 64; scaled by width / 64
    own.decoder_channels = 256
    own.low_level_channels = 48
    own.affinity_rates = ()  # () = no affinity head; e.g. (8, (12, 24), 16): r = (r, r), (a, b) = both orientations
    own.affinity_weighting = "sqrt"  # none | signal | neighbor | sqrt (Table 1)
    own.affinity_beta = 1.2  # total = ce + beta * affinity (Sec. 4.3)
    own.affinity_gamma = 2.0  # focal loss (Eq. 4); `none` is plain cross-entropy
    own.affinity_stats = ""  # JSON of experiments.affinity_stats; dataset configs: default_stats_path(data.name)
    return own


def _rates(own: ml_collections.ConfigDict) -> tuple[affinity.Rate, ...]:
    return affinity.expand_rates(tuple(own.affinity_rates))


def _stats(own: ml_collections.ConfigDict) -> affinity.AffinityStats | None:
    """The statistics of the configured rates, or None when no file is configured or present."""
    rates = _rates(own)
    if not rates or not own.affinity_stats or not os.path.exists(own.affinity_stats):
        return None
    return affinity.load_stats(own.affinity_stats, rates)


def check(model: ml_collections.ConfigDict) -> None:
    own = model[NAME]
    key = f"model.{NAME}"
    for name in ("output_stride", "eval_output_stride"):
        require(own[name] in STAGE_STRIDE_DILATION, f"{key}.{name}", own[name],
                f"one of {sorted(STAGE_STRIDE_DILATION)}")
    require(len(own.aspp_rates) > 0 and all(positive_int(r) for r in own.aspp_rates), f"{key}.aspp_rates",
            own.aspp_rates, "a non-empty tuple of positive ints (the rates at output stride 16)")
    for name in ("aspp_channels", "decoder_channels", "low_level_channels"):
        require(positive_int(own[name]), f"{key}.{name}", own[name], "a positive integer")
    try:
        rates = _rates(own)
    except (ValueError, TypeError) as error:
        require(False, f"{key}.affinity_rates", own.affinity_rates, f"ints r and pairs (a, b) of ints ({error})")
    require(own.affinity_weighting in affinity.WEIGHTINGS, f"{key}.affinity_weighting", own.affinity_weighting,
            f"one of {affinity.WEIGHTINGS}")
    for name in ("affinity_beta", "affinity_gamma"):
        require(isinstance(own[name], (int, float)) and own[name] >= 0, f"{key}.{name}", own[name],
                "a number >= 0")
    if not rates or own.affinity_weighting not in affinity.NEEDS_STATS:
        return
    where = f"the train set's statistics (n0..n8 and pi per rate) for weighting {own.affinity_weighting!r}"
    require(bool(own.affinity_stats), f"{key}.affinity_stats", own.affinity_stats,
            f"the JSON file of {where}; write it with `{STATS_COMMAND}`")
    require(os.path.exists(own.affinity_stats), f"{key}.affinity_stats", own.affinity_stats,
            f"an existing file of {where}; it is missing: write it with `{STATS_COMMAND}`")
    try:
        affinity.load_stats(own.affinity_stats, rates)
    except (KeyError, ValueError) as error:
        require(False, f"{key}.affinity_stats", own.affinity_stats,
                f"{where} of rates {rates}: {error}; rewrite it with `{STATS_COMMAND}`")


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    del model
    return DeepLabV3Plus.backbones


def build(model: ml_collections.ConfigDict, num_classes: int) -> DeepLabV3Plus:
    own = model[NAME]
    stats = _stats(own)
    return DeepLabV3Plus(
        num_classes, depth=model.depth, width=model.width, output_stride=own.output_stride,
        eval_output_stride=own.eval_output_stride, aspp_rates=tuple(own.aspp_rates),
        aspp_channels=own.aspp_channels, decoder_channels=own.decoder_channels,
        low_level_channels=own.low_level_channels, affinity_rates=_rates(own),
        affinity_bias_init=() if stats is None else tuple(float(p) for p in stats.positive_freq),
        dtype=COMPUTE_DTYPES[model.dtype],
        frozen_bn=bool(family.frozen_bn_backbones(model, DeepLabV3Plus.backbones)),
    )


def loss(outputs: family.Outputs, batch, model: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ce (+ beta * affinity when the head exists): terms {"ce"} or {"ce", "affinity"} (affinity without beta)."""
    logits, intermediates = outputs
    ce = losses.cross_entropy(logits, batch["label"])
    own = model[NAME]
    rates = _rates(own)
    if not rates:
        return ce, {"ce": ce}
    stats = _stats(own)
    aff = affinity.affinity_loss(intermediates["affinity_logits"], batch["label"], rates,
                                 weighting=own.affinity_weighting, stats=stats, gamma=own.affinity_gamma)
    return ce + own.affinity_beta * aff, {"ce": ce, "affinity": aff}
