"""Progressively Diffused Networks (PDN, papers/003): diffused conv-LSTM modules in an atrous ResNet.

A diffusion module stacks `num_layers` (4) diffused LSTM layers (Sec. 4, Fig. 3). Layer t
holds E + 1 groups of hidden maps: the depth group H^d_t and the spatial groups H^s_{t,e},
e = 1..E (E = 1: "8NB", E = 2: "24NB"). Each of the layer's E + 1 LSTMs (one depth LSTM, E
spatial LSTMs) computes its four gates from *every* group through channel-wise (depthwise)
filters (Eq. 1): the depth group through the centre tap only, spatial group e through the
ring of 8e taps at Chebyshev distance e. Only those taps are parameters; everything else in
the (2e+1)x(2e+1) kernels is a structural zero. Weights and biases are not shared between
LSTMs or layers (Sec. 4.2). Per LSTM: 4 gates x (1 + 8 + ... + 8E) x d weights = 36d (8NB)
or 100d (24NB) plus 4d biases, so a 4-layer module has 288d + 32d or 1200d + 48d
parameters (Table 1 counts the weights: 307K at d = 256 for 24NB).

PDN puts the module between layer4's last two blocks (the paper's res5b / res5c of ResNet-101;
ResNet-18's layer4 has two blocks, so there it follows the first), with 1x1 reductions to d and
back and a residual connection ("1M"). A 1x1 classifier on
every layer's depth map gives an intermediate prediction with its own cross-entropy
(intermediate supervision, Sec. 3; Table 2 reads these predictions). The final prediction
is Sim-DeepLab's ASPP head on layer4 (DeepLab-v2, the paper's baseline), upsampled.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import losses
from difnet_jax.constants import COMPUTE_DTYPES
from difnet_jax.models import family
from difnet_jax.models.aspp import ASPP
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.models.resnet import STAGE_SIZES, ResNet
from difnet_jax.user_errors import positive_int, require

GATES = ("i", "f", "o", "c")  # gate order along the parameters' last axis
IMPLS = ("conv", "shifted", "patches")
# Sec. 4 (Implementation details): "All the parameters in the diffusion layers are randomly initialized from a
# Gaussian distribution with the mean 0 and the variance 0.01". Two readings (`model.pdn.init`): Caffe's gaussian
# filler, whose parameter is a standard deviation, with std 0.01 (the sentence may describe that filler, as DeepLab's
# classifiers use it); or the words as written, variance 0.01, i.e. std 0.1. The claims study chooses on held-out
# train data (difnet_jax/studies/claims.py); the default stays the reading the project's earlier runs used.
INIT_STDS = {"caffe_std": 0.01, "literal_variance": 0.1}
# How the module's input is made from the backbone's features (`model.pdn.reduction`): the paper does not say. "conv"
# (the default, every paper config): a 1x1 convolution with bias, as the classifiers. "conv_bn": followed by
# BatchNorm, a labelled option (not the paper's) against the post-ReLU offset that saturates the LSTMs' gates.
REDUCTIONS = ("conv", "conv_bn")


def rings_of(neighbors: int) -> int:
    """E such that (2E + 1)^2 - 1 == neighbors (8 -> 1, 24 -> 2); ValueError otherwise."""
    rings = (int(round(np.sqrt(neighbors + 1))) - 1) // 2
    if rings < 1 or (2 * rings + 1) ** 2 - 1 != neighbors:
        raise ValueError(f"neighbors must be (2E+1)^2 - 1 for some E >= 1 (8, 24, 48, ...), got {neighbors}")
    return rings


def ring_offsets(distance: int) -> np.ndarray:
    """(8 * distance, 2) offsets (dy, dx) at Chebyshev distance `distance`, row-major order."""
    span = range(-distance, distance + 1)
    return np.array([(dy, dx) for dy in span for dx in span if max(abs(dy), abs(dx)) == distance], np.int32)


def ring_kernel(taps: jax.Array, distance: int) -> jax.Array:
    """Ring taps (8e, d, J) -> the depthwise HWIO kernel (2e+1, 2e+1, 1, d*J), zero off the ring.

    Output channel c*J + j is input channel c's j-th gate, the channel order of a convolution
    with `feature_group_count = d` (channel multiplier J).
    """
    side = 2 * distance + 1
    offsets = ring_offsets(distance) + distance
    _, d, j = taps.shape
    kernel = jnp.zeros((side, side, d, j), taps.dtype).at[offsets[:, 0], offsets[:, 1]].set(taps)
    return kernel.reshape(side, side, 1, d * j)


def _lstm_init(std: float):
    return nn.initializers.normal(std)


class DiffusedLSTMLayer(nn.Module):
    """One diffused LSTM layer (Eqs. 1-3): E + 1 groups of hidden/memory maps in, E + 1 out.

    `__call__(hidden, memory)`: hidden a list of E + 1 maps (B, H, W, d) (index 0 the depth
    group, e the spatial group e), memory (B, H, W, d, E + 1). Returns the new pair. All
    gates of all LSTMs that read a ring come out of one op, in one of three equal ways (`impl`):
    - "patches" (default): the 8e shifted copies stacked, one einsum with the taps;
    - "conv": one depthwise convolution (feature_group_count = d, multiplier 4(E+1));
    - "shifted": shifted slices times per-tap weights, summed (one fusion in XLA).
    On CPU, "conv"'s backward pass is ~80x slower than "patches" (grouped-convolution filter
    gradients) and "shifted" ~10x; on accelerators, benchmarks can compare them.
    """

    rings: int
    dtype: Any = jnp.float32
    init_std: float = 0.01
    impl: str = "patches"

    @nn.compact
    def __call__(self, hidden: Sequence[jax.Array], memory: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        num_lstms, d = self.rings + 1, hidden[0].shape[-1]
        if len(hidden) != num_lstms:
            raise ValueError(f"expected {num_lstms} hidden groups, got {len(hidden)}")
        lstms = ["depth"] + [f"spatial{e}" for e in range(1, num_lstms)]
        init = _lstm_init(self.init_std)
        # Per LSTM: centre taps on the depth group (d, 4), ring-e taps on spatial group e
        # (8e, d, 4), biases (d, 4); stacked over the LSTMs into J = (E+1)*4 outputs per channel.
        centre = jnp.stack([self.param(f"{n}_centre", init, (d, 4), jnp.float32) for n in lstms], axis=1)
        rings = [jnp.stack([self.param(f"{n}_ring{e}", init, (8 * e, d, 4), jnp.float32) for n in lstms], axis=2)
                 for e in range(1, num_lstms)]
        bias = jnp.stack([self.param(f"{n}_bias", nn.initializers.zeros, (d, 4), jnp.float32) for n in lstms],
                         axis=1)
        j = num_lstms * 4
        hidden = [h.astype(self.dtype) for h in hidden]
        # Depth group: centre tap only (a per-channel scale for each LSTM and gate).
        pre = hidden[0][..., None] * centre.reshape(d, j).astype(self.dtype)  # (B, H, W, d, J)
        for e, taps in enumerate(rings, start=1):
            pre = pre + self._ring(hidden[e], taps.reshape(8 * e, d, j).astype(self.dtype), e)
        pre = pre + bias.reshape(d, j).astype(self.dtype)
        pre = pre.reshape(*pre.shape[:-1], num_lstms, 4)  # (B, H, W, d, E+1, gate)
        # Eq. 1 prints sigma for the candidate c and tanh for the output gate o: a typo against
        # Eq. 3 (H = o * tanh(M), which needs o in [0, 1]) and every LSTM. Here i, f, o are
        # sigmoids and the candidate c is a tanh.
        i, f, o = (jax.nn.sigmoid(pre[..., k]) for k in range(3))
        c = jnp.tanh(pre[..., 3])
        memory = f * memory.astype(self.dtype) + i * c  # Eq. 3
        new_hidden = o * jnp.tanh(memory)
        return [new_hidden[..., g] for g in range(num_lstms)], memory

    def _ring(self, h: jax.Array, taps: jax.Array, e: int) -> jax.Array:
        """Sum over the 8e ring taps of h shifted by the tap's offset times its weights: (B, H, W, d, J)."""
        d, j = taps.shape[1:]
        if self.impl == "conv":
            out = jax.lax.conv_general_dilated(
                h, ring_kernel(taps, e), window_strides=(1, 1), padding=((e, e), (e, e)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=d,
            )
            return out.reshape(*out.shape[:-1], d, j)
        height, width = h.shape[1:3]
        padded = jnp.pad(h, ((0, 0), (e, e), (e, e), (0, 0)))
        if self.impl == "patches":
            patches = jnp.stack([padded[:, e + dy: e + dy + height, e + dx: e + dx + width]
                                 for dy, dx in ring_offsets(e)], axis=3)  # (B, H, W, 8e, d)
            return jnp.einsum("bhwtc,tcj->bhwcj", patches, taps)
        out = 0.0
        for tap, (dy, dx) in enumerate(ring_offsets(e)):
            shifted = padded[:, e + dy: e + dy + height, e + dx: e + dx + width]
            out = out + shifted[..., None] * taps[tap]
        return out


class DiffusionModule(nn.Module):
    """`num_layers` stacked diffused LSTM layers; (B, H, W, d) -> the list of depth hidden maps.

    The first layer's E + 1 hidden groups are copies of the input (Sec. 3), its memories
    zeros. Layer t's outputs are returned for t = 1..num_layers (each (B, H, W, d), in
    `dtype`); parameters are float32, drawn from N(0, init_std^2) with zero biases; init_std
    is 0.01 or 0.1 by the reading of Sec. 4's "variance 0.01" (`INIT_STDS`).

    Receptive field: every layer convolves once with taps up to distance E, so layer t's
    depth map at a site depends on the input in the square of radius t*E around it and
    nowhere else; the 4-layer module's output sees radius 4E (side 9 for 8NB, 17 for 24NB).
    Table 1 of the paper gives sides 7 and 13 (radius 3E), which is what 3 convolving layers
    reach, while its parameter count (288d, 1200d) and Table 2 use 4 layers. We implement 4
    full layers (the parameter count and Table 2 are unambiguous); Table 1's radius is that
    of the third layer's prediction here.
    """

    neighbors: int
    num_layers: int = 4
    dtype: Any = jnp.float32
    init_std: float = 0.01
    impl: str = "patches"  # how each ring's gates are computed (DiffusedLSTMLayer): patches | conv | shifted

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        rings = rings_of(self.neighbors)
        x = x.astype(self.dtype)
        hidden = [x] * (rings + 1)
        memory = jnp.zeros((*x.shape, rings + 1), self.dtype)
        depth_maps = []
        for t in range(self.num_layers):
            hidden, memory = DiffusedLSTMLayer(rings, dtype=self.dtype, init_std=self.init_std, impl=self.impl,
                                               name=f"layer{t + 1}")(hidden, memory)
            depth_maps.append(hidden[0])
        return depth_maps


class DiffusionBlock(nn.Module):
    """The module as inserted in the backbone: x + expand(module(reduce(x))[-1]), and per-layer class scores.

    `__call__(x, *, train)` -> (x', [layer logits (B, h, w, K) float32]); the reductions and
    classifiers are 1x1 convolutions with biases, initialised N(0, 0.01^2) as new layers; with
    `reduction="conv_bn"` a BatchNorm follows the input reduction (`REDUCTIONS`).
    """

    num_classes: int
    neighbors: int = 24
    d: int = 256
    num_layers: int = 4
    dtype: Any = jnp.float32
    init_std: float = 0.01
    impl: str = "patches"
    reduction: str = "conv"
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
        conv = lambda features, name: nn.Conv(features, (1, 1), kernel_init=nn.initializers.normal(0.01),
                                              dtype=self.dtype, name=name)
        reduced = conv(self.d, "reduce")(x)
        if self.reduction == "conv_bn":
            reduced = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype,
                                   name="reduce_bn")(reduced)
        depth_maps = DiffusionModule(self.neighbors, self.num_layers, dtype=self.dtype, init_std=self.init_std,
                                     impl=self.impl, name="module")(reduced)
        logits = [conv(self.num_classes, f"classifier{t + 1}")(h).astype(jnp.float32)
                  for t, h in enumerate(depth_maps)]
        return x + conv(x.shape[-1], "expand")(depth_maps[-1]).astype(x.dtype), logits


def module_sites(depth: int, num_modules: int) -> tuple[str, ...]:
    """The ResNet blocks after which the diffusion modules sit, in the order they run.

    1M: after layer4's second-to-last block, i.e. between its last two blocks at every depth: the
    paper's "middle position between ResNet101 5b layer and 5c layer" (Sec. 5.1), `layer4_1` at
    depths 34, 50 and 101 (three blocks), `layer4_0` at depth 18 (two blocks), so that one residual
    block always follows the module before the ASPP head. 2M: also after layer3's last block
    (res4b22 of ResNet-101). The paper does not say where its second module goes (the modules are
    "inserted into different part" of ResNet-101, "at different depths of the network", Sec. 5);
    the end of layer3 is the other stage of the stride-8 atrous trunk, so the second module
    diffuses the mid-level features that all of layer4 builds on, rather than repeating the first
    one a block away.
    """
    if num_modules not in (1, 2):
        raise ValueError(f"num_modules must be 1 or 2, got {num_modules}")
    layer3_blocks, layer4_blocks = STAGE_SIZES[depth][2:]
    sites = (f"layer4_{layer4_blocks - 2}",)
    if num_modules == 2:
        sites = (f"layer3_{layer3_blocks - 1}",) + sites
    return sites


class PDN(nn.Module):
    """Atrous ResNet + diffusion module(s) + ASPP: `(logits, intermediates)`.

    intermediates: 'score_map' (B, h, w, K) the ASPP scores on the feature grid, and
    'layer_logits' the tuple of every diffusion layer's class scores (B, h, w, K) float32,
    all modules' layers in the order they run (2M: layer3's module first). Each module's
    parameters are `diffusion_<block>` (`module_sites`: e.g. `diffusion_layer4_1`, or
    `diffusion_layer4_0` at depth 18) beside `backbone` and `aspp`.
    """

    backbones = ("backbone",)

    num_classes: int
    dtype: Any = jnp.float32
    # the backbone
    depth: int = 101
    width: int = 64
    frozen_bn: bool = False  # the backbone's BatchNorm uses and keeps its running statistics
    resnet_layout: str = "torchvision"  # or "difnet_authors" (resnet.py)
    # the diffusion module(s)
    neighbors: int = 24
    num_modules: int = 1
    num_layers: int = 4
    d: int = 256
    init_std: float = 0.01  # the diffusion layers' (INIT_STDS)
    impl: str = "patches"  # DiffusedLSTMLayer's implementation of the ring gates
    reduction: str = "conv"  # REDUCTIONS
    # the ASPP head
    aspp_rates: Sequence[int] = (6, 12, 18, 24)

    @nn.compact
    def __call__(self, images, *, train: bool):
        layer_logits: list[jax.Array] = []

        def hook(block):
            def apply(x, *, train):
                x, logits = block(x, train=train)
                layer_logits.extend(logits)
                return x
            return apply

        after_block = {
            site: hook(DiffusionBlock(self.num_classes, self.neighbors, self.d, self.num_layers, dtype=self.dtype,
                                      init_std=self.init_std, impl=self.impl, reduction=self.reduction,
                                      name=f"diffusion_{site}"))
            for site in module_sites(self.depth, self.num_modules)
        }
        features = ResNet(self.depth, self.width, dtype=self.dtype, frozen_bn=self.frozen_bn,
                          layout=self.resnet_layout, after_block=after_block, name="backbone")(images, train=train)
        score_map = ASPP(self.num_classes, self.aspp_rates, dtype=self.dtype, name="aspp")(features["layer4"])
        logits = resize_bilinear(score_map.astype(jnp.float32), images.shape[1:3])
        return logits, {"score_map": score_map, "layer_logits": tuple(layer_logits)}


# The family's entry points (difnet_jax.models.FAMILIES["pdn"]).


def defaults() -> ml_collections.ConfigDict:
    """config.model.pdn: PDN's own keys, the paper's values."""
    config = ml_collections.ConfigDict()
    config.neighbors = 24  # 8 ("8NB", E = 1) or 24 ("24NB", E = 2): the paper's best is 24
    config.modules = 1  # 1 ("1M") or 2 ("2M"; the second after layer3, see module_sites)
    config.d = 256  # the module's feature width (Table 1)
    # Weight of each diffusion layer's cross-entropy. The paper gives none (each layer has its
    # own softmax loss, Sec. 3: Caffe's default loss_weight 1), so 1.0.
    config.layer_loss_weight = 1.0
    config.impl = "patches"  # how the module computes its ring gates: patches | conv | shifted (same numbers)
    config.init = "caffe_std"  # the diffusion layers' init: caffe_std (std 0.01) | literal_variance (std 0.1)
    config.reduction = "conv"  # the module's input: conv (the paper configs) | conv_bn (labelled option)
    return config


@dataclasses.dataclass(frozen=True)
class Settings:
    """PDN's own keys as check, build and loss read them (`settings`)."""

    neighbors: int
    modules: int
    d: int
    layer_loss_weight: float
    impl: str
    init: str
    reduction: str


@family.cached_settings
def settings(model: ml_collections.ConfigDict) -> Settings:
    """config.model.pdn, read once; keys younger than a saved config.json default to what its run used."""
    own = model.pdn
    return Settings(neighbors=own.neighbors, modules=own.modules, d=own.d, layer_loss_weight=own.layer_loss_weight,
                    impl=own.get("impl", "patches"), init=own.get("init", "caffe_std"),
                    reduction=own.get("reduction", "conv"))


def check(model: ml_collections.ConfigDict) -> None:
    own = settings(model)
    try:
        valid_neighbors = positive_int(own.neighbors) and rings_of(own.neighbors) >= 1
    except ValueError:
        valid_neighbors = False
    require(valid_neighbors, "model.pdn.neighbors", own.neighbors, "(2E+1)^2 - 1 for E >= 1: 8 (8NB), 24 (24NB), ...")
    require(own.modules in (1, 2) and positive_int(own.modules), "model.pdn.modules", own.modules, "1 or 2")
    require(positive_int(own.d), "model.pdn.d", own.d, "a positive integer")
    weight = own.layer_loss_weight
    require(isinstance(weight, numbers.Real) and not isinstance(weight, bool) and np.isfinite(weight) and weight >= 0,
            "model.pdn.layer_loss_weight", weight, "a finite number >= 0")
    require(own.impl in IMPLS, "model.pdn.impl", own.impl, f"one of {IMPLS}")
    require(own.init in INIT_STDS, "model.pdn.init", own.init, f"one of {tuple(INIT_STDS)} (std 0.01 or 0.1)")
    require(own.reduction in REDUCTIONS, "model.pdn.reduction", own.reduction, f"one of {REDUCTIONS}")


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    del model
    return PDN.backbones


def build(model: ml_collections.ConfigDict, num_classes: int, facts: family.Facts) -> PDN:
    del facts  # PDN reads nothing from the train set
    own = settings(model)
    return PDN(
        num_classes, depth=model.depth, width=model.width, neighbors=own.neighbors, num_modules=own.modules,
        d=own.d, aspp_rates=tuple(model.aspp_rates), dtype=COMPUTE_DTYPES[model.dtype], impl=own.impl,
        init_std=INIT_STDS[own.init], reduction=own.reduction,
        frozen_bn=bool(family.frozen_bn_backbones(model, PDN.backbones)),
        resnet_layout=model.get("resnet_layout", "torchvision"),
    )


def loss(outputs: family.Outputs, batch: Mapping[str, jax.Array], model: ml_collections.ConfigDict,
         facts: family.Facts) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ce(final) + layer_loss_weight * sum_t ce(layer t); terms {'ce', 'layer1_ce', ...}, each once.

    The layer scores are upsampled bilinearly to the labels (as the final logits are, and as
    the evaluator reads `extra_predictions`), so each term scores the prediction that is
    evaluated; nearest downsampling of labels to the 1/8 grid would drop thin parts (arms,
    legs in Person-Part) and misalign by half a cell.
    """
    del facts  # nothing from the train set
    logits, intermediates = outputs
    labels = batch["label"]
    terms = {"ce": losses.cross_entropy(logits, labels)}
    for t, layer in enumerate(intermediates["layer_logits"], start=1):
        upsampled = resize_bilinear(layer.astype(jnp.float32), labels.shape[1:3])
        terms[f"layer{t}_ce"] = losses.cross_entropy(upsampled, labels)
    layer_terms = [v for k, v in terms.items() if k != "ce"]
    total = terms["ce"] + settings(model).layer_loss_weight * sum(layer_terms, jnp.zeros((), jnp.float32))
    return total, terms


def extra_predictions(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{'layer1': logits, ...}: every diffusion layer's class scores on the feature grid (Table 2)."""
    return {f"layer{t}": logits for t, logits in enumerate(intermediates["layer_logits"], start=1)}


def label(model: ml_collections.ConfigDict) -> str:
    """E.g. 'PDN-18 24NB-2M' (neighbourhood and modules)."""
    return f"PDN-{model.depth} {model.pdn.neighbors}NB-{model.pdn.modules}M"


RESUMABLE_KEYS = ("impl",)  # how the diffusion layers are computed, not what is trained
