"""Smoke tests of the benchmark scripts' pure-Python parts (labels, affinity stats, budget, tables): no compiles."""

import os

import numpy as np
import pytest
from absl import flags

from benchmarks import affinity as affinity_benchmark  # noqa: F401 (its flags must not collide with models')
from benchmarks import models
from difnet_jax.models import affinity
from experiments.configs.voc import get_config


@pytest.fixture(autouse=True, scope="module")
def parsed_flags():
    if not flags.FLAGS.is_parsed():  # their defaults; parsing would also validate the flags of every module
        flags.FLAGS.mark_as_parsed()  # imported so far (test_launch's imports make --config required)


@pytest.mark.parametrize("variant, label", [
    ("difnet50", "DifNet-50"), ("simdeeplab18", "Sim-DeepLab-18"), ("pdn18_24nb_1m", "PDN-18 24NB-1M"),
    ("pdn50_8nb_2m", "PDN-50 8NB-2M"), ("deeplabv3plus18", "DeepLabv3+-18"),
    ("deeplabv3plus18_affinity", "DeepLabv3+-18 + affinity"),
])
def test_model_label(variant, label):
    assert models.model_label(variant) == label


def test_feature_grid():
    assert models.feature_grid(505) == 64 and models.feature_grid(321) == 41 and models.feature_grid(513) == 65


def test_affinity_setup_writes_loadable_stats():
    labels = np.random.default_rng(0).integers(0, 3, (1, 40, 40)).astype(np.int32)
    config = get_config("deeplabv3plus18_affinity")
    path = models._affinity_setup(config, labels)
    try:
        assert config.model.deeplabv3plus.affinity_stats == path
        rates = affinity.expand_rates(tuple(config.model.deeplabv3plus.affinity_rates))
        stats = affinity.load_stats(path, rates)
        assert stats.counts.shape == (len(rates), 9) and stats.counts.sum() > 0
    finally:
        os.remove(path)
    assert models._affinity_setup(get_config("deeplabv3plus18"), labels) is None
    assert models._affinity_setup(get_config("pdn18_24nb_1m"), labels) is None


def test_budget_skips_and_shortens():
    budget = models.Budget(max_seconds=1.0, repeats=3)
    budget.seconds_per_flop["float32"] = 1.0
    seconds, note, runs = budget.run(lambda: 0, "float32", flops=5.0)  # estimated 5 s > 1 s: not run
    assert seconds is None and runs == 0 and "not timed" in note
    seconds, note, runs = models.Budget(max_seconds=10.0, repeats=3).run(lambda: 0, "float32", flops=None)
    assert seconds is not None and runs == 3 and note == ""


def test_module_table_fraction():
    row = dict(compile_s=1.0, note="", runs=1, flops=None, peak=None, size=505, **{"pass": "forward"})
    rows = [dict(row, what="module 24NB d=256 (64x64)", seconds=0.5), dict(row, what="ResNet-50", seconds=2.0)]
    lines = models.module_table(rows)
    assert lines[-1].endswith("| 0.25 |") and lines[-2].endswith("|  |")


def test_input_pipeline_benchmark_runs_end_to_end(tmp_path):
    """`python -m benchmarks.input_pipeline` on a few generated voc_aug images: every project row has a figure."""
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "input_pipeline.md"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", "--dataset=voc_aug", "--num_images=8",
         "--per_core_images=4", "--workers=0", "--depths=", "--batch_size=2", "--batches=2", "--noprevious",
         f"--output={out}"], cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"})
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    text = out.read_text()
    for row in ("project: TrainTransform on uncompressed records", "project on released records (the default",
                "grain train loader on uncompressed records, 0 worker(s)"):
        line = next(line for line in text.splitlines() if line.startswith(f"| {row}"))
        assert float(re.findall(r"\| ([0-9.]+)x? \|$", line)[0]) > 0, line
