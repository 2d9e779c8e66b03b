"""Dilated Affinity's propagation (Eq. 6) iterated under its two readings of the self term (issue 28, item 2):
against loops in numpy, their limits, the evaluation heads that sweep lambda and the reading, the config key."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax import checkpointing
from difnet_jax.evaluation import report
from difnet_jax.models import affinity, deeplabv3plus
from difnet_jax.user_errors import ArgumentError, ConfigError
from experiments.configs.voc import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = ((1, 2), (2, 1))


def _step(p0, p, aff, rates, lam, self_term):
    """One pass of Eq. 6 by loops over pixels and neighbour offsets (row-major {-r1, 0, r1} x {-r2, 0, r2} without
    (0, 0), rate by rate); a neighbour off the image adds nothing; "original" takes the self term from p0."""
    batch, height, width, _ = p.shape
    offsets = [(s, t) for r1, r2 in rates for s in (-r1, 0, r1) for t in (-r2, 0, r2) if (s, t) != (0, 0)]
    new = np.empty_like(p)
    for n in range(batch):
        for i in range(height):
            for j in range(width):
                own = p0[n, i, j] if self_term == "original" else p[n, i, j]
                total = lam * own * own.max()
                for c, (s, t) in enumerate(offsets):
                    if 0 <= i + s < height and 0 <= j + t < width:
                        total = total + aff[n, i, j, c] * p[n, i + s, j + t]
                new[n, i, j] = total / total.sum()
    return new


def _loops(probs, aff, rates, lam, iterations, self_term):
    p0, aff = np.asarray(probs, np.float64), np.asarray(aff, np.float64)
    p = p0
    for _ in range(iterations):
        p = _step(p0, p, aff, rates, lam, self_term)
    return p


def _random(seed, shape=(2, 5, 6, 3)):
    keys = jax.random.split(jax.random.key(seed))
    probs = jax.nn.softmax(2.0 * jax.random.normal(keys[0], shape), axis=-1)
    return probs, jax.random.uniform(keys[1], shape[:3] + (8 * len(RATES),))


@pytest.mark.parametrize("self_term", affinity.SELF_TERMS)
def test_both_readings_match_loops_in_numpy(self_term):
    probs, aff = _random(0)
    for t in (0, 1, 3):
        out = affinity.propagate(probs, aff, RATES, lam=6.0, iterations=t, self_term=self_term)
        np.testing.assert_allclose(out, _loops(probs, aff, RATES, 6.0, t, self_term), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(affinity.propagate(probs, aff, RATES, iterations=0, self_term=self_term), probs)


def test_the_readings_agree_on_one_pass_and_differ_after():
    probs, aff = _random(1)
    current, original = (affinity.propagate(probs, aff, RATES, lam=6.0, iterations=1, self_term=term)
                         for term in affinity.SELF_TERMS)
    np.testing.assert_allclose(current, original, atol=1e-6)
    current, original = (affinity.propagate(probs, aff, RATES, lam=6.0, iterations=3, self_term=term)
                         for term in affinity.SELF_TERMS)
    assert float(jnp.abs(current - original).max()) > 0.01
    with pytest.raises(ValueError, match=r"self_term must be one of \('current', 'original'\), got 'crf'"):
        affinity.propagate(probs, aff, RATES, self_term="crf")


def test_original_converges_to_the_restart_fixed_point_current_does_not():
    """"original" tends to p* = N(lam p0 max(p0) + sum_s a_s p*_s), a fixed point that keeps lam p0; the limit of
    "current" is another point, which does not solve that equation."""
    probs, aff = _random(2)
    p0, a = np.asarray(probs, np.float64), np.asarray(aff, np.float64)
    original = np.asarray(affinity.propagate(probs, aff, RATES, lam=6.0, iterations=400, self_term="original"))
    np.testing.assert_allclose(
        affinity.propagate(probs, aff, RATES, lam=6.0, iterations=401, self_term="original"), original, atol=1e-5)
    np.testing.assert_allclose(_step(p0, original, a, RATES, 6.0, "original"), original, atol=1e-5)
    current = np.asarray(affinity.propagate(probs, aff, RATES, lam=6.0, iterations=400))
    assert np.abs(_step(p0, current, a, RATES, 6.0, "original") - current).max() > 0.05
    assert np.abs(current - original).max() > 0.05


def test_current_drifts_to_one_label_original_keeps_each_pixels():
    """Uniform affinity 1 on a 2 x 2 image (every pixel the others' neighbour at rate 1): the current-iterate reading
    is a product of stochastic matrices with positive entries, so every pixel tends to one shared distribution; the
    restart keeps the lone class-1 pixel's label."""
    probs = jnp.asarray([[[[0.7, 0.3], [0.7, 0.3]], [[0.7, 0.3], [0.1, 0.9]]]], jnp.float32)
    ones = jnp.ones((1, 2, 2, 8))
    spread = [float(np.ptp(np.asarray(affinity.propagate(probs, ones, [(1, 1)], lam=6.0, iterations=t))[0, ..., 1]))
              for t in (1, 10, 100)]
    assert spread[0] > spread[1] > spread[2] and spread[2] < 1e-4, spread
    original = np.asarray(affinity.propagate(probs, ones, [(1, 1)], lam=6.0, iterations=100, self_term="original"))
    np.testing.assert_array_equal(original[0].argmax(-1), [[0, 0], [0, 1]])


# ---- Evaluation heads: one per (T, lambda, self term) with the sweep, today's names without.

def _affinity_model():
    return get_config("deeplabv3plus18_affinity,synthetic").model


def test_heads_are_named_by_lambda_and_self_term_in_numeric_order_of_t():
    model = _affinity_model()
    assert list(report.propagation_refinements(model, (10, 1, 3), (3, 1))) == [
        "propagate_T1", "propagate_T3", "propagate_T10", "oracle_T1", "oracle_T3"]
    sweep = report.propagation_refinements(model, (10, 3), (1,), lams=(6.0, 24.0, 0.5),
                                           self_terms=("current", "original"))
    assert list(sweep) == [f"{kind}_T{t}_lam{lam}_{term}" for kind, counts in (("propagate", (3, 10)), ("oracle", (1,)))
                           for t in counts for lam in ("6", "24", "0.5") for term in ("current", "original")]
    # one of the two flags: the other is the config's (propagation_self_term "current", propagation_lambda 6)
    assert list(report.propagation_refinements(model, (), (1,), lams=(24.0,))) == ["oracle_T1_lam24_current"]
    assert list(report.propagation_refinements(model, (), (1,), self_terms=("original",))) == [
        "oracle_T1_lam6_original"]


def test_a_sweep_head_is_propagate_with_its_lambda_and_self_term():
    model = _affinity_model()
    rates = affinity.expand_rates(tuple(model.deeplabv3plus.affinity_rates))
    heads = report.propagation_refinements(model, (2,), (2,), lams=(24.0,), self_terms=("original",))
    keys = jax.random.split(jax.random.key(3), 3)
    probs = jax.nn.softmax(jax.random.normal(keys[0], (1, 24, 24, 4)))
    logits = jax.random.normal(keys[1], (1, 24, 24, 8 * len(rates)))
    labels = jax.random.randint(keys[2], (1, 24, 24), 0, 4)
    np.testing.assert_allclose(
        heads["propagate_T2_lam24_original"](probs, {"affinity_logits": logits}, None, labels),
        affinity.propagate(probs, affinity.steep_sigmoid(logits, 7.0), rates, lam=24.0, iterations=2,
                           self_term="original"), atol=1e-6)
    np.testing.assert_allclose(
        heads["oracle_T2_lam24_original"](probs, {}, None, labels),
        affinity.propagate(probs, affinity.ground_truth_affinity(labels, rates), rates, lam=24.0, iterations=2,
                           self_term="original"), atol=1e-6)


@pytest.mark.parametrize("lams, self_terms, message", [
    ((-1.0,), (), r"^--propagate_lambda=-1\.0 is invalid: expected numbers >= 0"),
    ((float("nan"),), (), r"^--propagate_lambda=nan is invalid"),
    ((), ("current", "crf"), r"^--propagate_self_term='crf' is invalid: expected some of \('current', 'original'\)$"),
])
def test_sweep_values_are_refused_naming_the_flag(lams, self_terms, message):
    with pytest.raises(ArgumentError, match=message):
        report.propagation_refinements(_affinity_model(), (1,), (), lams=lams, self_terms=self_terms)


def test_a_sweep_without_iteration_counts_is_refused():
    with pytest.raises(ArgumentError, match="^--propagate_lambda and --propagate_self_term need --propagate or "):
        report.check_propagation_sweep((6.0,), (), (), ())
    report.check_propagation_sweep((0.0, 6), ("original",), (), (1,))


def test_evaluate_refuses_a_bad_self_term_before_loading_anything(tmp_path):
    workdir = tmp_path / "run"  # a config.json and no checkpoint: loading would fail with "no checkpoints"
    workdir.mkdir()
    (workdir / "config.json").write_text(get_config("difnet18,synthetic").to_json_best_effort())
    environment = {k: v for k, v in os.environ.items() if k != "DIFNET_TRACEBACK"}
    process = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}", "--propagate_oracle=1,3",
         "--propagate_lambda=6,24", "--propagate_self_term=current,restart"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**environment, "JAX_PLATFORMS": "cpu"})
    lines = [line for line in (process.stdout + process.stderr).splitlines() if line.strip()]
    assert process.returncode == 2 and len(lines) == 1, lines
    assert lines[0] == ("error: --propagate_self_term='restart' is invalid: expected some of "
                        "('current', 'original')")


# ---- The config key.

def test_config_key_defaults_to_current_is_checked_and_resumable(tmp_path):
    model = _affinity_model()
    assert model.deeplabv3plus.propagation_self_term == "current"
    assert deeplabv3plus.propagation(model).self_term == "current"
    model.deeplabv3plus.propagation_self_term = "original"
    deeplabv3plus.check(model)
    assert deeplabv3plus.propagation(model).self_term == "original"
    model.deeplabv3plus.propagation_self_term = "restart"
    with pytest.raises(ConfigError) as error:
        deeplabv3plus.check(model)
    assert str(error.value) == ("config.model.deeplabv3plus.propagation_self_term='restart' is invalid: expected one "
                                "of ('current', 'original') (Eq. 6's self term on the current iterate or the "
                                "original prediction)")
    # a config.json from before the key: propagation as it ran, and a resume may change the key
    config = get_config("deeplabv3plus18_affinity,synthetic")
    saved = json.loads(config.to_json_best_effort())
    del saved["model"]["deeplabv3plus"]["propagation_self_term"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with model.unlocked():
        del model.deeplabv3plus["propagation_self_term"]
    assert deeplabv3plus.propagation(model).self_term == "current"
    config.model.deeplabv3plus.propagation_self_term = "original"
    checkpointing.check_resume_config(str(tmp_path), config)
