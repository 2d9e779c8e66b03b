"""DeepLabv3+ (Chen et al. 2018) with the optional dilated-affinity head of Wu et al. (papers/004, Sec. 3.2).

Atrous ResNet -> ASPP (1x1, three 3x3 atrous convolutions, image pooling; each conv + BN + ReLU,
concatenated, projected by a 1x1 conv + BN + ReLU, dropout in training) -> decoder (the ASPP output
upsampled to stride 4, concatenated with a 1x1 projection of layer1, two 3x3 convs) -> 1x1
classifier, upsampled bilinearly to the input size.

Dilated Affinity's baseline is "our implemented DeepLabv3+" on ResNet-101 with "the rest settings
... the same with DeepLabv3+" (Sec. 4.1), i.e. its public reference implementation
(tensorflow/models, research/deeplab). The family's keys (`defaults`) take the reference's values,
each commented with its file and flag: multi-grid (1, 2, 4) in layer4, BatchNorm decay 0.95 in the
backbone and 0.9997 in the ASPP and decoder (flax's BatchNorm `momentum` is TensorFlow's decay:
running = momentum * running + (1 - momentum) * batch), dropout 0.1 after the ASPP projection, the
image-pooling branch over the whole feature map. Separable 3x3 convolutions in the ASPP and the
decoder are the reference code's default but not the DeepLabv3+ paper's ResNet-101 network: the
paper applies them with its Xception backbone ("We further explore the Xception model and apply the
depthwise separable convolution to both ASPP and decoder modules", abstract; Table 5's "SC"
column), and Dilated Affinity compares its baseline with the paper's ResNet-101 number ("1.42%
lower than the one reported in the original paper"). So plain convolutions by default
(`aspp_separable`, `decoder_separable` = False); True is the reference code's network.

Output stride: the network trains at `output_stride` (16) and evaluates at `eval_output_stride`
(8), the paper's protocol (Sec. 4.1): `train=True` uses the first, `train=False` the second. The
ResNet and the ASPP rates (given at OS 16, scaled by 16 / stride) follow the stride; the parameter
tree is the same at both strides, so one set of parameters serves both.

Width: `width` is the ResNet's stem width (64 in the paper); the ASPP, decoder and low-level
channel counts are given at width 64 and scale with it, `channels * width // 64` (at width 16:
64, 64 and 12), for the tiny CPU variants.

Affinity head (with `affinity_rates`): a 1x1 conv with 8|R| channels beside the classifier on the
decoder's features, upsampled bilinearly like the logits (rates are in input pixels), returned
pre-sigmoid as intermediates["affinity_logits"]; its bias starts at logit(pi_r) from the train
set's statistics, which `build` and `loss` are handed as facts["affinity_stats"] (read by
`affinity_stats.dataset_facts`, the family's `dataset_facts`: building reads no data); layout and
loss in `difnet_jax.models.affinity`.

Differences from the reference that remain: the stem is torchvision's 7x7 conv (the reference's
"beta" ResNets have three 3x3 convs), tied to the torchvision ImageNet weights; the decoder's
low-level input is layer1's output (the reference taps block1/unit_2's conv3 before the residual
sum); the initialisers are He normal (fan out); biases learn at the base rate (the reference doubles it).
The bilinear resizes align corners (`resize.resize_bilinear`), as the reference's do (core/utils.py
`resize_bilinear`: `tf.compat.v1.image.resize_bilinear(images, size, align_corners=True)`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import losses
from difnet_jax.constants import COMPUTE_DTYPES
from difnet_jax.models import affinity, family
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.models.resnet import STAGE_SIZES, STAGE_STRIDE_DILATION, ResNet
from difnet_jax.user_errors import positive_int, require

STATS_COMMAND = "python -m experiments.affinity_stats --config=<this run's --config and overrides>"


def _conv(features: int, kernel: int, *, dilation: int = 1, groups: int = 1, dtype: Any, name: str) -> nn.Conv:
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), kernel_dilation=dilation,
                   feature_group_count=groups, use_bias=False, dtype=dtype, name=name,
                   kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU, the unit of the ASPP and the decoder.

    `separable` (3x3 only): a depthwise conv -> BN -> ReLU, then a 1x1 conv -> BN -> ReLU, the
    reference's `split_separable_conv2d` (research/deeplab/core/utils.py) under model.py's arg scope.
    `momentum` is the BatchNorm decay.
    """

    features: int
    kernel: int = 1
    dilation: int = 1
    momentum: float = 0.9997
    separable: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.momentum, epsilon=1e-5,
                                 dtype=self.dtype)
        if self.separable and self.kernel > 1:
            x = _conv(x.shape[-1], self.kernel, dilation=self.dilation, groups=x.shape[-1], dtype=self.dtype,
                      name="depthwise")(x)
            x = nn.relu(norm(name="depthwise_bn")(x))
            x = _conv(self.features, 1, dtype=self.dtype, name="conv")(x)
        else:
            x = _conv(self.features, self.kernel, dilation=self.dilation, dtype=self.dtype, name="conv")(x)
        return nn.relu(norm(name="bn")(x))


class ASPPv3(nn.Module):
    """DeepLabv3's ASPP: 1x1, 3x3 at each rate, image pooling; concatenated, projected by a 1x1 (C channels).

    Image pooling averages the whole feature map (the reference's image_pooling_crop_size None:
    the crop's whole grid), then 1x1 conv + BN + ReLU, broadcast back to the grid. `dropout` (the
    reference's keep_prob 0.9 after the projection, model.py) draws from the 'dropout' rng in training.
    `unit`: `ConvBNReLU` with its BatchNorm decay, separable flag and dtype bound (flax imagenet's `ModuleDef`).
    """

    channels: int = 256
    rates: Sequence[int] = (6, 12, 18)
    unit: Callable[..., ConvBNReLU] = ConvBNReLU
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, *, train: bool):
        unit = functools.partial(self.unit, self.channels)
        branches = [unit(1, name="conv1x1")(x, train=train)]
        branches += [unit(3, dilation=r, name=f"conv3x3_{i}")(x, train=train)
                     for i, r in enumerate(self.rates)]
        pooled = unit(1, name="image_pool")(x.mean(axis=(1, 2), keepdims=True), train=train)
        branches.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.channels,)))
        x = unit(1, name="project")(jnp.concatenate(branches, axis=-1), train=train)
        return nn.Dropout(self.dropout, deterministic=not train or self.dropout == 0)(x)


class Decoder(nn.Module):
    """DeepLabv3+'s decoder: ASPP output upsampled to stride 4, + 1x1 projection of layer1, two 3x3 convs.

    `unit`: as `ASPPv3`'s.
    """

    channels: int = 256
    low_level_channels: int = 48
    unit: Callable[..., ConvBNReLU] = ConvBNReLU

    @nn.compact
    def __call__(self, x, low_level, *, train: bool):
        low = self.unit(self.low_level_channels, 1, name="low_level")(low_level, train=train)
        x = resize_bilinear(x, low.shape[1:3]).astype(low.dtype)
        x = jnp.concatenate([x, low], axis=-1)
        x = self.unit(self.channels, 3, name="conv1")(x, train=train)
        return self.unit(self.channels, 3, name="conv2")(x, train=train)


def _scaled(channels: int, width: int) -> int:
    return max(1, channels * width // 64)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ on an atrous ResNet; `(logits, {"affinity_logits": ...} or {})` (module docstring).

    affinity_rates: a rate spec (`affinity.expand_rates`: r, or (a, b) for both orientations;
        expanding an expanded tuple changes nothing); () = no affinity head.
    affinity_bias_init: pi_r per expanded rate, required with a head: the head's bias is
        logit(pi_r) so that the first predicted affinity is the positive frequency (Dilated
        Affinity Sec. 4.1, after Focal loss, Lin et al. 2017).
    multi_grid: layer4's unit rates (`ResNet.multi_grid`); () = none.
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
    multi_grid: Sequence[int] = ()
    backbone_bn_momentum: float = 0.95
    bn_momentum: float = 0.9997  # ASPP and decoder
    aspp_dropout: float = 0.1
    aspp_separable: bool = False
    decoder_separable: bool = False
    affinity_rates: Sequence[Any] = ()
    affinity_bias_init: Sequence[float] = ()
    dtype: Any = jnp.float32
    frozen_bn: bool = False  # the backbone's BatchNorm uses and keeps its running statistics
    resnet_layout: str = "torchvision"  # or "difnet_authors" (resnet.py)

    @nn.compact
    def __call__(self, images, *, train: bool):
        stride = self.output_stride if train else self.eval_output_stride
        if stride not in STAGE_STRIDE_DILATION:
            raise ValueError(f"DeepLabV3Plus output stride must be one of {sorted(STAGE_STRIDE_DILATION)}, "
                             f"got {stride} ({'output_stride' if train else 'eval_output_stride'})")
        rates_r = affinity.expand_rates(self.affinity_rates)
        if rates_r and len(self.affinity_bias_init) != len(rates_r):
            raise ValueError(f"affinity_bias_init has {len(self.affinity_bias_init)} values for the "
                             f"{len(rates_r)} rates {rates_r}: the head's bias starts at the train set's pi_r")
        backbone = ResNet(self.depth, self.width, dtype=self.dtype, bn_momentum=self.backbone_bn_momentum,
                          frozen_bn=self.frozen_bn, output_stride=stride, multi_grid=tuple(self.multi_grid),
                          layout=self.resnet_layout, name="backbone")
        features = backbone(images, train=train)
        rates = tuple(r * 16 // stride for r in self.aspp_rates)  # doubled at OS 8
        unit = functools.partial(ConvBNReLU, momentum=self.bn_momentum, dtype=self.dtype)
        x = ASPPv3(_scaled(self.aspp_channels, self.width), rates, unit=functools.partial(
            unit, separable=self.aspp_separable), dropout=self.aspp_dropout, name="aspp")(
            features["layer4"], train=train)
        x = Decoder(_scaled(self.decoder_channels, self.width), _scaled(self.low_level_channels, self.width),
                    unit=functools.partial(unit, separable=self.decoder_separable), name="decoder")(
            x, features["layer1"], train=train)
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
        pi = np.clip(np.asarray(self.affinity_bias_init, np.float64), 1e-6, 1 - 1e-6)
        bias = np.repeat(np.log(pi / (1 - pi)), 8).astype(np.float32)
        return nn.Conv(8 * len(rates), (1, 1), dtype=self.dtype, name="affinity",
                       kernel_init=nn.initializers.normal(0.01),
                       bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(bias, dtype).reshape(shape))


# The family's entry points (difnet_jax.models.FAMILIES["deeplabv3plus"]); own keys in config.model.deeplabv3plus.

NAME = "deeplabv3plus"
# Sources: [ref] = tensorflow/models research/deeplab, file and flag named; [DA] = Dilated Affinity (papers/004).


def defaults() -> ml_collections.ConfigDict:
    own = ml_collections.ConfigDict()
    own.output_stride = 16  # training: [DA] Sec. 4.1 "set to 16 during training"; [ref] train.py output_stride
    own.eval_output_stride = 8  # [DA] Sec. 4.1 "changes to 8 during evaluation": same parameters, re-dilated
    own.aspp_rates = (6, 12, 18)  # at output stride 16, doubled at 8: [ref] train.py/eval.py atrous_rates
    own.aspp_channels = 256  # at width 64, scaled by width / 64: [ref] common.py aspp_convs_filters
    own.decoder_channels = 256  # [ref] common.py decoder_filters
    own.low_level_channels = 48  # [ref] model.py, the decoder's 1x1 projection of the low-level feature
    # Multi-grid: layer4's unit rates, one per block: [ref] common.py multi_grid, "Set multi_grid = [1, 2, 4] when
    # using provided 'resnet_v1_{50,101}_beta' checkpoints" (core/resnet_v1_beta.py: block4's 3x3 rate * unit rate).
    # ResNet-18's layer4 has two blocks: its variants use (1, 2), the reference's first two.
    own.multi_grid = (1, 2, 4)
    own.backbone_bn_decay = 0.95  # [ref] core/feature_extractor.py, the ResNet arg scope's batch_norm_decay
    own.bn_decay = 0.9997  # ASPP and decoder: [ref] common.py batch_norm_decay (model.py get_batch_norm_params)
    own.aspp_dropout = 0.1  # after the ASPP projection, in training: [ref] model.py slim.dropout(keep_prob=0.9)
    # Separable 3x3 convs: [ref] common.py aspp_with_separable_conv / decoder_use_separable_conv default True;
    # False = the DeepLabv3+ paper's ResNet-101 network, [DA]'s baseline (module docstring).
    own.aspp_separable = False
    own.decoder_separable = False
    own.affinity_rates = ()  # () = no affinity head; e.g. (8, (12, 24), 16): r = (r, r), (a, b) = both orientations
    own.affinity_weighting = "sqrt"  # none | signal | neighbor | sqrt (Table 1)
    own.affinity_beta = 1.2  # total = ce + beta * affinity ([DA] Sec. 4.3)
    own.affinity_gamma = 2.0  # focal loss (Eq. 4); `none` is plain cross-entropy
    # How the loss reduces its pairs (Eq. 5 does not say; difnet_jax/models/affinity.py): the mean over pairs, what
    # TensorFlow's reduce_mean of the B x H x W x 8|R| loss gives, or "sum_over_pairs" (8|R| times heavier).
    own.affinity_reduction = "mean_over_pairs"
    # The train set's statistics (pi_r for the bias, n0..n8 for the weights): "" = the ones stored with the
    # prepared dataset `affinity_stats_dataset` in `affinity_stats_data_dir`, counted there the first time
    # (difnet_jax/models/affinity_stats.py); or a JSON file written by `python -m experiments.affinity_stats`.
    own.affinity_stats = ""
    own.affinity_stats_dataset = ""  # the dataset configs link these two to data.name and data.data_dir
    own.affinity_stats_data_dir = ""
    # Affinity propagation (Eq. 6-7), read by evaluation's --propagate: [DA] Sec. 4.3 "lambda is set to 6
    # according to cross-validation"; Eq. 7 g(x) = mu^x / (1 + mu^x), mu = 7; Sec. 4.4 (Cityscapes) "10 times
    # iterations in affinity propagation".
    own.propagation_lambda = affinity.PAPER_LAMBDA
    own.propagation_mu = affinity.PAPER_MU
    own.propagation_iterations = affinity.PAPER_ITERATIONS
    # Eq. 6's self term when iterated: on the current iterate ("current") or on the original prediction each
    # iteration ("original", [DA] Sec. 3.3 "like CRF, propagating the original classifications"): `affinity.propagate`.
    own.propagation_self_term = "current"
    return own


# What a config.json saved before a key existed ran with (read when the key is missing).
LEGACY = {"multi_grid": (), "backbone_bn_decay": 0.9, "bn_decay": 0.9, "aspp_dropout": 0.0, "aspp_separable": False,
          "decoder_separable": False, "affinity_reduction": "sum_over_pairs", "affinity_stats_dataset": "",
          "affinity_stats_data_dir": "", "propagation_lambda": affinity.PAPER_LAMBDA,
          "propagation_mu": affinity.PAPER_MU, "propagation_iterations": affinity.PAPER_ITERATIONS,
          "propagation_self_term": "current"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """config.model.deeplabv3plus as check, build, loss and evaluation read it (`settings`)."""

    output_stride: Any
    eval_output_stride: Any
    aspp_rates: tuple
    aspp_channels: Any
    decoder_channels: Any
    low_level_channels: Any
    multi_grid: tuple
    backbone_bn_decay: Any
    bn_decay: Any
    aspp_dropout: Any
    aspp_separable: Any
    decoder_separable: Any
    affinity_rate_spec: Any
    affinity_rates: tuple[affinity.Rate, ...]  # expanded; () when the spec is invalid (see rates_error)
    rates_error: str
    affinity_weighting: str
    affinity_beta: Any
    affinity_gamma: Any
    affinity_reduction: str
    affinity_stats: str
    affinity_stats_dataset: str
    affinity_stats_data_dir: str
    propagation: affinity.Propagation | None
    propagation_values: tuple  # (lambda, mu, iterations, self_term) as configured, for the check


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@family.cached_settings
def settings(model: ml_collections.ConfigDict) -> Settings:
    """The family's keys, read once per config (missing keys: `LEGACY`, what older runs ran with)."""
    own = model[NAME]
    get = lambda key: own.get(key, LEGACY.get(key))  # noqa: E731
    spec = _tuple(own.affinity_rates)
    try:
        rates, rates_error = affinity.expand_rates(spec), ""
    except (ValueError, TypeError) as error:
        rates, rates_error = (), str(error)
    values = tuple(get(f"propagation_{key}") for key in ("lambda", "mu", "iterations", "self_term"))
    return Settings(
        output_stride=own.output_stride, eval_output_stride=own.eval_output_stride,
        aspp_rates=_tuple(own.aspp_rates), aspp_channels=own.aspp_channels, decoder_channels=own.decoder_channels,
        low_level_channels=own.low_level_channels, multi_grid=_tuple(get("multi_grid")),
        backbone_bn_decay=get("backbone_bn_decay"), bn_decay=get("bn_decay"), aspp_dropout=get("aspp_dropout"),
        aspp_separable=get("aspp_separable"), decoder_separable=get("decoder_separable"),
        affinity_rate_spec=spec, affinity_rates=rates, rates_error=rates_error,
        affinity_weighting=own.affinity_weighting, affinity_beta=own.affinity_beta,
        affinity_gamma=own.affinity_gamma, affinity_reduction=get("affinity_reduction"),
        affinity_stats=own.affinity_stats, affinity_stats_dataset=get("affinity_stats_dataset"),
        affinity_stats_data_dir=get("affinity_stats_data_dir"),
        propagation=affinity.Propagation(rates, *values) if rates else None, propagation_values=values,
    )


def _statistics(model: ml_collections.ConfigDict, facts: family.Facts) -> affinity.AffinityStats:
    """facts["affinity_stats"]: the train set's statistics of the head's rates (`affinity_stats.dataset_facts`)."""
    rates = settings(model).affinity_rates
    stats = facts.get("affinity_stats")
    if stats is None:
        raise ValueError(f"config.model.{NAME} has an affinity head: its build and loss take the train set's "
                         "statistics as facts['affinity_stats'] (`families.dataset_facts(config.model)`)")
    if tuple(tuple(r) for r in stats.rates) != rates:
        raise ValueError(f"facts['affinity_stats'] are for rates {stats.rates}, the affinity head's are {rates}")
    return stats


def _number(value, low: float, high: float, *, closed_high: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return False
    return low <= value <= high if closed_high else low <= value < high


def check(model: ml_collections.ConfigDict) -> None:
    own = settings(model)
    key = f"model.{NAME}"
    for name in ("output_stride", "eval_output_stride"):
        require(getattr(own, name) in STAGE_STRIDE_DILATION, f"{key}.{name}", getattr(own, name),
                f"one of {sorted(STAGE_STRIDE_DILATION)}")
    require(len(own.aspp_rates) > 0 and all(positive_int(r) for r in own.aspp_rates), f"{key}.aspp_rates",
            own.aspp_rates, "a non-empty tuple of positive ints (the rates at output stride 16)")
    for name in ("aspp_channels", "decoder_channels", "low_level_channels"):
        require(positive_int(getattr(own, name)), f"{key}.{name}", getattr(own, name), "a positive integer")
    if model.depth in STAGE_SIZES:
        blocks = STAGE_SIZES[model.depth][3]
        grid = own.multi_grid
        require(isinstance(grid, tuple) and len(grid) in (0, blocks) and all(positive_int(r) for r in grid),
                f"{key}.multi_grid", grid,
                f"{blocks} positive ints, one per layer4 block of ResNet-{model.depth} (e.g. {(1, 2, 4)[:blocks]}), "
                "or () for none")
    for name in ("backbone_bn_decay", "bn_decay", "aspp_dropout"):
        require(_number(getattr(own, name), 0.0, 1.0), f"{key}.{name}", getattr(own, name), "a number in [0, 1)")
    for name in ("aspp_separable", "decoder_separable"):
        require(isinstance(getattr(own, name), bool), f"{key}.{name}", getattr(own, name), "True or False")
    require(not own.rates_error, f"{key}.affinity_rates", own.affinity_rate_spec,
            f"ints r and pairs (a, b) of ints ({own.rates_error})")
    require(own.affinity_weighting in affinity.WEIGHTINGS, f"{key}.affinity_weighting", own.affinity_weighting,
            f"one of {affinity.WEIGHTINGS}")
    for name in ("affinity_beta", "affinity_gamma"):
        require(_number(getattr(own, name), 0.0, np.inf), f"{key}.{name}", getattr(own, name), "a number >= 0")
    require(own.affinity_reduction in affinity.REDUCTIONS, f"{key}.affinity_reduction", own.affinity_reduction,
            f"one of {affinity.REDUCTIONS}")
    lam, mu, iterations, self_term = own.propagation_values
    require(_number(lam, 0.0, np.inf), f"{key}.propagation_lambda", lam, "a number >= 0 (Eq. 6's lambda)")
    require(_number(mu, 1.0, np.inf) and mu > 1, f"{key}.propagation_mu", mu, "a number > 1 (Eq. 7's mu)")
    require(positive_int(iterations), f"{key}.propagation_iterations", iterations, "a positive integer")
    require(self_term in affinity.SELF_TERMS, f"{key}.propagation_self_term", self_term,
            f"one of {affinity.SELF_TERMS} (Eq. 6's self term on the current iterate or the original prediction)")
    if not own.affinity_rates:
        return
    if own.affinity_stats:  # a file the user named: it must be there and hold the rates
        path, what = own.affinity_stats, "the train set's statistics (n0..n8 and pi per rate)"
        command = f"{STATS_COMMAND} --output={path}"
        require(os.path.isfile(path), f"{key}.affinity_stats", path,
                f"an existing JSON file of {what}: write it with `{command}`, or set it to '' for the statistics "
                "stored with the dataset")
        try:
            affinity.load_stats(path, own.affinity_rates)
        except (KeyError, ValueError) as error:
            require(False, f"{key}.affinity_stats", path,
                    f"{what} of rates {own.affinity_rates}: {error}; rewrite it with `{command}`")
    else:
        require(bool(own.affinity_stats_dataset), f"{key}.affinity_stats_dataset", own.affinity_stats_dataset,
                "the dataset whose train split's statistics the affinity head uses (the dataset configs link it to "
                f"data.name), or set {key}.affinity_stats to a JSON file")


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    del model
    return DeepLabV3Plus.backbones


def train_output_stride(model: ml_collections.ConfigDict) -> int:
    """The training grid's stride (`output_stride`, 16): crops of 16k + 1 pixels align it."""
    return settings(model).output_stride


def propagation(model: ml_collections.ConfigDict) -> affinity.Propagation | None:
    """The affinity head's rates and the propagation keys, or None without a head."""
    return settings(model).propagation


def build(model: ml_collections.ConfigDict, num_classes: int, facts: family.Facts) -> DeepLabV3Plus:
    """The network; an affinity head's bias starts from facts["affinity_stats"] (pi_r), read by the caller."""
    own = settings(model)
    pis = tuple(float(p) for p in _statistics(model, facts).positive_freq) if own.affinity_rates else ()
    return DeepLabV3Plus(
        num_classes, depth=model.depth, width=model.width, output_stride=own.output_stride,
        eval_output_stride=own.eval_output_stride, aspp_rates=own.aspp_rates,
        aspp_channels=own.aspp_channels, decoder_channels=own.decoder_channels,
        low_level_channels=own.low_level_channels, multi_grid=own.multi_grid,
        backbone_bn_momentum=own.backbone_bn_decay, bn_momentum=own.bn_decay, aspp_dropout=own.aspp_dropout,
        aspp_separable=own.aspp_separable, decoder_separable=own.decoder_separable,
        affinity_rates=own.affinity_rates, affinity_bias_init=pis, dtype=COMPUTE_DTYPES[model.dtype],
        frozen_bn=bool(family.frozen_bn_backbones(model, DeepLabV3Plus.backbones)),
        resnet_layout=model.get("resnet_layout", "torchvision"),
    )


def loss(outputs: family.Outputs, batch, model: ml_collections.ConfigDict,
         facts: family.Facts) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ce (+ beta * affinity when the head exists): terms {"ce"} or {"ce", "affinity"} (affinity without beta);
    the weightings `affinity.NEEDS_STATS` read facts["affinity_stats"]."""
    logits, intermediates = outputs
    ce = losses.cross_entropy(logits, batch["label"])
    own = settings(model)
    if not own.affinity_rates:
        return ce, {"ce": ce}
    stats = _statistics(model, facts) if own.affinity_weighting in affinity.NEEDS_STATS else None
    aff = affinity.affinity_loss(intermediates["affinity_logits"], batch["label"], own.affinity_rates,
                                 weighting=own.affinity_weighting, stats=stats, gamma=own.affinity_gamma,
                                 reduction=own.affinity_reduction)
    return ce + own.affinity_beta * aff, {"ce": ce, "affinity": aff}


def label(model: ml_collections.ConfigDict) -> str:
    """E.g. 'DeepLabv3+-18', 'DeepLabv3+-18 + affinity'."""
    return f"DeepLabv3+-{model.depth}" + (" + affinity" if tuple(model[NAME].affinity_rates) else "")


def pictures(intermediates: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """With the affinity head: the mean affinity to the 8 neighbours at the first rate (bright = same class as the
    neighbours; channels 8k + n: rate k, neighbour n, `affinity`)."""
    if "affinity_logits" not in intermediates:
        return {}, {}
    return {}, {"affinity, rate 1": jax.nn.sigmoid(intermediates["affinity_logits"][..., :8].astype(jnp.float32)
                                                   ).mean(-1)}


# Where the statistics are read from and how the refinement is computed, not what is trained.
RESUMABLE_KEYS = ("affinity_stats_data_dir", "propagation_lambda", "propagation_mu", "propagation_iterations",
                  "propagation_self_term")
