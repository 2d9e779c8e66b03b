"""Why affinity propagation with a Dilated Affinity run's own affinity diverges under iteration (issue 21).

  python -m experiments.affinity_propagation --workdir=runs/deeplabv3plus18_affinity_synthetic
  python -m experiments.affinity_propagation --workdir=runs/deeplabv3plus18_affinity_synthetic \
      --out=docs/results/affinity_propagation.md

Measures on the run's validation split (Dilated Affinity Eq. 6-7, Fig. 4; `difnet_jax.studies.affinity_propagation`):
the predicted affinity's accuracy per category n_k and rate, the balance of Eq. 6 per pixel (own term against the
neighbours' affinity, the leak through negative pairs and through pairs without targets), the mIoU at T = 1, 3, 10
with one suspected cause removed at a time (diagnostics, never settings), per-class IoU, and the channel layout of
the loss against propagation. Writes the Markdown report to --out (default WORKDIR/affinity_propagation.md), the
plain data to --json if given, and prints the report. `--cross_check` (default on) also runs the project's
evaluator with --propagate / --propagate_oracle at the same T and shows both, which must agree. The workdir is only
read unless --out points into it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from difnet_jax.user_errors import ArgumentError
from experiments import cli
from experiments.run_config import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :ARG); default WORKDIR/config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A Dilated Affinity run's directory (a *_affinity variant).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_OUT = flags.DEFINE_string("out", None, "The Markdown report; default WORKDIR/affinity_propagation.md.")
_JSON = flags.DEFINE_string("json", None, "Also write the measurements as plain data (JSON) to this file.")
_SPLIT = flags.DEFINE_string("split", None, "Split to measure; default config.data.eval_split.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per batch; default config.train.eval_batch_size.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", None, "Measure only about the first N images (whole batches).")
_CROSS_CHECK = flags.DEFINE_bool("cross_check", True, "Also run the project's evaluator with --propagate and "
                                 "--propagate_oracle at the same T (one more pass over the split; not with "
                                 "--max_images).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir (the TFDS data_dir).")
flags.mark_flags_as_required(["workdir"])


def main():
    from difnet_jax import checkpointing, trained_run  # here: a mistyped flag costs no import
    from difnet_jax.models import family_of
    from difnet_jax.studies import affinity_propagation as study

    workdir = _WORKDIR.value
    config = run_config(workdir, _CONFIG.value, _DATA_DIR.value)
    if family_of(config.model).propagation(config.model) is None:
        raise ArgumentError(f"{workdir!r} is a {config.model.name}-{config.model.depth} run without an affinity head: "
                            "pass the workdir of a Dilated Affinity run (a *_affinity variant, e.g. "
                            "runs/deeplabv3plus18_affinity_synthetic)")
    out = _OUT.value or os.path.join(workdir, "affinity_propagation.md")
    checkpointing.check_writable(os.path.dirname(os.path.abspath(out)), "report folder", "--out")
    if _JSON.value:
        checkpointing.check_writable(os.path.dirname(os.path.abspath(_JSON.value)), "JSON folder", "--json")
    run = trained_run.load_run(workdir, config, _STEP.value)
    result = study.study(run, split=_SPLIT.value, batch_size=_BATCH_SIZE.value, max_images=_MAX_IMAGES.value)
    evaluator = None
    if _CROSS_CHECK.value and _MAX_IMAGES.value is None:
        evaluator = study.evaluator_mious(run, split=_SPLIT.value, batch_size=_BATCH_SIZE.value)
    command = "python -m experiments.affinity_propagation " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = study.markdown_report(result, command=command, evaluator=evaluator)
    with open(out, "w") as f:
        f.write(text)
    written = [out]
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({**result, "evaluator": evaluator, "command": command}, f, indent=1)
        written.append(_JSON.value)
    print(text)
    print("Wrote " + ", ".join(written))


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
