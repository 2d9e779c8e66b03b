"""DifNet and Sim-DeepLab: output shapes of every variant, the importance map, pooling and resizing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from difnet_jax.models import FAMILIES, DifNet, SimDeepLab, build_model, diffusion
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.models.similarity_embedding import adaptive_max_pool
from experiments.configs.voc import VARIANTS, get_config
from tests.helpers import write_affinity_stats

K = 21


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_has_the_right_output_shapes(variant, tmp_path):
    config = get_config(variant)
    if variant.endswith("_affinity"):
        write_affinity_stats(config.model, str(tmp_path))  # the head's bias reads statistics: a file of its own
    model = build_model(config.model, K)
    x = jnp.zeros((2, 65, 65, 3))
    # One trace: init's own forward pass is the eval-mode output (tracing the model twice costs twice)
    (logits, inter), variables = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), x, train=False))
    assert logits.shape == (2, 65, 65, K)
    if "score_map" in inter:  # the output-stride-8 families (DeepLabv3+ has its own tests)
        assert inter["score_map"].shape == (2, 9, 9, K)
    if config.model.name == "difnet":
        walks = len(config.model.difnet.walks)
        assert inter["importance"].shape == (2, 9, 9, 1)
        assert inter["seed"].shape == (2, 9, 9, K)
        assert len(inter["walks"]) == walks and all(w.shape == (2, 9, 9, K) for w in inter["walks"])
        assert inter["mu"].shape == inter["beta"].shape == (walks,)
        assert ("aspp" in variables["params"]) == config.model.difnet.aspp
        assert {f"psi{w}" for w in config.model.difnet.walks} <= set(variables["params"])


def test_difnet_forward_is_the_documented_composition():
    model = DifNet(K, depth=18, width=8, aspp_rates=(1, 2), walks=(1, 3, 5))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 49, 49, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    assert float(variables["params"]["mu_logits"].sum()) == 0.0  # mu = beta = 0.5 at init
    logits, inter = model.apply(variables, x, train=False)
    importance = np.asarray(inter["importance"])
    assert importance.min() >= 0.0 and importance.max() <= 1.0
    np.testing.assert_allclose(inter["mu"], 0.5)
    np.testing.assert_allclose(inter["seed"], inter["importance"] * inter["score_map"], rtol=1e-6)
    # Logits are y_T upsampled; y_T is the last walk.
    np.testing.assert_allclose(logits, resize_bilinear(inter["walks"][-1], (49, 49)), atol=1e-5)
    # Recompute walk 1 from the seed and Psi_1 to pin the wiring to Eq. 5.
    _, captured = model.apply(variables, x, train=False, capture_intermediates=lambda m, _: m.name == "psi1")
    psi1 = captured["intermediates"]["psi1"]["__call__"][0].reshape(2, 49, -1)
    seed = inter["seed"].reshape(2, 49, K)
    y1, _ = diffusion.cascade(seed, [psi1], jnp.zeros(1), jnp.zeros(1))
    np.testing.assert_allclose(inter["walks"][0].reshape(2, 49, K), y1, atol=1e-5)
    # The evaluator's extra head is the seed the cascade starts from (val/miou_seed: the seed branch alone).
    from difnet_jax.evaluation.evaluator import head_logits
    from difnet_jax.models import FAMILIES
    heads = head_logits(model, FAMILIES["difnet"], variables, x)
    assert set(heads) == {"final", "seed"}
    np.testing.assert_allclose(heads["seed"], resize_bilinear(inter["seed"], (49, 49)), atol=1e-5)


def test_simdeeplab_logits_are_upsampled_scores():
    model = SimDeepLab(K, depth=18, width=8, aspp_rates=(1, 2))
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 33, 33, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    logits, inter = model.apply(variables, x, train=False)
    np.testing.assert_allclose(logits[:, ::8, ::8], inter["score_map"], atol=1e-5)  # corners aligned


@pytest.mark.parametrize("size_in,size_out", [(81, 11), (21, 11), (41, 41), (10, 3), (7, 5)])
def test_adaptive_max_pool_matches_torch_bin_rule(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(2, size_in, size_in + 3, 4)).astype(np.float32)
    out = np.asarray(adaptive_max_pool(jnp.asarray(x), (size_out, size_out)))
    for i in range(size_out):
        for j in range(size_out):
            r0, r1 = (i * size_in) // size_out, -(-(i + 1) * size_in // size_out)
            c0, c1 = (j * (size_in + 3)) // size_out, -(-(j + 1) * (size_in + 3) // size_out)
            np.testing.assert_array_equal(out[:, i, j], x[:, r0:r1, c0:c1].max(axis=(1, 2)))


def test_resize_aligns_corners_and_interpolates_linearly():
    grid = jnp.arange(3.0)[None, :, None, None] * jnp.ones((1, 3, 5, 1))  # value = row index
    out = resize_bilinear(grid, (17, 9))
    np.testing.assert_allclose(out[0, :, 0, 0], np.linspace(0, 2, 17), atol=1e-6)
    np.testing.assert_allclose(out[0, 0], 0.0)


def test_transition_affinity_is_log_n_times_the_walks_transition_probability():
    """model.difnet.affinity_on_transitions reads log(N P_ij) for grid neighbours; checked against P itself."""
    from difnet_jax.models import difnet

    grid, rates = (5, 6), ((1, 1), (1, 2), (2, 1))
    psi = jax.random.normal(jax.random.PRNGKey(0), (2, 30, 4))
    got = np.asarray(difnet.transition_affinity_logits(psi, grid, rates))
    transitions = np.asarray(diffusion.transition_matrix(psi))
    offsets = [(s, t) for r in rates for s in (-r[0], 0, r[0]) for t in (-r[1], 0, r[1]) if (s, t) != (0, 0)]
    assert got.shape == (2, 5, 6, len(offsets))
    for b in range(2):
        for i in range(5):
            for j in range(6):
                for c, (s, t) in enumerate(offsets):
                    if 0 <= i + s < 5 and 0 <= j + t < 6:
                        expected = np.log(30 * transitions[b, i * 6 + j, (i + s) * 6 + j + t])
                        np.testing.assert_allclose(got[b, i, j, c], expected, rtol=1e-4, atol=1e-4)


def test_transition_affinity_term_only_when_asked():
    from experiments.configs.voc import get_config as voc_config

    config = voc_config("difnet18,synthetic")
    config.model.width, config.model.aspp_rates = 4, (1,)
    model = build_model(config.model, K)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 33, 33, 3))
    labels = np.zeros((2, 33, 33), np.int32)
    labels[:, :, 17:] = 1
    variables = model.init(jax.random.PRNGKey(1), x, train=False)
    outputs = model.apply(variables, x, train=False)
    total, terms = FAMILIES["difnet"].loss(outputs, {"image": x, "label": labels}, config.model, {})
    assert set(terms) == {"ce"} and float(total) == float(terms["ce"])
    config.model.difnet.affinity_on_transitions = True
    config.model.difnet.transition_affinity_beta = 0.5
    total, terms = FAMILIES["difnet"].loss(outputs, {"image": x, "label": labels}, config.model, {})
    assert set(terms) == {"ce", "transition_affinity"} and np.isfinite(float(terms["transition_affinity"]))
    np.testing.assert_allclose(float(total), float(terms["ce"] + 0.5 * terms["transition_affinity"]), rtol=1e-6)
