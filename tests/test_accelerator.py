"""`python -m benchmarks.accelerator --smoke` runs on the CPU, writes its report, and fails on a wrong backend."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import pytest

from benchmarks import accelerator, accelerator_checks, accelerator_sizes
from difnet_jax.models import diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Paths, not speed, are under test: XLA's optimisations off halves the compile time of the smoke run.
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("accelerator"))
    process = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", f"--out={out}", "--smoke"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300, env=ENV)
    return out, process


def test_smoke_passes_and_writes_every_section(smoke):
    out, process = smoke
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    for heading in ("# Accelerator check (smoke", "## Environment", "## Correctness checks", "## Diffusion cascade",
                    "## Models", "## Main job end to end", accelerator.TARGETS_HEADING, "## Conditions"):
        assert heading in text
    assert "Verdict: **PASS**" in text
    assert "comparison is the CPU against itself" in text  # the CPU-only run says its train check degenerates

    with open(os.path.join(out, "report.json")) as f:
        data = json.load(f)
    assert data["failures"] == 0
    checked = {(r["check"], r["backend"], r["dtype"]) for r in data["checks"]["results"]}
    for backend in ("dense", "chunked", "fused"):
        for dtype in ("float32", "bfloat16"):
            assert ("closed form (Eq. 2) vs float64", backend, dtype) in checked
            assert ("5-walk cascade vs float64", backend, dtype) in checked
    assert data["checks"]["n"] % data["checks"]["block"]  # N not a multiple of the chunked block
    assert all(r.get("seconds") for r in data["cascade"])
    assert {r["backend"] for r in data["cascade"]} == {"dense", "chunked", "fused"}
    assert data["models"][0]["images_per_s"] > 0 and data["models"][0]["latency_s"] > 0
    assert len(data["checks"]["train"]["device_losses"]) == accelerator_sizes.SIZES["smoke"].train_steps
    assert {t["target"].split(" ")[0] for t in data["targets"]} >= {"Diffusion", "Best", "`auto`", "bf16"}


def _broken(psi, y):
    """P y with P's rows summing to 1.2 instead of 1: a plausible bug (a lost normalisation)."""
    return 1.2 * diffusion.diffuse(psi, y, "dense")


def test_a_wrong_backend_fails_the_run(tmp_path):
    status = accelerator.run(str(tmp_path), accelerator_sizes.SIZES["smoke"], parts=("checks",),
                             diffusers={"broken": _broken}, with_train=False)
    assert status == 1
    with open(tmp_path / "report.json") as f:
        results = json.load(f)["checks"]["results"]
    assert {r["check"] for r in results} == {"closed form (Eq. 2) vs float64", "5-walk cascade vs float64"}
    assert not any(r["ok"] for r in results if r["what"] == "value")
    assert "**FAIL**" in (tmp_path / "report.md").read_text()


def test_the_injected_checks_pass_a_correct_backend():
    results = []
    dense = {"dense": lambda psi, y: diffusion.diffuse(psi, y, "dense")}
    accelerator_checks.check_closed_form(dense, "float32", 20, results)
    accelerator_checks.check_cascade({"dense": accelerator_checks.cascade_with(dense["dense"])}, "float32", 20, results)
    assert results and all(r["ok"] for r in results)


def test_a_crashing_backend_fails_its_checks():
    def crash(psi, y):
        raise RuntimeError("no kernel for this shape")

    results = []
    accelerator_checks.check_cascade({"crash": accelerator_checks.cascade_with(crash)}, "float32", 20, results)
    assert results and not results[0]["ok"] and "no kernel" in results[0]["message"]


def test_backend_key_is_set_in_the_family_sub_dict_or_the_flat_config():
    config = ml_collections.ConfigDict({"model": {"name": "difnet", "difnet": {"diffusion_backend": "auto"}}})
    accelerator_sizes.set_backend(config, "chunked")
    assert config.model.difnet.diffusion_backend == "chunked" == accelerator_sizes.get_backend(config)
    flat = ml_collections.ConfigDict({"model": {"name": "difnet", "diffusion_backend": "auto"}})
    accelerator_sizes.set_backend(flat, "dense")
    assert flat.model.diffusion_backend == "dense" == accelerator_sizes.get_backend(flat)
    other = ml_collections.ConfigDict({"model": {"name": "simdeeplab"}})
    accelerator_sizes.set_backend(other, "dense")
    assert accelerator_sizes.get_backend(other) is None


def test_final_metrics_from_metrics_jsonl_or_the_log(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 5, "val/miou": 0.25}\n')
    assert accelerator.final_metrics(str(tmp_path)) == {"miou": 0.25, "step": 5}
    log = tmp_path / "job.log"
    log.write_text("12:00:00 Final validation mIoU 0.6120 (pixel accuracy 0.9000) at step 1000; workdir w\n")
    assert accelerator.final_metrics(str(tmp_path / "missing"), str(log)) == {"miou": 0.612, "step": 1000}


def test_targets_are_marked_from_the_rows():
    def row(backend, n, batch, dtype, mode, seconds, auto="fused"):
        return {"backend": backend, "n": n, "batch": batch, "dtype": dtype, "mode": mode, "seconds": seconds,
                "fraction": 0.6, "auto": auto}

    rows = [row("fused", 4096, 1, "bfloat16", "fwd", 4e-4), row("dense", 4096, 1, "bfloat16", "fwd", 9e-4),
            row("fused", 16384, 1, "bfloat16", "fwd+bwd", 2e-3), row("chunked", 16384, 1, "bfloat16", "fwd+bwd", 1e-3)]
    torch_rows = [row("torch SDPA", 16384, 1, "bfloat16", "fwd+bwd", 3e-3)]
    models = [{"model": "difnet50", "dtype": "float32", "train_step_s": 0.3},
              {"model": "difnet50", "dtype": "bfloat16", "train_step_s": 0.25}]
    marked = {t["target"].split(" ")[0]: t for t in accelerator.targets(rows, torch_rows, models, {}, "NVIDIA H100")}
    assert marked["Diffusion"]["status"] == "met"
    assert marked["Best"]["status"] == "met" and "chunked" in marked["Best"]["value"]
    assert marked["`auto`"]["status"] == "missed"  # auto = fused, chunked twice as fast at N = 16,384
    assert marked["bf16"]["status"] == "missed" and marked["bf16"]["value"] == "1.20x"
    assert jnp.isfinite(accelerator.cascade_flops(1, 4096, "fwd"))


def test_loads_without_the_data_packages_and_says_what_is_missing():
    """GPU images often lack tensorflow-datasets, grain, array-record and ml-collections: the module still
    imports, and the parts that need them raise ImportError (reported as 'not run: carry wheels')."""
    script = """
import sys
for name in ("ml_collections", "grain", "tensorflow_datasets", "array_record"):
    sys.modules[name] = None  # import fails
from benchmarks import accelerator, accelerator_checks, accelerator_sizes
for call in (lambda: accelerator_checks.check_train(accelerator_sizes.SIZES["smoke"], []), accelerator_sizes.variants):
    try:
        call()
    except ImportError as error:
        print("missing", error.name)
"""
    process = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.split("\n")[:2] == ["missing ml_collections", "missing ml_collections"]
