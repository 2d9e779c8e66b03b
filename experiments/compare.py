"""Compares trained runs side by side: a thin entry point over `difnet_jax.studies.compare`.

  python -m experiments.compare --workdirs=runs/difnet18_synthetic,runs/simdeeplab18_synthetic --out=runs/compare

Writes OUT/compare.md, OUT/curves.png and OUT/examples.png (see difnet_jax/studies/compare.py) and prints
the headline table (steps, final and best mIoU, pixel accuracy per run) and the report's path. Runs of
different datasets, a workdir that does not exist (unless --skip_missing) and an --out that cannot be
written are refused before anything loads (exit code 2); a run that is unfinished or has no evaluation
is named and skipped.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from difnet_jax.studies.compare import NUM_PICTURES, compare, headline_table
from difnet_jax.user_errors import MissingPathError
from experiments import cli
from experiments.run_config import run_config

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories to compare, comma-separated.")
_OUT = flags.DEFINE_string("out", None, "Folder for compare.md, curves.png and examples.png (created if missing).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", NUM_PICTURES, "Validation images in examples.png.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides the runs' config.data.data_dir (the TFDS data_dir).")
_SKIP_MISSING = flags.DEFINE_bool("skip_missing", False, "Skip a workdir that does not exist (named on stderr) "
                                   "instead of refusing.")
flags.mark_flags_as_required(["workdirs", "out"])
cli.mark_flags_as_nonempty(["workdirs", "out"])


def main():
    missing = [workdir for workdir in _WORKDIRS.value if not os.path.isdir(workdir)]
    if missing and not _SKIP_MISSING.value:
        raise MissingPathError(f"--workdirs: {', '.join(map(repr, missing))} does not exist: fix the path, or pass "
                               "--skip_missing to compare the others")
    try:
        result = compare(_WORKDIRS.value, _OUT.value, num_images=_NUM_IMAGES.value, data_dir=_DATA_DIR.value,
                         load_config=run_config)
    except ValueError as error:  # DatasetMismatch, or nothing to compare
        print(f"Refusing to compare: {error}", file=sys.stderr)
        return 2
    for reason in result["skipped"]:
        print(f"SKIPPED {reason}", file=sys.stderr)
    print(headline_table(result["runs"]))
    print(f"Report: {result['paths'][0]} (also " + ", ".join(result["paths"][1:]) + ")")
    return 0


def run() -> None:
    cli.run(main, outputs=(lambda: _OUT.value,))


if __name__ == "__main__":
    run()
