"""DifNet (Jiang et al., NeurIPS 2018): seed branch, similarity branch, cascade of random walks.

- Seed branch: atrous ResNet + ASPP (or one 3x3 conv, "noASPP") gives the score map
  x (B, h', w', K); the importance map M = H(x) in [0, 1]; the seed s = M * x (Sec. 4).
- Similarity branch: a second ResNet of the same depth with five taps, walk 1 on the
  input image and walks 2..5 on layer1..layer4. Each tap gives
  Psi_t = adaptive-max-pool(BN(conv1x1_64(f_t))) on the seed grid (Sec. 4).
- Cascade: y_t = beta_t [mu_t P_t y_{t-1} + (1 - mu_t) s] + (1 - beta_t) y_{t-1}
  with P_t = softmax(Psi_t Psi_t^T) (Eq. 4-5), see `difnet_jax.diffusion`.
  mu_t = sigmoid(mu_logits[t]), beta_t = sigmoid(beta_logits[t]); both logits are
  ordinary parameters initialised to 0 (mu = beta = 0.5).
- y_T is upsampled bilinearly to the input size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import diffusion
from difnet_jax.config_errors import positive_int, require
from difnet_jax.constants import COMPUTE_DTYPES
from difnet_jax.models import family
from difnet_jax.models.aspp import ASPP, class_conv
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.models.resnet import ResNet

ALL_WALKS = (1, 2, 3, 4, 5)  # 1: the input image, 2..5: layer1..layer4 of the similarity branch


def _adaptive_bins(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, L) input indices of each adaptive pooling bin, torch's bin rule.

    Bin i covers [floor(i * in / out), ceil((i + 1) * in / out)); shorter bins repeat
    their last index, which leaves a max unchanged.
    """
    starts = (np.arange(size_out) * size_in) // size_out
    ends = -((-(np.arange(size_out) + 1) * size_in) // size_out)
    length = int((ends - starts).max())
    return np.minimum(starts[:, None] + np.arange(length)[None, :], ends[:, None] - 1)


def adaptive_max_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    """Adaptive max-pooling of NHWC `x` to `size`, one axis at a time (max is separable)."""
    rows = _adaptive_bins(x.shape[1], size[0])
    x = x[:, rows].max(axis=2)
    cols = _adaptive_bins(x.shape[2], size[1])
    return x[:, :, cols].max(axis=3)


class ImportanceMap(nn.Module):
    """H of Sec. 4: BN-ReLU-conv5x5(K->8)-BN-ReLU-conv5x5(8->4)-BN-ReLU-conv5x5(4->1)-sigmoid."""

    norm: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, score_map):
        x = score_map
        for i, features in enumerate((8, 4, 1)):
            x = nn.relu(self.norm(name=f"bn{i}")(x))
            x = nn.Conv(features, (5, 5), padding=2, use_bias=False, dtype=self.dtype, name=f"conv{i}")(x)
        return nn.sigmoid(x.astype(jnp.float32))


class SimilarityEmbedding(nn.Module):
    """Psi of Sec. 4: conv1x1 (with bias) -> BN -> adaptive max-pool to the seed grid."""

    grid: tuple[int, int]
    norm: Any
    channels: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features):
        x = nn.Conv(self.channels, (1, 1), dtype=self.dtype, name="conv")(features)
        x = self.norm(name="bn")(x)
        return adaptive_max_pool(x, self.grid)


class DifNet(nn.Module):
    """DifNet-`depth`; returns (logits (B, H, W, K), intermediates).

    intermediates: 'score_map' x, 'importance' M, 'seed' s (all (B, h', w', .)),
    'walks' (y_1..y_T, each (B, h', w', K)), 'mu' and 'beta' ((T,)).
    `walks` picks which of the five taps get a random walk, in order, e.g. (1, 3, 5)
    for the paper's ablation without the 2nd and 4th walks. `frozen_bn_backbones` names
    the backbones ("seed_backbone", "similarity_backbone") whose BatchNorm is frozen.
    """

    backbones = ("seed_backbone", "similarity_backbone")

    num_classes: int
    depth: int = 50
    width: int = 64
    aspp: bool = True
    aspp_rates: Sequence[int] = (6, 12, 18, 24)
    walks: Sequence[int] = ALL_WALKS
    psi_channels: int = 64
    diffusion_backend: str = "dense"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    frozen_bn_backbones: Sequence[str] = ()

    @nn.compact
    def __call__(self, images, *, train: bool):
        if not self.walks or any(w not in ALL_WALKS for w in self.walks) or len(set(self.walks)) != len(self.walks):
            raise ValueError(f"walks must be distinct values from {ALL_WALKS}, got {tuple(self.walks)}")
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype
        )
        resnet = functools.partial(ResNet, self.depth, self.width, dtype=self.dtype, bn_momentum=self.bn_momentum)

        # Seed branch.
        def backbone(name):
            return resnet(frozen_bn=name in self.frozen_bn_backbones, name=name)

        seed_features = backbone("seed_backbone")(images, train=train)["layer4"]
        if self.aspp:
            score_map = ASPP(self.num_classes, self.aspp_rates, dtype=self.dtype, name="aspp")(seed_features)
        else:
            score_map = class_conv(self.num_classes, dtype=self.dtype, name="classifier")(seed_features)
        score_map = score_map.astype(jnp.float32)
        importance = ImportanceMap(norm, dtype=self.dtype, name="importance")(score_map)
        seed = importance * score_map

        # Similarity branch.
        taps = backbone("similarity_backbone")(images, train=train)
        tap_features = {1: images, 2: taps["layer1"], 3: taps["layer2"], 4: taps["layer3"], 5: taps["layer4"]}
        batch, height, width, classes = seed.shape
        psis = [
            SimilarityEmbedding((height, width), norm, self.psi_channels, dtype=self.dtype, name=f"psi{w}")(
                tap_features[w]
            ).reshape(batch, height * width, self.psi_channels)
            for w in self.walks
        ]

        # Cascade of random walks (Eq. 4-5).
        mu_logits = self.param("mu_logits", nn.initializers.zeros, (len(self.walks),), jnp.float32)
        beta_logits = self.param("beta_logits", nn.initializers.zeros, (len(self.walks),), jnp.float32)
        y, steps = diffusion.cascade(
            seed.reshape(batch, height * width, classes), psis, mu_logits, beta_logits,
            backend=self.diffusion_backend,
        )
        grid = (batch, height, width, classes)
        logits = resize_bilinear(y.reshape(grid), images.shape[1:3])
        return logits, {
            "score_map": score_map,
            "importance": importance,
            "seed": seed,
            "walks": tuple(step.reshape(grid) for step in steps),
            "mu": nn.sigmoid(mu_logits),
            "beta": nn.sigmoid(beta_logits),
        }


# The family's entry points (difnet_jax.models.FAMILIES["difnet"]).

# model.difnet.backbone_init_branches -> the backbones ImageNet weights initialise.
BRANCHES = {"both": DifNet.backbones, "seed": ("seed_backbone",), "similarity": ("similarity_backbone",)}


def defaults() -> ml_collections.ConfigDict:
    """config.model.difnet: DifNet's own keys, the paper's values."""
    config = ml_collections.ConfigDict()
    config.aspp = True  # False: one 3x3 conv instead of ASPP ("noASPP")
    config.walks = ALL_WALKS  # which taps get a random walk: 1 the image, 2..5 layer1..4
    config.psi_channels = 64
    config.diffusion_backend = "auto"  # dense | chunked | fused | auto (fastest that fits; README)
    config.backbone_init_branches = "both"  # both | seed | similarity: the backbones backbone_init initialises
    return config


def check(model: ml_collections.ConfigDict) -> None:
    own = model.difnet
    walks = tuple(own.walks)
    require(bool(walks) and all(w in ALL_WALKS for w in walks) and len(set(walks)) == len(walks),
            "model.difnet.walks", walks, f"distinct values from {ALL_WALKS}")
    require(isinstance(own.aspp, bool), "model.difnet.aspp", own.aspp, "True or False")
    require(positive_int(own.psi_channels), "model.difnet.psi_channels", own.psi_channels, "a positive integer")
    require(own.diffusion_backend in diffusion.BACKENDS, "model.difnet.diffusion_backend", own.diffusion_backend,
            f"one of {diffusion.BACKENDS}")
    require(own.backbone_init_branches in BRANCHES, "model.difnet.backbone_init_branches",
            own.backbone_init_branches, f"one of {tuple(BRANCHES)}")


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    return BRANCHES[model.difnet.backbone_init_branches]


def build(model: ml_collections.ConfigDict, num_classes: int) -> DifNet:
    own = model.difnet
    return DifNet(
        num_classes, depth=model.depth, width=model.width, aspp=own.aspp, aspp_rates=tuple(model.aspp_rates),
        walks=tuple(own.walks), psi_channels=own.psi_channels, diffusion_backend=own.diffusion_backend,
        dtype=COMPUTE_DTYPES[model.dtype], frozen_bn_backbones=family.frozen_bn_backbones(model, backbones(model)),
    )
