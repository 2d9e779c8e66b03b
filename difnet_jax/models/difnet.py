"""DifNet (Jiang et al., NeurIPS 2018): seed branch, similarity branch, cascade of random walks.

- Seed branch: atrous ResNet + ASPP (or one 3x3 conv, "noASPP") gives the score map
  x (B, h', w', K); the importance map M = H(x) in [0, 1]; the seed s = M * x (Sec. 4).
- Similarity branch: a second ResNet of the same depth with five taps, walk 1 on the
  input image and walks 2..5 on layer1..layer4. Each tap gives
  Psi_t = adaptive-max-pool(BN(conv1x1_64(f_t))) on the seed grid (Sec. 4; `similarity_embedding` computes
  it pool-first, the same function).
- Cascade: y_t = beta_t [mu_t P_t y_{t-1} + (1 - mu_t) s] + (1 - beta_t) y_{t-1}
  with P_t = softmax(Psi_t Psi_t^T) (Eq. 4-5), see `difnet_jax.models.diffusion`.
  mu_t = sigmoid(mu_logits[t]), beta_t = sigmoid(beta_logits[t]); both logits are
  ordinary parameters initialised to 0 (mu = beta = 0.5).
- y_T is upsampled bilinearly to the input size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import losses, timing
from difnet_jax.constants import COMPUTE_DTYPES, OUTPUT_STRIDE
from difnet_jax.models import affinity, diffusion, family
from difnet_jax.models.aspp import ASPP, class_conv
from difnet_jax.models.resize import LOGITS_UPSAMPLING, resize_bilinear
from difnet_jax.models.resnet import ResNet
from difnet_jax.models.similarity_embedding import SimilarityEmbedding
from difnet_jax.user_errors import positive_int, require

ALL_WALKS = (1, 2, 3, 4, 5)  # 1: the input image, 2..5: layer1..layer4 of the similarity branch


class ImportanceMap(nn.Module):
    """H of Sec. 4: BN-ReLU-conv5x5(K->8)-BN-ReLU-conv5x5(8->4)-BN-ReLU-conv5x5(4->1)-sigmoid."""

    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, score_map, *, train: bool):
        x = score_map
        for i, features in enumerate((8, 4, 1)):
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                             dtype=self.dtype, name=f"bn{i}")(x)
            x = nn.Conv(features, (5, 5), padding=2, use_bias=False, dtype=self.dtype, name=f"conv{i}")(nn.relu(x))
        return nn.sigmoid(x.astype(jnp.float32))


class DifNet(nn.Module):
    """DifNet-`depth`; returns (logits (B, H, W, K), intermediates).

    intermediates: 'score_map' x, 'importance' M, 'seed' s (all (B, h', w', .)),
    'psis' (Psi_1..Psi_T, each (B, N, C)), 'walks' (y_1..y_T, each (B, h', w', K)),
    'mu' and 'beta' ((T,)).
    `walks` picks which of the five taps get a random walk, in order, e.g. (1, 3, 5)
    for the paper's ablation without the 2nd and 4th walks. `frozen_bn_backbones` names
    the backbones ("seed_backbone", "similarity_backbone") whose BatchNorm is frozen.

    The three parts of Sec. 4 are methods, so the mechanism study and the timing of
    Table 4 run them alone with the trained variables, through the same code:
    `model.apply(variables, images, train=False, method=DifNet.seed_branch)`, then
    `DifNet.similarity_branch` and `DifNet.diffuse`.
    """

    backbones = ("seed_backbone", "similarity_backbone")

    num_classes: int
    depth: int = 50
    width: int = 64
    use_aspp: bool = True  # False: one 3x3 conv ("classifier") instead of ASPP ("noASPP")
    aspp_rates: Sequence[int] = (6, 12, 18, 24)
    walks: Sequence[int] = ALL_WALKS
    psi_channels: int = 64
    diffusion_backend: str = "dense"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    frozen_bn_backbones: Sequence[str] = ()
    resnet_layout: str = "torchvision"  # or "difnet_authors" (resnet.py), both backbones
    # False: half-pixel centres, as the authors' main.py upsamples the logits for the loss and the evaluation
    # (F.interpolate(..., align_corners=False)); True: DeepLab's aligned corners (resize.py)
    align_corners: bool = True

    def setup(self):
        if not self.walks or any(w not in ALL_WALKS for w in self.walks) or len(set(self.walks)) != len(self.walks):
            raise ValueError(f"walks must be distinct values from {ALL_WALKS}, got {tuple(self.walks)}")
        resnet = functools.partial(ResNet, self.depth, self.width, dtype=self.dtype, bn_momentum=self.bn_momentum,
                                   layout=self.resnet_layout)
        # Submodules are named after these attributes: the parameter tree is the same as ever.
        self.seed_backbone = resnet(frozen_bn="seed_backbone" in self.frozen_bn_backbones)
        if self.use_aspp:
            self.aspp = ASPP(self.num_classes, self.aspp_rates, dtype=self.dtype)
        else:
            self.classifier = class_conv(self.num_classes, dtype=self.dtype)
        self.importance = ImportanceMap(self.bn_momentum, dtype=self.dtype)
        self.similarity_backbone = resnet(frozen_bn="similarity_backbone" in self.frozen_bn_backbones)
        for w in self.walks:
            setattr(self, f"psi{w}", SimilarityEmbedding(self.psi_channels, self.bn_momentum, dtype=self.dtype))
        self.mu_logits = self.param("mu_logits", nn.initializers.zeros, (len(self.walks),), jnp.float32)
        self.beta_logits = self.param("beta_logits", nn.initializers.zeros, (len(self.walks),), jnp.float32)

    def seed_branch(self, images, *, train: bool) -> dict[str, jnp.ndarray]:
        """Seed backbone + ASPP (or the noASPP conv) + importance map: {'score_map', 'importance', 'seed'}."""
        features = self.seed_backbone(images, train=train)["layer4"]
        head = self.aspp if self.use_aspp else self.classifier
        score_map = head(features).astype(jnp.float32)
        importance = self.importance(score_map, train=train)
        return {"score_map": score_map, "importance": importance, "seed": importance * score_map}

    def similarity_branch(self, images, *, train: bool) -> list[jnp.ndarray]:
        """Similarity backbone + the Psi heads: one (B, N, C) embedding per walk, on the seed grid."""
        taps = self.similarity_backbone(images, train=train)
        tap_features = {1: images, 2: taps["layer1"], 3: taps["layer2"], 4: taps["layer3"], 5: taps["layer4"]}
        batch, height, width = taps["layer4"].shape[:3]
        return [getattr(self, f"psi{w}")(tap_features[w], (height, width), train=train).reshape(
            batch, height * width, self.psi_channels) for w in self.walks]

    def diffuse(self, seed, psis) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
        """The cascade of random walks (Eq. 4-5) on the seed grid: (y_T, [y_1..y_T]), each (B, h', w', K)."""
        batch, height, width, classes = seed.shape
        y, steps = diffusion.cascade(seed.reshape(batch, height * width, classes), psis, self.mu_logits,
                                     self.beta_logits, backend=self.diffusion_backend)
        return y.reshape(seed.shape), [step.reshape(seed.shape) for step in steps]

    def __call__(self, images, *, train: bool):
        seeds = self.seed_branch(images, train=train)
        psis = self.similarity_branch(images, train=train)
        y, steps = self.diffuse(seeds["seed"], psis)
        logits = resize_bilinear(y, images.shape[1:3], self.align_corners)
        return logits, {
            **seeds,
            "psis": tuple(psis),
            "walks": tuple(steps),
            "mu": nn.sigmoid(self.mu_logits),
            "beta": nn.sigmoid(self.beta_logits),
        }


# The family's entry points (difnet_jax.models.FAMILIES["difnet"]).

# model.difnet.backbone_init_branches -> the backbones ImageNet weights initialise.
BRANCHES = {"both": DifNet.backbones, "seed": ("seed_backbone",), "similarity": ("similarity_backbone",)}


def grid_labels(labels: jnp.ndarray, grid: tuple[int, int]) -> jnp.ndarray:
    """The labels at the seed grid's cells: pixel (8i, 8j) of an 8k + 1 image (the cell centres)."""
    rows = np.minimum(np.arange(grid[0]) * OUTPUT_STRIDE, labels.shape[1] - 1)
    cols = np.minimum(np.arange(grid[1]) * OUTPUT_STRIDE, labels.shape[2] - 1)
    return labels[:, rows][:, :, cols]


def grid_rates(rates_in_pixels) -> tuple[tuple[int, int], ...]:
    """Dilated-affinity rates in pixels -> the same offsets in seed-grid cells (at least one cell)."""
    return tuple((max(1, round(a / OUTPUT_STRIDE)), max(1, round(b / OUTPUT_STRIDE)))
                 for a, b in affinity.expand_rates(tuple(rates_in_pixels)))


def transition_affinity_logits(psi: jnp.ndarray, grid: tuple[int, int], rates) -> jnp.ndarray:
    """The affinity a random walk's transition matrix P = softmax(Psi Psi^T) gives neighbouring cells, as logits.

    Our definition (the papers give none): for cell i and its neighbour j at each offset of
    `rates` (grid cells, `affinity` layout, (B, h', w', 8|R|)), logit = log(N P_ij) =
    Psi_i.Psi_j - logsumexp_k Psi_i.Psi_k + log N, so sigmoid(logit) = N P_ij / (1 + N P_ij)
    is 1/2 when the walk steps from i to j with the uniform probability 1/N and tends to 1
    (0) as it steps there much more (less) often. The dilated-affinity loss on it asks the
    walk to favour same-class neighbours over the average cell and to avoid other classes;
    it does not fix P's scale. Costs one N x N product per walk (the dense cascade's).
    """
    batch, cells, channels = psi.shape
    height, width = grid
    psi = psi.astype(jnp.float32)
    normaliser = jax.nn.logsumexp(jnp.einsum("bnc,bmc->bnm", psi, psi), axis=-1).reshape(batch, height, width)
    cells_grid = psi.reshape(batch, height, width, channels)
    pad = (max(r[0] for r in rates), max(r[1] for r in rates))
    padded = jnp.pad(cells_grid, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    logits = []
    for rate in rates:
        for s, t in affinity.neighbour_offsets(rate):
            neighbour = padded[:, pad[0] + s : pad[0] + s + height, pad[1] + t : pad[1] + t + width]
            logits.append((cells_grid * neighbour).sum(-1) - normaliser + np.log(cells))
    return jnp.stack(logits, axis=-1)


def loss(outputs, batch, model: ml_collections.ConfigDict,
         facts: family.Facts) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Cross-entropy of the final output (the paper's only loss); with `model.difnet.affinity_on_transitions`
    plus beta times the dilated-affinity loss (plain binary cross-entropy, `affinity.affinity_loss`
    with weighting 'none') on every walk's `transition_affinity_logits`, averaged over the walks,
    against the labels at the seed grid's cells: terms {'ce'[, 'transition_affinity']}."""
    del facts  # DifNet reads nothing from the train set
    logits, intermediates = outputs
    ce = losses.cross_entropy(logits, batch["label"])
    own = model.difnet
    if not own.get("affinity_on_transitions", False):
        return ce, {"ce": ce}
    grid = intermediates["seed"].shape[1:3]
    rates = grid_rates(own.transition_affinity_rates)
    labels = grid_labels(batch["label"], grid)
    term = sum(affinity.affinity_loss(transition_affinity_logits(psi, grid, rates), labels, rates,
                                      weighting="none", stats=None) for psi in intermediates["psis"])
    term = term / len(intermediates["psis"])
    return ce + own.transition_affinity_beta * term, {"ce": ce, "transition_affinity": term}


def extra_predictions(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """{'seed': the seed s = M * x on the seed grid}: the seed branch alone (Sec. 4), evaluated beside the diffused
    output, so that val/miou - val/miou_seed is what the cascade of random walks adds."""
    return {"seed": intermediates["seed"]}


def pictures(intermediates: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The seed and the last walk's scores as label panels (validation pictures)."""
    walks = intermediates.get("walks") or []
    return {"seed": intermediates["seed"], **({f"walk {len(walks)}": walks[-1]} if walks else {})}, {}


def label(model: ml_collections.ConfigDict) -> str:
    return f"DifNet-{model.depth}"


# DifNet's keys that sat directly in config.model before the family table (older command lines and config.json).
RENAMED_KEYS = {key: key for key in ("aspp", "walks", "psi_channels", "diffusion_backend", "backbone_init_branches")}
RESUMABLE_KEYS = ("diffusion_backend",)  # how the cascade is computed, not what is trained


def time_cascade(size: int, num_classes: int, *, num_walks: int = 5, psi_channels: int = 64, runs: int = 10,
                 backend: str = "dense") -> timing.Timing:
    """Time of DifNet's cascade alone on the seed grid of a size x size image (random seed and Psi)."""
    grid = timing.seed_grid_size(size)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    seed = jax.random.normal(keys[0], (1, grid * grid, num_classes))
    psis = jax.random.normal(keys[1], (num_walks, 1, grid * grid, psi_channels))
    zeros = jnp.zeros(num_walks)
    fn = jax.jit(lambda s, p: diffusion.cascade(s, list(p), zeros, zeros, backend=backend)[0])
    return timing.time_function(fn, seed, psis, runs=runs)


def timed_part(model: ml_collections.ConfigDict, size: int, num_classes: int, runs: int) -> tuple[str, timing.Timing]:
    """The evaluation report times the cascade of random walks beside the dense CRF (Table 4)."""
    own = model.difnet
    return "DifNet's cascade", time_cascade(size, num_classes, num_walks=len(own.walks),
                                            psi_channels=own.psi_channels, runs=runs)


def defaults() -> ml_collections.ConfigDict:
    """config.model.difnet: DifNet's own keys, the paper's values."""
    config = ml_collections.ConfigDict()
    config.aspp = True  # False: one 3x3 conv instead of ASPP ("noASPP")
    config.walks = ALL_WALKS  # which taps get a random walk: 1 the image, 2..5 layer1..4
    config.psi_channels = 64
    config.diffusion_backend = "auto"  # dense | chunked | fused | auto (fastest that fits; README)
    config.backbone_init_branches = "both"  # both | seed | similarity: the backbones backbone_init initialises
    # Beyond the paper: supervise the walks' transitions with the dilated-affinity loss (see `loss`).
    config.affinity_on_transitions = False
    config.transition_affinity_rates = (8, 16)  # pixels, as the affinity head's; 1 and 2 seed-grid cells
    config.transition_affinity_beta = 1.0
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
    require(isinstance(own.get("affinity_on_transitions", False), bool), "model.difnet.affinity_on_transitions",
            own.get("affinity_on_transitions"), "True or False")
    if own.get("affinity_on_transitions", False):
        try:
            grid_rates(own.transition_affinity_rates)
        except (ValueError, TypeError) as error:
            require(False, "model.difnet.transition_affinity_rates", own.transition_affinity_rates,
                    f"ints r and pairs (a, b) of ints, in pixels ({error})")
        require(own.transition_affinity_beta >= 0, "model.difnet.transition_affinity_beta",
                own.transition_affinity_beta, "a number >= 0")


def backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    return BRANCHES[model.difnet.backbone_init_branches]


def build(model: ml_collections.ConfigDict, num_classes: int, facts: family.Facts) -> DifNet:
    del facts
    own = model.difnet
    return DifNet(
        num_classes, depth=model.depth, width=model.width, use_aspp=own.aspp, aspp_rates=tuple(model.aspp_rates),
        walks=tuple(own.walks), psi_channels=own.psi_channels, diffusion_backend=own.diffusion_backend,
        dtype=COMPUTE_DTYPES[model.dtype], frozen_bn_backbones=family.frozen_bn_backbones(model, backbones(model)),
        resnet_layout=model.get("resnet_layout", "torchvision"),
        align_corners=LOGITS_UPSAMPLING[model.get("logits_upsampling", "align_corners")],
    )
