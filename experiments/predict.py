"""Segments image files with a trained run: an indexed label PNG and an overlay PNG per image.

  python -m experiments.predict --workdir=runs/difnet18_synthetic --input=photos/ --output=predictions/

--input is one image or a folder (every file directly inside it). For IMAGE.EXT it writes
OUTPUT/IMAGE.png (palette PNG, pixel value = class index, VOC colours) and
OUTPUT/IMAGE_overlay.png (image | prediction blended over it). Files that are not
readable images are reported by name and skipped; the exit code is then 1. Nothing is
overwritten without --force: if an output exists the command names it, writes
nothing and exits with code 2.
"""

from __future__ import annotations

import logging
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

import difnet_jax
from difnet_jax import config_compat, predict
from difnet_jax.evaluation.evaluator import model_probabilities
from experiments.run_config import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :ARG); default WORKDIR/config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
_INPUT = flags.DEFINE_string("input", None, "An image file or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the PNGs (created if missing).")
_FORCE = flags.DEFINE_bool("force", False, "Overwrite existing outputs.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SCALES = flags.DEFINE_list("scales", ["1.0"], "Input scales whose softmax probabilities are averaged.")
_FLIP = flags.DEFINE_bool("flip", False, "Also average over horizontally flipped inputs.")
flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    logging.getLogger("difnet_jax").setLevel(logging.INFO)
    inputs = predict.list_inputs(_INPUT.value)
    if not inputs:
        print(f"No files in {_INPUT.value}", file=sys.stderr)
        return 1
    clashes = predict.existing_outputs(inputs, _OUTPUT.value)
    if clashes and not _FORCE.value:  # Checked before the model is loaded: nothing is written.
        print("Refusing to overwrite (pass --force to allow):\n  " + "\n  ".join(clashes), file=sys.stderr)
        return 2
    trained = difnet_jax.load(_WORKDIR.value, _STEP.value, config=run_config(_WORKDIR.value, _CONFIG.value))
    scales = tuple(float(s) for s in _SCALES.value)
    probabilities_fn = lambda images: model_probabilities(trained.model, trained.variables,
                                                          jax.numpy.asarray(images), scales, _FLIP.value)
    summary = predict.predict_files(probabilities_fn, inputs, _OUTPUT.value,
                                    eval_size=trained.config.data.eval_size, force=_FORCE.value)
    print(f"Wrote {len(summary.written)} files for {len(summary.written) // 2} image(s) to {_OUTPUT.value}")
    for _, reason in summary.failed:
        print(f"FAILED {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.argv = config_compat.rewrite_argv(sys.argv)  # old flat keys (--config.model.walks) still work
    app.run(main)
