"""Shared fixtures: a tiny synthetic_shapes dataset prepared once per test session, and one tiny trained run
(DifNet-18 at width 8, 2 steps, logged every step, evaluated at step 2) that every test needing a workdir reads.

The suite runs XLA with most optimisations off (JAX_DISABLE_MOST_OPTIMIZATIONS, before jax is
imported; subprocesses inherit it): the tests' models are tiny, so compiling dominates and this
halves the suite's CPU time (measured on test_families); results are the same computation.
Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test the optimised programs. For the same reason XLA's CPU
backend emits fusions with its classic emitters (XLA_FLAGS=--xla_cpu_use_fusion_emitters=false): the
train step of DifNet-18 at width 8 compiles in 4.6 s of CPU instead of 7.8 s, its initialiser in 3.4 s
instead of 4.9 s (jaxlib 0.10.2, one cold process each); put the flag in XLA_FLAGS yourself, =true, to
test the default emitters.

Compiled programs go to JAX's persistent compilation cache in one directory per test session
(JAX_COMPILATION_CACHE_DIR, inherited by the subprocesses): a program compiled once, by this process
or by one of the command lines the tests start, is read back instead of compiled again (verified on
CPU with this jaxlib: a second process compiling the same jitted function loads it from the cache).
Set JAX_COMPILATION_CACHE_DIR yourself to keep the cache between sessions.
"""

import atexit
import fcntl
import functools
import os
import shutil
import tempfile

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()
if os.environ.get("PYTEST_XDIST_WORKER") and "intra_op_parallelism_threads" not in os.environ["XLA_FLAGS"]:
    # One worker per core (-n auto): each worker's XLA runs on one thread, as the claims study's trainings do
    # (two one-thread processes beat two that each start a thread per core: BENCHMARKS.md, T1; for the suite,
    # 7 % less CPU, the same wall time within noise).
    os.environ["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="difnet_jax_test_cache_")
    atexit.register(functools.partial(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from difnet_jax.data import pipeline  # noqa: E402
from tests.helpers import TINY, tiny_config  # noqa: E402


def _made_once(tmp_path_factory, name, make) -> str:
    """`make(path)` once per test session. Alone, the session makes it in its own temp folder; under
    pytest-xdist the first worker to ask makes it in the folder the workers share, the others wait for it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = str(tmp_path_factory.getbasetemp() / name)
        make(path)
        return path
    path = str(tmp_path_factory.getbasetemp().parent / name)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not os.path.exists(path + ".done"):
            shutil.rmtree(path, ignore_errors=True)  # what a worker that failed left
            make(path)
            open(path + ".done", "w").close()
    return path


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """Read by the tests (one that writes beside the dataset copies it first)."""
    return _made_once(tmp_path_factory, "tfds", lambda path: pipeline.prepare(TINY, path))


@pytest.fixture(scope="session")
def tiny_workdir(tiny_data_dir, tmp_path_factory):
    """The shared trained run; tests that change a workdir copy it first (some write reports into it:
    each xdist worker reads its own copy)."""
    from difnet_jax import train

    def make(workdir):
        config = tiny_config(tiny_data_dir)  # its model, batch and evaluation: programs other tests compile too
        config.train.num_steps = 2
        config.train.log_every = 1
        train.train_and_evaluate(config, workdir)

    made = _made_once(tmp_path_factory, "tiny_difnet_logged", make)
    workdir = str(tmp_path_factory.getbasetemp() / "tiny_difnet_logged")
    if made != workdir:
        shutil.copytree(made, workdir)
    return workdir


# The modules that take longest, longest first (CPU seconds with --durations; most compile or start
# command lines). Under pytest-xdist (.ci/run: --dist loadfile --no-loadscope-reorder) each worker
# takes the next module when it is free, so starting with these keeps the workers busy to the end;
# a stale order costs only that balance. Alone, the session keeps the files' order.
SLOWEST_MODULES = ("test_faults.py", "test_families.py", "test_scaling.py", "test_pdn.py", "test_cli.py",
                   "test_train.py", "test_models.py", "test_config.py", "test_pretrained.py", "test_evaluation.py",
                   "test_accelerator.py", "test_api.py", "test_deeplabv3plus.py", "test_evaluator.py",
                   "test_pretraining.py", "test_launch.py", "test_pdn_study.py", "test_resnet_layout.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order
