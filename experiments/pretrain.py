"""Pretrains the synthetic "ImageNet" backbones that `VARIANT,synthetic,pretrained` fine-tunes from, once.

  python -m experiments.pretrain                   # ResNet-18 of width 16: what the depth-18 variants read
  python -m experiments.pretrain --depths=18,34,50 # every depth the study uses

Trains a ResNet classifier on `synthetic_classes` (prepared in --data_dir on first use) and writes
torchvision-layout weights to `difnet_jax.backbone_weights.pretraining.default_weights_path(depth, width)` (the cache
directory: $DIFNET_JAX_CACHE, else ~/.cache/difnet_jax), with a .json beside them recording the
settings, the held-out accuracy and the minutes taken (difnet_jax/backbone_weights/pretraining.py). An existing file is
kept unless --force. A training run whose `pretrained` weights are missing makes them the same way.
"""

from __future__ import annotations

import json
import logging
import os

from absl import flags

from difnet_jax.backbone_weights import pretraining
from difnet_jax.user_errors import ArgumentError
from experiments import cli

log = logging.getLogger(__name__)
_DEFAULTS = pretraining.Settings()
_DEPTHS = cli.define_number_list("depths", "18", "ResNet depths to pretrain (18, 34, 50, 101).", int)
_WIDTH = flags.DEFINE_integer("width", _DEFAULTS.width, "Channels of the stem and layer1 (the synthetic runs': 16).")
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Images per step.")
_LR = flags.DEFINE_float("lr", _DEFAULTS.lr, "Peak learning rate (SGD, warm-up then cosine).")
_DATASET = flags.DEFINE_string("dataset", _DEFAULTS.dataset, "TFDS classification dataset (synthetic_classes[/tiny]).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir of the classification data; '' = TFDS's default.")
_OUTPUT = flags.DEFINE_string("output", "", "The .npz to write (one depth only); default: the cache path.")
_FORCE = flags.DEFINE_bool("force", False, "Pretrain again over existing weights.")


def main():
    if _OUTPUT.value and len(_DEPTHS.value) != 1:
        raise ArgumentError(f"--output={_OUTPUT.value!r} names one file: pass one depth (--depths={_DEPTHS.value})")
    for depth in _DEPTHS.value:
        if depth not in (18, 34, 50, 101):
            raise ArgumentError(f"--depths: {depth} is no ResNet depth; use 18, 34, 50 or 101")
        output = _OUTPUT.value or pretraining.default_weights_path(depth, _WIDTH.value)
        if os.path.exists(output) and not _FORCE.value:
            record_path = os.path.splitext(output)[0] + ".json"
            accuracy = json.load(open(record_path)).get("val_accuracy") if os.path.exists(record_path) else None
            log.info("%s exists (held-out accuracy %s); --force to pretrain again.", output,
                     "unknown" if accuracy is None else f"{accuracy:.3f}")
            continue
        settings = pretraining.Settings(depth=depth, width=_WIDTH.value, dataset=_DATASET.value, steps=_STEPS.value,
                                        batch_size=_BATCH.value, lr=_LR.value)
        pretraining.pretrain(settings, output, _DATA_DIR.value)
    return 0


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
