"""The family table: `FAMILIES`, from `config.model.name` to a family's entry points.

`family.Family` holds build, loss, backbones, check, defaults, dataset facts, extra predictions, the training
output stride, affinity propagation, the variant's label, the keys a resume may change, the renamed
and as-ran keys of older configs, the validation pictures and what the evaluation report times.
Training, evaluation and the config checks read it; nothing else branches on the model's name.
Adding a family = its model file, one entry here,
its variants in experiments/configs/variants.py, the README and its tests.
"""

from __future__ import annotations

import ml_collections

from difnet_jax.models import affinity_stats, deeplabv3plus, difnet, pdn, simdeeplab
from difnet_jax.models.family import Facts, Family, initialised_backbones, segmentation_loss

FAMILIES: dict[str, Family] = {
    "difnet": Family(build=difnet.build, loss=difnet.loss, backbones=difnet.backbones, check=difnet.check,
                     defaults=difnet.defaults, extra_predictions=difnet.extra_predictions, label=difnet.label,
                     resumable_keys=difnet.RESUMABLE_KEYS, renamed_keys=difnet.RENAMED_KEYS,
                     pictures=difnet.pictures, timed_part=difnet.timed_part),
    "simdeeplab": Family(build=simdeeplab.build, loss=segmentation_loss, backbones=simdeeplab.backbones,
                         check=simdeeplab.check, defaults=simdeeplab.defaults, label=simdeeplab.label),
    "pdn": Family(build=pdn.build, loss=pdn.loss, backbones=pdn.backbones, check=pdn.check, defaults=pdn.defaults,
                  extra_predictions=pdn.extra_predictions, label=pdn.label, resumable_keys=pdn.RESUMABLE_KEYS),
    "deeplabv3plus": Family(build=deeplabv3plus.build, loss=deeplabv3plus.loss, backbones=deeplabv3plus.backbones,
                            check=deeplabv3plus.check, defaults=deeplabv3plus.defaults,
                            dataset_facts=affinity_stats.dataset_facts,
                            train_output_stride=deeplabv3plus.train_output_stride,
                            propagation=deeplabv3plus.propagation, label=deeplabv3plus.label,
                            resumable_keys=deeplabv3plus.RESUMABLE_KEYS, as_ran=deeplabv3plus.LEGACY,
                            pictures=deeplabv3plus.pictures),
}


def family_of(model: ml_collections.ConfigDict) -> Family:
    """The table entry of `config.model.name`; ValueError naming the known families otherwise."""
    if model.name not in FAMILIES:
        raise ValueError(f"config.model.name must be one of {tuple(FAMILIES)}, got {model.name!r}")
    return FAMILIES[model.name]


def pretrained_backbones(model: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The backbone modules `model.backbone_init` initialises; () when training from scratch."""
    return initialised_backbones(model, family_of(model).backbones(model))


def dataset_facts(model: ml_collections.ConfigDict) -> Facts:
    """What the family's build and loss read from the train set (`Family.dataset_facts`); may read the dataset."""
    return family_of(model).dataset_facts(model)


def build_model(model: ml_collections.ConfigDict, num_classes: int, facts: Facts | None = None):
    """The network `config.model` describes (keys: experiments/configs/variants.py and each family's defaults).

    facts: `dataset_facts(model)`, asked here when None (DeepLabv3+ with an affinity head: its statistics).
    """
    return family_of(model).build(model, num_classes, dataset_facts(model) if facts is None else facts)
