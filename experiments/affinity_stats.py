"""Counts the dilated-affinity statistics of a train split and draws the paper's Fig. 3.

  python -m experiments.affinity_stats --config=experiments/configs/voc.py:deeplabv3plus50_affinity

For every rate of `config.model.deeplabv3plus.affinity_rates` and of the paper's sets
(`PAPER_RATES`, so that switching between them needs no recount) it counts the pixels in each
category n0..n8 (k of the 8 neighbours agree; pixels with invalid neighbours as defined in
`difnet_jax.models.affinity`) and pi_r (positive pairs / valid pairs) over the full-size train images,
and writes them as JSON to `config.model.deeplabv3plus.affinity_stats` (or, when that is empty,
`deeplabv3plus.default_stats_path(config.data.name)`), keeping the entries of other rates already
in the file. The figure (percentage of n0..n8 against the rate) goes beside it as .png.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.models import affinity, deeplabv3plus

log = logging.getLogger(__name__)

# Every rate of the paper's sets (Table 2): 8, 16, 32, 48, 64, (12, 24), (32, 64).
PAPER_RATES = affinity.expand_rates((8, 16, 32, 48, 64, (12, 24), (32, 64)))


def stats_path(config: ml_collections.ConfigDict) -> str:
    return config.model.deeplabv3plus.affinity_stats or deeplabv3plus.default_stats_path(config.data.name)


def count_split(data_name: str, split: str, data_dir: str, rates) -> tuple[affinity.AffinityStats, int]:
    """(statistics of `rates` summed over the split's label maps, number of images)."""
    from difnet_jax.data import pipeline  # TFDS import only when counting

    source = pipeline.source(data_name, split, data_dir)
    total = affinity.AffinityStats(tuple(rates), np.zeros((len(rates), affinity.NUM_CATEGORIES), np.int64),
                                   np.zeros(len(rates), np.int64), np.zeros(len(rates), np.int64))
    for index in range(len(source)):
        label = np.asarray(source[index]["label"])
        label = label[..., 0] if label.ndim == 3 else label
        total = affinity.merge_stats(total, affinity.count_neighbours(label, rates, IGNORE_LABEL))
        if (index + 1) % 1000 == 0:
            log.info("%d / %d images", index + 1, len(source))
    return total, len(source)


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


def compute_and_save(config: ml_collections.ConfigDict, *, split: str = "train", paper_rates: bool = True) -> str:
    """Counts, writes the JSON (merged with the file's other rates) and the figure; returns the JSON's path."""
    own = config.model.deeplabv3plus
    rates = affinity.expand_rates(tuple(own.affinity_rates) + (PAPER_RATES if paper_rates else ()))
    if not rates:
        raise ValueError("config.model.deeplabv3plus.affinity_rates is empty and paper_rates=False: no rate to count")
    path = stats_path(config)
    stats, images = count_split(config.data.name, split, config.data.data_dir, rates)
    document = {"dataset": config.data.name, "split": split, "images": images, "ignore_label": IGNORE_LABEL,
                "categories": "k = floor(8 * agreeing valid neighbours / valid neighbours + 1/2); "
                              "pi = positive pairs / valid pairs (difnet_jax/models/affinity.py)",
                "rates": {}}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if (old.get("dataset"), old.get("split")) == (config.data.name, split):
            document["rates"].update(old.get("rates", {}))
    document["rates"].update(affinity.stats_to_json(stats))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(document, f, indent=1)
    os.replace(path + ".tmp", path)
    plot(document["rates"], os.path.splitext(path)[0] + ".png",
         f"{config.data.name} {split}: pixels in n0..n8 per rate ({images} images)")
    return path


def main(argv):
    # Flags defined here, not at import: tests import this module beside other entry points' flags.
    config_flag = config_flags.DEFINE_config_file("config", None, "Path to a config file, with :ARG.",
                                                  lock_config=True)
    paper_flag = flags.DEFINE_bool("paper_rates", True, "Also count every rate of the paper's sets (Fig. 3).")
    split_flag = flags.DEFINE_string("split", "train", "The split to count.")
    flags.mark_flags_as_required(["config"])

    def run(args):
        if len(args) > 1:
            raise app.UsageError(f"Unexpected arguments: {args[1:]}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
        path = compute_and_save(config_flag.value, split=split_flag.value, paper_rates=paper_flag.value)
        log.info("Wrote %s and %s", path, os.path.splitext(path)[0] + ".png")

    app.run(run, argv)


if __name__ == "__main__":
    main(sys.argv)
