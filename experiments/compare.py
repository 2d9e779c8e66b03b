"""Compares trained runs side by side: a thin entry point over `difnet_jax.studies.compare`.

  python -m experiments.compare --workdirs=runs/difnet18_synthetic,runs/simdeeplab18_synthetic --out=runs/compare

Writes OUT/compare.md, OUT/curves.png and OUT/examples.png (see difnet_jax/studies/compare.py). Runs of
different datasets are refused (exit code 2); a workdir that cannot be compared is named and skipped.
"""

from __future__ import annotations

import sys

from absl import flags

from difnet_jax.studies.compare import NUM_PICTURES, compare
from experiments import cli
from experiments.run_config import run_config

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Run directories to compare, comma-separated.")
_OUT = flags.DEFINE_string("out", None, "Folder for compare.md, curves.png and examples.png (created if missing).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", NUM_PICTURES, "Validation images in examples.png.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides the runs' config.data.data_dir (the TFDS data_dir).")
flags.mark_flags_as_required(["workdirs", "out"])


def main():
    try:
        result = compare(_WORKDIRS.value, _OUT.value, num_images=_NUM_IMAGES.value, data_dir=_DATA_DIR.value,
                         load_config=run_config)
    except ValueError as error:  # DatasetMismatch, or nothing to compare
        print(f"Refusing to compare: {error}", file=sys.stderr)
        return 2
    for reason in result["skipped"]:
        print(f"SKIPPED {reason}", file=sys.stderr)
    print(open(result["paths"][0]).read())
    print("Wrote " + ", ".join(result["paths"]))
    return 0


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
