"""Held-out train data for choosing hyper-parameters: `data.train_split` / `data.eval_split` as TFDS split slices."""

import pytest

from difnet_jax import train
from difnet_jax.data import pipeline
from tests.helpers import TINY, tiny_config


def _ids(split, data_dir):
    source = pipeline.source(TINY, split, data_dir)
    return [source[i]["id"] for i in range(len(source))]


def test_the_slices_split_the_train_split_in_two(tiny_data_dir):
    fit, held_out, whole = (_ids(s, tiny_data_dir) for s in ("train[:75%]", "train[75%:]", "train"))
    assert (len(fit), len(held_out)) == (36, 12)
    assert not set(fit) & set(held_out) and sorted(fit + held_out) == sorted(whole)
    assert not set(held_out) & set(_ids("validation", tiny_data_dir))


class _Sources(Exception):
    pass


def test_training_reads_the_configured_splits(tiny_data_dir, tmp_path, monkeypatch):
    config = tiny_config(tiny_data_dir)
    assert (config.data.train_split, config.data.eval_split) == ("train", "validation")
    config.data.train_split, config.data.eval_split = "train[:75%]", "train[75%:]"
    opened, original = [], pipeline.source

    def source(name, split, data_dir=None):
        opened.append(split)
        if len(opened) == 2:
            raise _Sources()  # both sources opened: nothing more to see
        return original(name, split, data_dir)

    monkeypatch.setattr(train.pipeline, "source", source)
    with pytest.raises(_Sources):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert opened == ["train[:75%]", "train[75%:]"]
