"""Shared fixtures: a tiny synthetic_shapes dataset prepared once per test session.

The suite runs XLA with most optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS, before jax is
imported; subprocesses inherit it): the tests' models are tiny, so compiling dominates and this
halves the suite's CPU time (measured on test_families); results are the same computation.
Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs.
"""

import os

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402

from difnet_jax.data import pipeline  # noqa: E402

TINY = "synthetic_shapes/tiny"


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(TINY, data_dir)
    return data_dir
