"""The mechanism study of a trained run, in WORKDIR/mechanism/.

  python -m experiments.mechanism --workdir=runs/difnet18_synthetic
  python -m experiments.mechanism --workdir=runs/difnet18_synthetic --nodes='3,4;8,8' --num_images=2 --skip_timing
  python -m experiments.mechanism --workdir=runs/pdn18_24nb_1m_synthetic [--site=5,6]

DifNet (Sec. 5.3-5.4): Figs. 2-4 and Tables 3-4. Nodes are seed-grid cells (y, x), the cell
over pixel (8y, 8x); by default they are chosen per image, deep inside regions of different
ground-truth classes. PDN: each diffusion layer's prediction and the valid receptive fields
(Fig. 4) of one feature-grid site (`--site`, default the first image's centre). The studies are
about one family's mechanism each: `STUDIES` maps the family to its study.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

import difnet_jax
from difnet_jax import checkpointing
from difnet_jax.evaluation import crf
from difnet_jax.studies.difnet_mechanism import run_study
from difnet_jax.studies.pdn_mechanism import run_pdn_study
from experiments import cli
from experiments.run_config import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :ARG); default WORKDIR/config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The DifNet or PDN run's directory (config.json, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SPLIT = flags.DEFINE_string("split", None, "Split the images come from; default config.data.eval_split.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Images shown in the figures (the split's first ones).")
_NODES = flags.DEFINE_string("nodes", None, "Seed-grid nodes 'y,x;y,x;...' for Fig. 3; default: chosen per image.")
_NUM_NODES = flags.DEFINE_integer("num_nodes", 4, "Nodes chosen per image when --nodes is not given.")
_TIMING_SIZE = flags.DEFINE_integer("timing_size", 505, "Image side for the timings of Table 4.")
_TIMING_RUNS = flags.DEFINE_integer("timing_runs", 10, "Timed runs per part (after warm-up).")
_SKIP_TIMING = flags.DEFINE_bool("skip_timing", False, "Leave out Table 4.")
_TIME_CRF = flags.DEFINE_bool("time_crf", False, "Also time the dense CRF (10 iterations) in Table 4.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir (the TFDS data_dir).")
_SITE = flags.DEFINE_string("site", None, "PDN: the feature-grid cell 'y,x' whose receptive field is drawn.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the figures and tables go; default WORKDIR/mechanism.")
flags.mark_flags_as_required(["workdir"])
cli.mark_flags_as_nonempty(["workdir", "output_dir"])


def output_dir() -> str | None:
    """--output_dir, by default WORKDIR/mechanism."""
    return _OUTPUT_DIR.value or (os.path.join(_WORKDIR.value, "mechanism") if _WORKDIR.value else None)


def parse_nodes(text: str | None) -> list[tuple[int, int]] | None:
    """'3,4;8,8' -> [(3, 4), (8, 8)]."""
    if not text:
        return None
    try:
        return [(int(y), int(x)) for y, x in (item.split(",") for item in text.split(";") if item.strip())]
    except ValueError as error:
        raise app.UsageError(f"--nodes must look like 'y,x;y,x', got {text!r}") from error


def _difnet_study(restored):
    return run_study(
        restored, num_images=_NUM_IMAGES.value, nodes=parse_nodes(_NODES.value), num_nodes=_NUM_NODES.value,
        split=_SPLIT.value, timing_size=_TIMING_SIZE.value, timing_runs=_TIMING_RUNS.value,
        crf_params=crf.CRFParams() if _TIME_CRF.value else None, skip_timing=_SKIP_TIMING.value,
        output_dir=output_dir(),
    )


def _pdn_study(restored):
    site = parse_nodes(_SITE.value)
    return run_pdn_study(restored, num_images=_NUM_IMAGES.value, split=_SPLIT.value, site=site[0] if site else None,
                         output_dir=output_dir())


STUDIES = {"difnet": _difnet_study, "pdn": _pdn_study}


def main():
    config = run_config(_WORKDIR.value, _CONFIG.value, _DATA_DIR.value)
    if config.model.name not in STUDIES:
        raise app.UsageError(f"no mechanism study for {config.model.name!r} runs; there is one for {sorted(STUDIES)}")
    checkpointing.check_writable(output_dir(), "output folder", "--output_dir", keep=False)  # before the model loads
    trained = difnet_jax.load(_WORKDIR.value, _STEP.value, config=config)
    result = STUDIES[config.model.name](trained.run)
    for path in result["paths"]:
        if path.endswith(".md"):
            print(open(path).read())
    print("Wrote " + ", ".join(result["paths"]))


def run() -> None:
    cli.run(main, outputs=(output_dir,))


if __name__ == "__main__":
    run()
