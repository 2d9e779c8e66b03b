"""What the rest of the code needs to know about a model family, as one explicit record.

A family (DifNet, Sim-DeepLab, PDN, DeepLabv3+) is a `Family` entry in the table
`difnet_jax.models.FAMILIES` (a dict literal: no registration decorators, no import by
string). Training, evaluation, pretrained initialisation and config checks read the entry
and never branch on `config.model.name`.

Conventions every family's module keeps:
- `module.apply(variables, images, train=...)` returns `(logits, intermediates)`: logits
  (B, H, W, K) float32 at the input size, intermediates a dict of named arrays.
- `config.model` holds the keys every family shares (name, depth, width, dtype, aspp_rates
  and the pretrained-backbone keys); a family's own keys live in `config.model.<name>`
  (e.g. `config.model.difnet.walks`), with defaults from `Family.defaults()`.
- A family reads its keys in one place, a `settings(config.model)` function decorated with
  `cached_settings` that returns a frozen dataclass; its check, build and loss use that.
- Building a model reads no data: what a family needs from the dataset (DeepLabv3+'s affinity
  statistics) is `dataset_facts(config.model)`, asked by the code that makes the model (the training
  session, the trained-run loader) and handed to `build` and `loss` as `facts` (scenic's
  `dataset_meta_data`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import ml_collections

from difnet_jax import losses
from difnet_jax.constants import OUTPUT_STRIDE

if TYPE_CHECKING:  # the type only: the family record imports no family's math
    from difnet_jax.models.affinity import Propagation

Outputs = tuple[jax.Array, Mapping[str, Any]]  # (logits, intermediates)
Facts = Mapping[str, Any]  # what a family's build and loss read from the train set (`Family.dataset_facts`)


@dataclasses.dataclass(frozen=True, eq=False)  # one record a family: compared and hashed by identity (caches key on it)
class Family:
    """One model family.

    build: (config.model, num_classes, facts) -> the Linen module; facts: `dataset_facts(config.model)`.
    loss: (outputs, batch, config.model, facts) -> (total, {term: scalar}); every term is logged
        (metrics.jsonl), `total` is what the optimiser minimises. batch has 'image' and
        'label' (B, H, W) with IGNORE_LABEL on void pixels.
    backbones: config.model -> names of the module's ResNet submodules that
        `model.backbone_init` initialises (pretrained weights, lr groups, frozen BN).
    check: config.model -> None; raises `ConfigError` naming `config.model.<key>` at fault
        for the family's own keys (shared keys are checked once, elsewhere).
    defaults: () -> the family's own sub-dict `config.model.<name>` with its defaults.
    dataset_facts: config.model -> {name: value}, what build and loss read from the train set (DeepLabv3+ with an
        affinity head: its statistics); it may read the dataset. Default: no facts, {}.
    extra_predictions: intermediates -> {head: logits (B, h, w, K)}: named predictions
        evaluated beside the final output (DifNet's seed branch, PDN's diffusion layers); {} otherwise.
    train_output_stride: config.model -> the stride of the network's coarsest grid in training;
        `check_config` asks for crops of `stride * k + 1` pixels, whose grid's corners fall on
        the crop's corners (DifNet, Sim-DeepLab, PDN: 8; DeepLabv3+: its `output_stride`, 16).
    propagation: config.model -> `affinity.Propagation` (the rates of the model's affinity head
        and the refinement's settings) or None when the model predicts no affinity; evaluation
        asks this before offering affinity propagation (Dilated Affinity, Eq. 6-7).
    label: config.model -> the name tables and plots give a variant ('DifNet-50', 'PDN-18 24NB-2M').
    resumable_keys: the family's own keys (in `config.model.<name>`) that say how things are computed or
        where they are read from, not what is trained: a resumed run may change them.
    renamed_keys: {old flat key in config.model: the family's own key}: older command lines and
        config.json files (`config_compat`) keep working.
    as_ran: {own key: the value a config.json saved before the key existed ran with}.
    pictures: intermediates -> ({panel: logits (B, h, w, K)}, {panel: values in [0, 1] (B, h, w)}): what the
        validation pictures draw beside image | ground truth | prediction (default: the extra predictions).
    timed_part: (config.model, canvas side, num_classes, runs) -> (what, `timing.Timing`): the part of the
        network the evaluation report times beside the dense CRF (DifNet: its cascade); None: nothing.
    """

    build: Callable[[ml_collections.ConfigDict, int, Facts], nn.Module]
    loss: Callable[[Outputs, Mapping[str, jax.Array], ml_collections.ConfigDict, Facts],
                   tuple[jax.Array, dict[str, jax.Array]]]
    backbones: Callable[[ml_collections.ConfigDict], tuple[str, ...]]
    check: Callable[[ml_collections.ConfigDict], None]
    defaults: Callable[[], ml_collections.ConfigDict]
    dataset_facts: Callable[[ml_collections.ConfigDict], Facts] = lambda model: {}
    extra_predictions: Callable[[Mapping[str, Any]], dict[str, jax.Array]] = lambda intermediates: {}
    train_output_stride: Callable[[ml_collections.ConfigDict], int] = lambda model: OUTPUT_STRIDE
    propagation: Callable[[ml_collections.ConfigDict], Propagation | None] = lambda model: None
    label: Callable[[ml_collections.ConfigDict], str] = lambda model: f"{model.name}-{model.depth}"
    resumable_keys: tuple[str, ...] = ()
    renamed_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    as_ran: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pictures: Callable[[Mapping[str, Any]], tuple[dict[str, jax.Array], dict[str, jax.Array]]] | None = None
    timed_part: Callable[[ml_collections.ConfigDict, int, int, int], tuple[str, Any]] | None = None

    def picture_maps(self, intermediates: Mapping[str, Any]) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """`pictures(intermediates)`, or by default each extra prediction as a label panel."""
        if self.pictures is not None:
            return self.pictures(intermediates)
        return dict(self.extra_predictions(intermediates)), {}


def cached_settings(derive: Callable[[ml_collections.ConfigDict], Any]) -> Callable[[ml_collections.ConfigDict], Any]:
    """`derive(config.model)` computed once per distinct config value (memoised on the config's JSON).

    Lists stand where the config had tuples in what `derive` reads (it is handed the config
    rebuilt from JSON, as a saved config.json is), so `derive` converts what it keeps.
    """

    @functools.lru_cache(maxsize=64)
    def from_json(text: str):
        return derive(ml_collections.ConfigDict(json.loads(text)))

    @functools.wraps(derive)
    def settings(model: ml_collections.ConfigDict):
        return from_json(model.to_json_best_effort(sort_keys=True))

    return settings


def initialised_backbones(model: ml_collections.ConfigDict, backbones: tuple[str, ...]) -> tuple[str, ...]:
    """`backbones` when `model.backbone_init` names weights to start from, else () (from scratch)."""
    return tuple(backbones) if model.get("backbone_init", "") else ()


def frozen_bn_backbones(model: ml_collections.ConfigDict, backbones: tuple[str, ...]) -> tuple[str, ...]:
    """The initialised backbones whose BatchNorm `model.frozen_backbone_bn` freezes."""
    return initialised_backbones(model, backbones) if model.get("frozen_backbone_bn", False) else ()


def segmentation_loss(outputs: Outputs, batch: Mapping[str, jax.Array], model: ml_collections.ConfigDict,
                      facts: Facts) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of the final logits (ignore label 255): DifNet's and Sim-DeepLab's only loss."""
    del model, facts
    ce = losses.cross_entropy(outputs[0], batch["label"])
    return ce, {"ce": ce}
