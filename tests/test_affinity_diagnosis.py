"""The affinity-propagation diagnosis (issue 21, `difnet_jax.studies.affinity_propagation`) against brute force.

Tiny arrays, no training: Fig. 4's per-category counts against a loop over pixels and pairs; ground-truth
affinity scores exactly 1 in every category and leaks nothing; the ablations change only what they claim; the
study's own / oracle propagation is the project's `propagate`; the layout of the loss's targets and of
`propagate` agree channel by channel, and the checks notice a permutation.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.evaluation import metrics
from difnet_jax.models import affinity
from difnet_jax.studies import affinity_propagation as study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATES = ((1, 1), (2, 1))  # 16 neighbours, one asymmetric rate
SETTING = study.Setting(RATES, lam=6.0, mu=7.0, num_classes=3)
SHAPE = (2, 9, 11)


def _labels(seed=0):
    """Blocks of 3 classes with a few 255s: regions, boundaries and invalid pairs."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 3, (SHAPE[0], 4, 4))
    labels = np.kron(coarse, np.ones((3, 3), np.int64))[:, : SHAPE[1], : SHAPE[2]]
    labels[rng.random(SHAPE) < 0.08] = IGNORE_LABEL
    return labels.astype(np.int32)


def _probs(seed=1):
    rng = np.random.default_rng(seed)
    p = rng.random(SHAPE + (3,)).astype(np.float32) + 0.05
    return p / p.sum(-1, keepdims=True)


def _perfect_logits(labels):
    """Logits whose g(a) is the ground truth: +20 on positive pairs, -20 elsewhere (invalid pairs too)."""
    targets, _ = affinity.affinity_targets(jnp.asarray(labels), RATES)
    return 20.0 * (2.0 * np.asarray(targets) - 1.0)


def _measured(probs, logits, labels):
    return jax.device_get(study.jitted_measurements(jnp.asarray(probs), jnp.asarray(logits, jnp.float32),
                                                    jnp.asarray(labels), SETTING))


def _brute_fig4(labels, logits, rates, mu):
    """Per (rate, k): positive / negative valid pairs of the pixels in n_k, those with g > 0.5 right, sum of g."""
    out = {key: np.zeros((len(rates), 9)) for key in ("positive_pairs", "positive_correct", "positive_g",
                                                       "negative_pairs", "negative_correct", "negative_g")}
    b, h, w = labels.shape
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if labels[n, i, j] == IGNORE_LABEL:
                    continue
                for r, (r1, r2) in enumerate(rates):
                    pairs = []
                    c = 8 * r
                    for s in (-r1, 0, r1):
                        for t in (-r2, 0, r2):
                            if (s, t) == (0, 0):
                                continue
                            ii, jj = i + s, j + t
                            if 0 <= ii < h and 0 <= jj < w and labels[n, ii, jj] != IGNORE_LABEL:
                                g = mu ** logits[n, i, j, c] / (1 + mu ** logits[n, i, j, c])
                                pairs.append((labels[n, ii, jj] == labels[n, i, j], g))
                            c += 1
                    if not pairs:
                        continue
                    positives = sum(agree for agree, _ in pairs)
                    k = int(np.floor(8 * positives / len(pairs) + 0.5))
                    for agree, g in pairs:
                        kind = "positive" if agree else "negative"
                        out[f"{kind}_pairs"][r, k] += 1
                        out[f"{kind}_correct"][r, k] += (g > 0.5) == agree
                        out[f"{kind}_g"][r, k] += g
    return out


def test_fig4_counts_match_brute_force():
    labels, probs = _labels(), _probs()
    logits = np.random.default_rng(2).normal(0.0, 2.0, SHAPE + (16,)).astype(np.float32)
    fig4 = _measured(probs, logits, labels)["fig4"]
    expected = _brute_fig4(labels, logits, RATES, SETTING.mu)
    assert expected["negative_pairs"].sum() > 20 and expected["positive_pairs"].sum() > 100
    assert (expected["positive_pairs"][:, :8].sum() > 0) and (expected["negative_pairs"][:, 1:].sum() > 0)
    for key, value in expected.items():
        np.testing.assert_allclose(fig4[key], value, rtol=1e-4, atol=1e-3, err_msg=key)


def test_ground_truth_affinity_is_right_in_every_category_and_leaks_nothing():
    labels, probs = _labels(), _probs()
    measured = _measured(probs, _perfect_logits(labels), labels)
    fig4 = measured["fig4"]
    np.testing.assert_array_equal(fig4["positive_correct"], fig4["positive_pairs"])
    np.testing.assert_array_equal(fig4["negative_correct"], fig4["negative_pairs"])
    np.testing.assert_allclose(fig4["positive_g"], fig4["positive_pairs"], rtol=1e-6)
    np.testing.assert_allclose(fig4["negative_g"], 0.0, atol=1e-6)
    masses, evaluated = measured["masses"], measured["evaluated"]
    assert masses["negative_pairs"][evaluated].max() > 0  # there are cross-boundary pairs, and none leaks
    np.testing.assert_allclose(masses["negative"], 0.0, atol=1e-6)
    np.testing.assert_allclose(masses["untargeted"], 0.0, atol=1e-6)
    np.testing.assert_allclose(masses["neighbours"], masses["oracle_neighbours"], atol=1e-4)
    np.testing.assert_allclose(masses["own"], 6.0 * probs.max(-1), rtol=1e-6)
    # the same affinity as the oracle: the same predictions at every T
    for t in study.ITERATIONS:
        np.testing.assert_array_equal(measured["confusions"][f"own_T{t}"], measured["confusions"][f"oracle_T{t}"])
        np.testing.assert_array_equal(measured["confusions"][f"own_no_leak_T{t}"],
                                      measured["confusions"][f"oracle_T{t}"])


def test_leak_is_the_affinity_on_negative_pairs():
    labels, probs = _labels(), _probs()
    logits = np.random.default_rng(3).normal(0.0, 2.0, SHAPE + (16,)).astype(np.float32)
    masses = _measured(probs, logits, labels)["masses"]
    g = np.asarray(affinity.steep_sigmoid(logits, SETTING.mu))
    targets, valid = (np.asarray(x) for x in affinity.affinity_targets(jnp.asarray(labels), RATES))
    np.testing.assert_allclose(masses["negative"], (g * (valid & (targets == 0))).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(masses["positive"], (g * (valid & (targets == 1))).sum(-1), rtol=1e-5)
    # every neighbour on the canvas is positive, negative or without a target
    np.testing.assert_allclose(masses["neighbours"], masses["positive"] + masses["negative"] + masses["untargeted"],
                               rtol=1e-5)
    assert float(masses["neighbours"].max()) <= 16.0


def test_pairs_without_targets_split_into_padding_and_void():
    labels, probs = _labels(), _probs()
    inside = np.ones(SHAPE, bool)
    inside[:, :, -2:] = False  # the canvas padding: two columns
    labels[~inside] = IGNORE_LABEL
    logits = np.random.default_rng(8).normal(0.0, 2.0, SHAPE + (16,)).astype(np.float32)
    measured = jax.device_get(study.jitted_measurements(jnp.asarray(probs), jnp.asarray(logits), jnp.asarray(labels),
                                                        SETTING, inside=jnp.asarray(inside)))
    offsets = SETTING.offsets
    padding, untargeted = np.zeros(2), np.zeros(2)
    for n, i, j in zip(*np.nonzero(labels != IGNORE_LABEL), strict=True):
        for c, (s, t) in enumerate(offsets):
            ii, jj = i + s, j + t
            if 0 <= ii < SHAPE[1] and 0 <= jj < SHAPE[2] and labels[n, ii, jj] == IGNORE_LABEL:
                untargeted[c // 8] += 1
                padding[c // 8] += not inside[n, ii, jj]
    assert 0 < padding.sum() < untargeted.sum()
    np.testing.assert_array_equal(measured["untargeted_by_rate"]["pairs"], untargeted)
    np.testing.assert_array_equal(measured["untargeted_by_rate"]["padding_pairs"], padding)


def test_own_and_oracle_are_the_projects_propagation():
    labels, probs = _labels(), _probs()
    logits = np.random.default_rng(4).normal(1.0, 2.0, SHAPE + (16,)).astype(np.float32)
    confusions = _measured(probs, logits, labels)["confusions"]
    for t in study.ITERATIONS:
        own = affinity.propagate(jnp.asarray(probs), affinity.steep_sigmoid(logits, 7.0), RATES, lam=6.0, iterations=t)
        oracle = affinity.propagate(jnp.asarray(probs), affinity.ground_truth_affinity(jnp.asarray(labels), RATES),
                                    RATES, lam=6.0, iterations=t)
        for name, p in (("own", own), ("oracle", oracle)):
            np.testing.assert_array_equal(confusions[f"{name}_T{t}"],
                                          metrics.confusion_matrix(jnp.asarray(labels), p.argmax(-1), 3))
    np.testing.assert_array_equal(confusions["T0"], metrics.confusion_matrix(jnp.asarray(labels),
                                                                             jnp.asarray(probs).argmax(-1), 3))


def test_propagated_continues_from_the_previous_iteration_count():
    probs = jnp.asarray(_probs())
    aff = jnp.asarray(np.random.default_rng(5).random(SHAPE + (16,)), jnp.float32)
    chained = study.propagated(probs, aff, RATES, 6.0, (1, 3, 10))
    for t, p in zip((1, 3, 10), chained, strict=True):
        np.testing.assert_allclose(p, affinity.propagate(probs, aff, RATES, lam=6.0, iterations=t), atol=1e-5)


def test_each_ablation_changes_only_what_it_says():
    labels = jnp.asarray(_labels())
    logits = jnp.asarray(np.random.default_rng(6).normal(0.0, 2.0, SHAPE + (16,)), jnp.float32)
    variants = study.ablation_affinities(logits, labels, SETTING)
    assert list(variants) == list(study.VARIANTS)
    g = np.asarray(affinity.steep_sigmoid(logits, 7.0))
    targets, valid = (np.asarray(x) for x in affinity.affinity_targets(labels, RATES))
    positive, negative = valid & (targets == 1), valid & (targets == 0)
    aff = {name: np.asarray(a) for name, (a, _) in variants.items()}
    np.testing.assert_array_equal(aff["own"], g)
    np.testing.assert_array_equal(aff["oracle"], targets)
    np.testing.assert_array_equal(aff["own_hard"], (np.asarray(logits) > 0).astype(np.float32))
    np.testing.assert_array_equal(aff["own_no_false_pos"], np.where(negative, 0.0, g))
    np.testing.assert_array_equal(aff["own_no_false_neg"], np.where(positive, 1.0, g))
    np.testing.assert_array_equal(aff["own_no_untargeted"], np.where(valid, g, 0.0))
    np.testing.assert_array_equal(aff["own_no_leak"], np.where(positive, g, 0.0))
    np.testing.assert_array_equal(aff["truth_on_targeted"], np.where(valid, targets, g))
    np.testing.assert_allclose(aff["own_mu_e"], 1 / (1 + np.exp(-np.asarray(logits))), rtol=1e-5)
    lams = {name: lam for name, (_, lam) in variants.items()}
    assert lams.pop("own_lam_scaled") == 6.0 * 16 / 8 and set(lams.values()) == {6.0}


def test_pixel_groups_by_negative_pairs():
    groups = study._group_of(jnp.asarray([0.0, 1.0, 8.0, 9.0, 32.0]))
    np.testing.assert_array_equal(groups, [0, 1, 1, 2, 2])


@pytest.mark.parametrize("spec", [(3, (4, 8), 6), affinity.BEST_RATES])
def test_the_losss_targets_and_propagate_address_the_same_neighbour(spec):
    """Channel c of affinity_targets (what the head is trained on) and of propagate (what reads the head)."""
    assert study.channel_layout_mismatches(affinity.expand_rates(spec), height=11, width=27) == []


def test_the_layout_check_notices_a_permutation(monkeypatch):
    real = affinity.propagate
    order = np.arange(16)
    order[[1, 6]] = order[[6, 1]]  # (-1, 0) <-> (1, 0): a flipped neighbour
    monkeypatch.setattr(affinity, "propagate", lambda p, a, rates, **kw: real(p, a[..., order], rates, **kw))
    problems = study.channel_layout_mismatches(RATES, height=7, width=9)
    assert len(problems) == 2 and problems[0].startswith("channel 1:") and problems[1].startswith("channel 6:")


def test_the_trained_head_layout_check_finds_a_swapped_channel():
    labels, probs = _labels(), _probs()
    logits = _perfect_logits(labels)
    layout = lambda lg: study.layout_of_trained_head(  # noqa: E731
        jax.tree.map(lambda x: np.asarray(x, np.float64), _measured(probs, lg, labels)["layout"]), SETTING)
    right = layout(logits)
    assert right["own_offset_best_within_rate"] == right["own_channel_best_within_rate"] == 16
    np.testing.assert_allclose(right["own_offset_correlation"], 1.0, atol=1e-6)
    swapped = logits.copy()
    swapped[..., [0, 7]] = logits[..., [7, 0]]  # the head's (-1, -1) and (1, 1) channels exchanged
    wrong = layout(swapped)
    assert wrong["best_within_rate"][0] == 7 and wrong["best_within_rate"][7] == 0
    assert wrong["own_offset_best_within_rate"] == 14


def test_measure_and_report_on_tiny_batches():
    labels, probs = _labels(), _probs()
    logits = np.random.default_rng(7).normal(1.0, 2.0, SHAPE + (16,)).astype(np.float32)
    result = study.measure([(probs, logits, labels, 2), (probs, _perfect_logits(labels), labels, 2)], SETTING,
                           ["background", "a", "b"])
    assert result["images"] == 4 and result["code_layout_mismatches"] == []
    assert set(result["ablations"]) == set(study.VARIANTS)
    assert result["balance"]["all pixels"]["pixels"] == 2 * int((labels != IGNORE_LABEL).sum())
    json.dumps(result)  # plain data
    text = study.markdown_report(result, command="python -m experiments.affinity_propagation --workdir=W")
    assert text.startswith("# Affinity propagation") and "--workdir=W" in text
    for variant in study.VARIANTS:
        assert f"| `{variant}` |" in text
    header_cells = {line.count("|") for line in text.split("## 3.")[1].split("\n\n")[1].splitlines()}
    assert len(header_cells) == 1  # no stray '|' inside a cell of the ablation table


def test_cli_refuses_a_run_without_affinity_head_in_one_line(tmp_path):
    from experiments.configs.voc import get_config

    with open(tmp_path / "config.json", "w") as f:  # what training writes: DeepLabv3+ without the affinity head
        f.write(get_config("deeplabv3plus18,synthetic").to_json_best_effort())
    done = subprocess.run([sys.executable, "-m", "experiments.affinity_propagation", f"--workdir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0] and "affinity head" in lines[0] and "_affinity" in lines[0]
    assert os.listdir(tmp_path) == ["config.json"]
