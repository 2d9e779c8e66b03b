"""Shared fixtures: a tiny synthetic_shapes dataset prepared once per test session."""

import pytest

from difnet_jax.data import pipeline

TINY = "synthetic_shapes/tiny"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(TINY, data_dir)
    return data_dir
