"""A dataset's dilated-affinity statistics, stored with the prepared dataset and counted when first needed.

Dilated Affinity (papers/004) reads two statistics of the train set per rate r: pi_r, the frequency
of positive pairs (the head's bias, Sec. 4.1), and the share of pixels in each category n0..n8 (the
loss weights of Eq. 5, Fig. 3); `affinity.count_neighbours` defines them. They are a property of a
split and a rate, not of a run, so they live beside the prepared TFDS dataset:

    <data_dir>/<builder>/<config>/<version>/affinity_stats/<split>.json   (one entry per rate)

`split_stats` reads the rates a caller needs from that file and counts the ones it lacks over the
split's full-size label maps (logging its progress), merging them into the file. Nothing is read
from or written to the working directory. `python -m experiments.affinity_stats` counts ahead of
time (also the paper's other rates) and draws Fig. 3 beside the file.

`dataset_facts` is DeepLabv3+'s `Family.dataset_facts`: the statistics its affinity head's build and
loss are handed (so that building the model reads no data).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.models import affinity, deeplabv3plus
from difnet_jax.user_errors import ConfigError

log = logging.getLogger(__name__)

CATEGORIES_NOTE = ("k = floor(8 * agreeing valid neighbours / valid neighbours + 1/2); "
                   "pi = positive pairs / valid pairs (difnet_jax/models/affinity.py)")


def stats_dir(data_name: str, data_dir: str = "") -> str:
    """The folder of a dataset's statistics: `affinity_stats/` in the prepared dataset's version folder."""
    import tensorflow_datasets as tfds  # noqa: PLC0415  (TFDS only where a dataset is looked up)

    from difnet_jax.data import pipeline  # noqa: PLC0415  (registers the project's builders)

    builder = tfds.builder(pipeline.builder_name(data_name), data_dir=data_dir or None, file_format="array_record")
    return os.path.join(os.fspath(builder.data_dir), "affinity_stats")


def stats_path(data_name: str, data_dir: str = "", split: str = "train") -> str:
    """<stats_dir>/<split>.json."""
    return os.path.join(stats_dir(data_name, data_dir), f"{split}.json")


def count_split(data_name: str, split: str, data_dir: str, rates: Sequence[affinity.Rate],
                log_every_s: float = 10.0) -> tuple[affinity.AffinityStats, int]:
    """(statistics of `rates` summed over the split's label maps, number of images), logging the progress."""
    from difnet_jax.data import pipeline  # noqa: PLC0415

    rates = tuple(tuple(r) for r in rates)
    source = pipeline.source(data_name, split, data_dir)
    total = affinity.AffinityStats(rates, np.zeros((len(rates), affinity.NUM_CATEGORIES), np.int64),
                                   np.zeros(len(rates), np.int64), np.zeros(len(rates), np.int64))
    start = last = time.perf_counter()
    log.info("Counting the affinity statistics of %s/%s (%d images, rates %s), once for this dataset.",
             data_name, split, len(source), list(rates))
    for index in range(len(source)):
        label = np.asarray(source[index]["label"])
        label = label[..., 0] if label.ndim == 3 else label
        total = affinity.merge_stats(total, affinity.count_neighbours(label, rates, IGNORE_LABEL))
        now = time.perf_counter()
        if now - last >= log_every_s and index + 1 < len(source):
            last = now
            done = index + 1
            log.info("affinity statistics: %d / %d images, %.0f s left", done, len(source),
                     (now - start) / done * (len(source) - done))
    log.info("Counted the affinity statistics of %d images in %.1f s.", len(source), time.perf_counter() - start)
    return total, len(source)


def read_document(path: str) -> dict:
    """The JSON document at `path`, or an empty one when there is none."""
    if not os.path.exists(path):
        return {"rates": {}}
    with open(path) as f:
        return json.load(f)


def _document_of(path: str, data_name: str, split: str) -> dict:
    document = read_document(path)
    if (document.get("dataset", data_name), document.get("split", split)) != (data_name, split):
        return {"rates": {}}
    return document


def write_document(path: str, document: dict) -> None:
    """Writes atomically (a run and the script may count the same split at once)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(document, f, indent=1)
    os.replace(temporary, path)


def split_stats(data_name: str, data_dir: str, rates: Sequence[affinity.Rate], split: str = "train", *,
                extra_rates: Sequence[affinity.Rate] = (), recount: bool = False, path: str = "",
                ) -> tuple[affinity.AffinityStats, str]:
    """(statistics of `rates`, the file's path); rates the file lacks (and `extra_rates`) are counted and added.

    The file is `stats_path(...)` unless `path` names another one. `recount` counts every
    requested rate again. The file's other entries are kept (a file of another dataset or split
    is started afresh).
    """
    rates = tuple(tuple(r) for r in rates)
    path = path or stats_path(data_name, data_dir, split)
    document = _document_of(path, data_name, split)
    wanted = affinity.expand_rates(rates + tuple(tuple(r) for r in extra_rates))
    missing = wanted if recount else tuple(r for r in wanted if affinity.rate_key(r) not in document["rates"])
    if missing:
        counted, images = count_split(data_name, split, data_dir, missing)
        document = _document_of(path, data_name, split)  # again: another process may have added rates meanwhile
        document.update({"dataset": data_name, "split": split, "images": images, "ignore_label": IGNORE_LABEL,
                         "categories": CATEGORIES_NOTE})
        document.setdefault("rates", {}).update(affinity.stats_to_json(counted))
        try:
            write_document(path, document)
        except OSError as error:
            raise OSError(f"cannot write the affinity statistics to {path} ({error}); point "
                          "config.model.deeplabv3plus.affinity_stats to a JSON file written with "
                          "`python -m experiments.affinity_stats --output=FILE`") from error
        log.info("Wrote the affinity statistics of rates %s to %s.", list(missing), path)
    return affinity.stats_from_json(document["rates"], rates, path), path


@functools.lru_cache(maxsize=16)
def _stored_statistics(dataset: str, data_dir: str, rates: tuple[affinity.Rate, ...]) -> affinity.AffinityStats:
    return split_stats(dataset, data_dir, rates)[0]


def dataset_facts(model: ml_collections.ConfigDict) -> dict[str, affinity.AffinityStats]:
    """{"affinity_stats": the train set's statistics of the affinity head's rates}, {} without a head: from the file
    `model.deeplabv3plus.affinity_stats` names, else the ones stored with the prepared dataset `affinity_stats_dataset`
    (`split_stats`: counted there the first time, with progress)."""
    own = deeplabv3plus.settings(model)
    if not own.affinity_rates:
        return {}
    if own.affinity_stats:
        return {"affinity_stats": affinity.load_stats(own.affinity_stats, own.affinity_rates)}
    key = f"config.model.{deeplabv3plus.NAME}"
    if not own.affinity_stats_dataset:
        raise ConfigError(f"{key}.affinity_stats_dataset is empty: name the dataset whose train split's statistics "
                          f"the affinity head uses, or set {key}.affinity_stats to a file")
    return {"affinity_stats": _stored_statistics(own.affinity_stats_dataset, own.affinity_stats_data_dir,
                                                 own.affinity_rates)}
