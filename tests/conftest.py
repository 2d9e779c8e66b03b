"""Shared fixtures: a tiny synthetic_shapes dataset prepared once per test session, and one tiny trained run
(DifNet-18 at width 8, 2 steps, logged every step, evaluated at step 2) that every test needing a workdir reads.

The suite runs XLA with most optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS, before jax is
imported; subprocesses inherit it): the tests' models are tiny, so compiling dominates and this
halves the suite's CPU time (measured on test_families); results are the same computation.
Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs.

Compiled programs go to JAX's persistent compilation cache in one directory per test session
(JAX_COMPILATION_CACHE_DIR, inherited by the subprocesses): a program compiled once, by this process
or by one of the command lines the tests start, is read back instead of compiled again (verified on
CPU with this jaxlib: a second process compiling the same jitted function loads it from the cache).
Set JAX_COMPILATION_CACHE_DIR yourself to keep the cache between sessions.
"""

import atexit
import functools
import os
import shutil
import tempfile

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="difnet_jax_test_cache_")
    atexit.register(functools.partial(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from difnet_jax.data import pipeline  # noqa: E402
from tests.helpers import TINY, tiny_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(TINY, data_dir)
    return data_dir


@pytest.fixture(scope="session")
def tiny_workdir(tiny_data_dir, tmp_path_factory):
    """The shared trained run; tests that change a workdir copy it first."""
    from difnet_jax import train

    workdir = str(tmp_path_factory.getbasetemp() / "tiny_difnet_logged")
    config = tiny_config(tiny_data_dir)
    config.model.aspp_rates = (1,)
    config.train.batch_size = 2
    config.train.num_steps = 2
    config.train.log_every = 1
    train.train_and_evaluate(config, workdir)
    return workdir
