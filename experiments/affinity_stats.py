"""Counts a train split's dilated-affinity statistics ahead of time and draws the paper's Fig. 3.

  python -m experiments.affinity_stats --config=experiments/configs/voc.py:deeplabv3plus50_affinity

A run with an affinity head counts the statistics it needs by itself the first time (with
progress in its log) and stores them with the prepared dataset
(<data_dir>/<builder>/<config>/<version>/affinity_stats/<split>.json,
`difnet_jax.models.affinity_stats`). This command does the same ahead of time, for every rate of
`config.model.deeplabv3plus.affinity_rates` and of the paper's sets (`PAPER_RATES`, so that
switching between them needs no recount), and draws Fig. 3 (the percentage of pixels in n0..n8
against the rate) beside the file as .png. `--output=FILE` writes a file of one's own instead
(read by a run through `--config.model.deeplabv3plus.affinity_stats=FILE`); a config that already
names one writes there. Entries of other rates already in the file are kept; `--recount` counts
the requested ones again. Nothing is written to the working directory unless FILE is there.
"""

from __future__ import annotations

import logging
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from difnet_jax.models import affinity, affinity_stats

log = logging.getLogger(__name__)

# Every rate of the paper's sets (Table 2): 8, 16, 32, 48, 64, (12, 24), (32, 64).
PAPER_RATES = affinity.expand_rates((8, 16, 32, 48, 64, (12, 24), (32, 64)))


def plot(per_rate: dict, path: str, title: str) -> None:
    """Fig. 3: the percentage of pixels in n0..n8 (one line each) against the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(per_rate, key=lambda k: tuple(int(v) for v in k.split(",")))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in range(affinity.NUM_CATEGORIES):
        ax.plot(range(len(keys)), [100 * per_rate[key]["freq"][k] for key in keys], marker="o", label=f"n{k}")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([key if key.split(",")[0] != key.split(",")[1] else key.split(",")[0] for key in keys])
    ax.set_xlabel("rate (r1, r2)")
    ax.set_ylabel("% of pixels")
    ax.set_title(title)
    ax.legend(ncol=3, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compute_and_save(config: ml_collections.ConfigDict, *, split: str = "train", paper_rates: bool = True,
                     output: str = "", recount: bool = False) -> str:
    """Counts what the file lacks, writes the JSON and the figure beside it; returns the JSON's path.

    The file: `output`, else `config.model.deeplabv3plus.affinity_stats` when set, else the one
    stored with the dataset (`affinity_stats.stats_path`).
    """
    own = config.model.deeplabv3plus
    rates = affinity.expand_rates(tuple(own.affinity_rates))
    extra = PAPER_RATES if paper_rates else ()
    if not rates and not extra:
        raise ValueError("config.model.deeplabv3plus.affinity_rates is empty and paper_rates=False: no rate to count")
    _, path = affinity_stats.split_stats(config.data.name, config.data.data_dir, rates, split, extra_rates=extra,
                                         recount=recount, path=output or own.affinity_stats)
    document = affinity_stats.read_document(path)
    plot(document["rates"], os.path.splitext(path)[0] + ".png",
         f"{config.data.name} {split}: pixels in n0..n8 per rate ({document.get('images', '?')} images)")
    return path


def main(argv):
    # Flags defined here, not at import: tests import this module beside other entry points' flags.
    config_flag = config_flags.DEFINE_config_file("config", None, "Path to a config file, with :ARG.",
                                                  lock_config=True)
    paper_flag = flags.DEFINE_bool("paper_rates", True, "Also count every rate of the paper's sets (Fig. 3).")
    split_flag = flags.DEFINE_string("split", "train", "The split to count.")
    output_flag = flags.DEFINE_string("output", "", "A JSON file to write instead of the dataset's own.")
    recount_flag = flags.DEFINE_bool("recount", False, "Count the requested rates again even if the file has them.")
    flags.mark_flags_as_required(["config"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
        path = compute_and_save(config_flag.value, split=split_flag.value, paper_rates=paper_flag.value,
                                output=output_flag.value, recount=recount_flag.value)
        log.info("Wrote %s and %s", path, os.path.splitext(path)[0] + ".png")

    app.run(run, argv)


if __name__ == "__main__":
    main(sys.argv)
