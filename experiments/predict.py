"""Segments image files with a trained run: an indexed label PNG and an overlay PNG per image.

  python -m experiments.predict --workdir=runs/difnet18_synthetic --input=photos/ --output=predictions/

--input is one image or a folder (its image files by extension: .png, .jpg, ...; other files
are counted and skipped). For IMAGE.EXT it writes OUTPUT/IMAGE.png (palette PNG, pixel value =
class index, VOC colours) and OUTPUT/IMAGE_overlay.png (image | prediction blended over it);
where two inputs share a stem (a.png, a.jpg) the extension joins it (a_png.png, a_jpg.png).
Image files that cannot be read are reported by name and skipped; the exit code is then 1.
A missing --input, a folder without images and existing outputs (without --force) are
refused before the model loads, with nothing written: one line, exit code 2. An output folder this
command created is removed again if it stays empty, or if the command fails or is interrupted.
"""

from __future__ import annotations

import sys

import jax
from absl import flags
from ml_collections import config_flags

import difnet_jax
from difnet_jax import predict
from difnet_jax.data import normalization
from difnet_jax.evaluation.evaluator import model_probabilities
from difnet_jax.user_errors import MissingPathError
from experiments import cli
from experiments.run_config import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :ARG); default WORKDIR/config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SCALES = cli.define_number_list("scales", "1.0", "Input scales whose softmax probabilities are averaged.")
_FLIP = flags.DEFINE_bool("flip", False, "Also average over horizontally flipped inputs.")
_INPUT = flags.DEFINE_string("input", None, "An image file or a folder of images.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder for the PNGs (created if missing).")
_FORCE = flags.DEFINE_bool("force", False, "Overwrite existing outputs.")
flags.mark_flags_as_required(["workdir", "input", "output"])
cli.mark_flags_as_nonempty(["workdir", "input", "output"])


def main():
    found = predict.find_inputs(_INPUT.value)  # Checked before the model is loaded: nothing is written.
    inputs = found.images
    if not inputs:
        raise MissingPathError(f"no image files in {_INPUT.value!r} ({len(found.skipped)} other file(s); "
                               f"image extensions: {', '.join(predict.IMAGE_SUFFIXES)})")
    if found.skipped:
        print(f"Skipping {len(found.skipped)} file(s) that are not images by extension, e.g. "
              f"{found.skipped[0]!r}", file=sys.stderr)
    predict.check_outputs(inputs, _OUTPUT.value, _FORCE.value)
    trained = difnet_jax.load(_WORKDIR.value, _STEP.value, config=run_config(_WORKDIR.value, _CONFIG.value))
    scales = tuple(float(s) for s in _SCALES.value)
    probabilities_fn = lambda images: model_probabilities(trained.model, trained.variables,
                                                          jax.numpy.asarray(images), scales, _FLIP.value)
    summary = predict.predict_files(probabilities_fn, inputs, _OUTPUT.value,
                                    eval_size=trained.config.data.eval_size, force=_FORCE.value,
                                    normalization=normalization.of_config(trained.config.data))
    print(f"Wrote {len(summary.written)} files for {len(summary.written) // 2} image(s) to {_OUTPUT.value}")
    for _, reason in summary.failed:
        print(f"FAILED {reason}", file=sys.stderr)
    return 1 if summary.failed else 0


def run() -> None:
    cli.run(main, outputs=(lambda: _OUTPUT.value,))


if __name__ == "__main__":
    run()
