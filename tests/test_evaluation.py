"""Evaluation, prediction, the mechanism study and the dense CRF, on a tiny checkpoint trained once."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from difnet_jax import evaluate_run, predict, timing, trained_run
from difnet_jax.data import normalization, pipeline
from difnet_jax.evaluation import crf, evaluator, report
from difnet_jax.models.resize import resize_bilinear
from difnet_jax.studies import difnet_mechanism

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 21


@pytest.fixture(scope="module")
def tiny_run(tiny_workdir):
    return trained_run.load_run(tiny_workdir)


def test_evaluation_report_matches_a_recount_of_the_saved_predictions(tiny_workdir):
    result, paths = evaluate_run.evaluate_workdir(tiny_workdir, save_predictions_npz=True, batch_size=1, log_every=4)
    json_path, md_path, npz_path = paths
    assert os.path.basename(json_path) == "eval_validation_step2.json" and md_path.endswith("step2.md")
    saved = json.load(open(json_path))
    assert {"miou", "pixel_accuracy", "iou", "class_names", "confusion_matrix", "step", "split", "scales", "flip",
            "num_images", "eval_size", "device"} <= set(saved)
    assert saved["step"] == 2 and saved["num_images"] == 16 and saved["scales"] == [1.0] and not saved["flip"]
    assert list(saved["iou"]) == saved["class_names"] and len(saved["class_names"]) == K
    assert np.shape(saved["confusion_matrix"]) == (K, K)
    markdown = open(md_path).read()
    assert "mIoU" in markdown and "## Confusion matrix" in markdown and "| 0 | background |" in markdown

    # A brute-force recount over the saved predictions gives the reported numbers.
    data = np.load(npz_path)
    predictions, labels = data["predictions"].astype(int), data["labels"].astype(int)
    assert predictions.shape == labels.shape == (16, 97, 97) and data["sizes"].tolist() == [[96, 96]] * 16
    valid = labels != 255
    ious = []
    for k in range(K):
        true_positive = np.sum((predictions == k) & (labels == k))
        false_positive = np.sum((predictions == k) & (labels != k) & valid)
        false_negative = np.sum((predictions != k) & (labels == k))
        if true_positive + false_positive + false_negative:
            ious.append(true_positive / (true_positive + false_positive + false_negative))
    assert saved["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert saved["pixel_accuracy"] == pytest.approx(np.sum((predictions == labels) & valid) / valid.sum(), abs=1e-12)
    # ... and the same as the evaluation at the end of training (same protocol).
    records = [json.loads(line) for line in open(os.path.join(tiny_workdir, "metrics.jsonl"))]
    assert saved["miou"] == pytest.approx([r for r in records if "val/miou" in r][-1]["val/miou"], abs=1e-9)


def test_flip_averaging_of_a_flip_equivariant_model_equals_single_scale():
    weights = jax.random.normal(jax.random.PRNGKey(0), (3, 5))

    def pixelwise_logits(x):  # a function of each pixel alone: exactly flip-equivariant
        assert (x.shape[1] - 1) % 8 == 0 and (x.shape[2] - 1) % 8 == 0, x.shape  # only sizes the network takes
        return 3.0 * jnp.tanh(x @ weights) + x[..., :1] ** 2

    images = jax.random.normal(jax.random.PRNGKey(1), (2, 30, 45, 3))
    infer = lambda x, **kwargs: jax.jit(functools.partial(evaluator.multiscale_probabilities, pixelwise_logits,
                                                          **kwargs))(x)
    single = infer(images)
    flipped = infer(images, flip=True)
    np.testing.assert_allclose(flipped, single, atol=1e-6)
    np.testing.assert_array_equal(flipped.argmax(-1), single.argmax(-1))
    np.testing.assert_allclose(single, jax.nn.softmax(3.0 * jnp.tanh(images @ weights) + images[..., :1] ** 2),
                               atol=1e-6)
    multi = infer(images, scales=(0.5, 0.75, 1.25), flip=True)
    assert multi.shape == (2, 30, 45, 5)
    np.testing.assert_allclose(multi.sum(-1), 1.0, atol=1e-5)


def _write_inputs(folder, data_source):
    folder.mkdir()
    image = data_source[0]["image"]
    Image.fromarray(image[:50, :70]).save(folder / "small.png")
    Image.fromarray(np.tile(image, (2, 2, 1))[:150, :180]).save(folder / "large.png")  # > eval_size: resized
    (folder / "x.jpg").write_text("not an image")
    return image[:50, :70]


def test_prediction_writes_the_argmax_as_indexed_pngs_skips_bad_files_and_never_overwrites(tiny_run, tmp_path):
    source = pipeline.source(tiny_run.config.data.name, "validation", tiny_run.config.data.data_dir)
    small = _write_inputs(tmp_path / "in", source)
    out = tmp_path / "out"
    probabilities_fn = lambda images: evaluator.model_probabilities(
        tiny_run.model, tiny_run.variables, jax.device_put(images, tiny_run.trainer.data_sharding))
    norm = normalization.of_config(tiny_run.config.data)  # the run's own input, as experiments.predict passes it
    summary = predict.predict_files(probabilities_fn, predict.list_inputs(str(tmp_path / "in")), str(out),
                                    eval_size=97, normalization=norm)
    assert [os.path.basename(path) for path, _ in summary.failed] == ["x.jpg"] and "x.jpg" in summary.failed[0][1]
    assert sorted(os.listdir(out)) == ["large.png", "large_overlay.png", "small.png", "small_overlay.png"]

    label_png = Image.open(out / "small.png")
    assert label_png.mode == "P" and label_png.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    padded, _ = pipeline.pad_to(small, np.zeros(small.shape[:2], np.uint8), 97, 97, norm)
    logits = timing.forward(tiny_run.model, tiny_run.variables, pipeline.normalize(padded, norm)[None])
    np.testing.assert_array_equal(np.asarray(label_png), np.asarray(logits[0].argmax(-1))[:50, :70])
    large = Image.open(out / "large.png")
    assert large.mode == "P" and large.size == (180, 150)
    assert Image.open(out / "large_overlay.png").size == (360, 150)

    # Outputs exist now: the CLI refuses, names them and writes nothing; the library refuses too.
    before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    cli = subprocess.run(
        [sys.executable, "-m", "experiments.predict", f"--workdir={tiny_run.workdir}", f"--input={tmp_path / 'in'}",
         f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert cli.returncode == 2, cli.stderr
    assert "Refusing to overwrite" in cli.stderr and str(out / "small.png") in cli.stderr
    assert {name: os.path.getmtime(out / name) for name in os.listdir(out)} == before
    with pytest.raises(FileExistsError, match="small.png"):
        predict.predict_files(probabilities_fn, [str(tmp_path / "in" / "small.png")], str(out), eval_size=97,
                              normalization=norm)
    # A prediction that fails for every image leaves no (empty) output folder behind.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    failed = subprocess.run(
        [sys.executable, "-m", "experiments.predict", f"--workdir={tiny_run.workdir}",
         f"--input={tmp_path / 'broken'}", f"--output={tmp_path / 'none'}"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert failed.returncode == 1 and "FAILED" in failed.stderr and not (tmp_path / "none").exists(), failed.stderr
    with pytest.raises(ValueError, match="replace an input"):
        predict.predict_files(probabilities_fn, [str(tmp_path / "in" / "small.png")], str(tmp_path / "in"),
                              eval_size=97, normalization=norm, force=True)


def test_transition_spread_is_one_node_for_the_identity_and_all_for_uniform():
    grid, cells = (3, 4), [(2, 3), (3, 4)]
    same = np.zeros((1, 2, 12, 5), np.float32)  # Psi = 0: P uniform over the 12 nodes
    apart = np.zeros((1, 2, 12, 12), np.float32)
    apart[0, :, np.arange(12), np.arange(12)] = 30.0  # orthogonal, long: P = the identity (to e^-900)
    (uniform,), (identity,) = (difnet_mechanism.transition_spread(p, cells, grid, ["image"]) for p in (same, apart))
    np.testing.assert_allclose([uniform["row_max"], uniform["effective_nodes"]], [1 / 12, 12], rtol=1e-5)
    np.testing.assert_allclose([identity["row_max"], identity["effective_nodes"]], [1, 1], rtol=1e-5)


def test_mechanism_study_writes_valid_figures_and_tables(tiny_run, tmp_path):
    result = difnet_mechanism.run_study(tiny_run, num_images=2, num_nodes=3, timing_size=33, timing_runs=2,
                                 output_dir=str(tmp_path))
    pngs = [path for path in result["paths"] if path.endswith(".png")]
    assert [os.path.basename(p) for p in pngs] == [
        "fig2_seed_influence_importance.png", "fig3_transition_rows_0.png", "fig3_transition_rows_1.png",
        "fig4_seed_and_walks.png"]
    for path in pngs:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200, (path, image.size)
    for nodes, rows in zip(result["nodes"], result["transition_rows"]):
        assert len(nodes) == 3 and rows.shape == (3, 5, 13, 13)
        np.testing.assert_allclose(rows.sum(axis=(2, 3)), 1.0, atol=1e-5)  # every row of every P_t
    table3 = json.load(open(tmp_path / "table3_mu_beta.json"))["walks"]
    assert [r["tap"] for r in table3] == ["image", "layer1", "layer2", "layer3", "layer4"]
    assert all(0.0 < r["mu"] < 1.0 and 0.0 < r["beta"] < 1.0 for r in table3)
    spread = json.load(open(tmp_path / "transition_spread.json"))["walks"]
    assert spread == result["transition_spread"] and [r["tap"] for r in spread] == [r["tap"] for r in table3]
    assert all(0.0 < r["row_max"] <= 1.0 and 1.0 <= r["effective_nodes"] <= 169 for r in spread)
    table4 = json.load(open(tmp_path / "table4_timing.json"))
    assert table4["size"] == 33 and table4["device"]
    assert len(table4["rows"]) == 5 and all(r["median_s"] > 0 for r in table4["rows"])
    assert "median (ms)" in open(tmp_path / "table4_timing.md").read()


def test_timed_branches_compose_to_the_whole_forward_pass(tiny_run):
    model, variables = tiny_run.model, tiny_run.variables
    images = jax.random.normal(jax.random.PRNGKey(0), (1, 33, 33, 3))  # as timed above: compiled already
    seed = difnet_mechanism.seed_branch(model, variables, images)
    psis = difnet_mechanism.similarity_branch(model, variables, images)
    y = difnet_mechanism.diffusion_branch(model, variables, seed, psis)
    logits = timing.forward(model, variables, images)
    np.testing.assert_allclose(resize_bilinear(y, (33, 33), model.align_corners), logits, atol=1e-4)


def test_select_nodes_spreads_over_classes():
    grid = np.zeros((9, 9), np.uint8)
    grid[1:5, 1:5] = 3
    grid[5:9, 5:9] = 7
    grid[0, :] = 255
    nodes = difnet_mechanism.select_nodes(grid, 4)
    assert [grid[y, x] for y, x in nodes[:3]] == [3, 7, 0] and len(set(nodes)) == 4
    assert all(grid[y, x] != 255 for y, x in nodes)


def _scene(height=40, width=48):
    labels = np.zeros((height, width), np.int32)
    labels[5:25, 6:30] = 1
    labels[20:38, 28:45] = 2
    colours = np.array([[30, 90, 40], [200, 40, 40], [40, 60, 210]], np.float32)
    image = colours[labels] + np.random.default_rng(0).normal(0, 3, (height, width, 3))
    return labels, np.clip(image, 0, 255).astype(np.float32)


@pytest.mark.parametrize("max_senders", [4096, 300])  # exact, and a sender grid of stride 3
def test_dense_crf_keeps_a_perfect_prediction_and_repairs_noise(max_senders):
    labels, image = _scene()
    params = crf.CRFParams(max_senders=max_senders)
    assert crf.sender_stride(*labels.shape, max_senders) == (1 if max_senders == 4096 else 3)
    near_one_hot = np.where(np.eye(3, dtype=bool)[labels], 0.99, 0.005).astype(np.float32)
    q = np.asarray(crf.dense_crf(near_one_hot, image, params=params))
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)
    assert (q.argmax(-1) == labels).mean() == 1.0

    # 15 % of the pixels get a wrong, weakly preferred label: the CRF restores most of them.
    rng = np.random.default_rng(1)
    wrong = (labels + rng.integers(1, 3, labels.shape)) % 3
    noisy = np.where(rng.random(labels.shape)[..., None] < 0.15,
                     np.where(np.eye(3, dtype=bool)[wrong], 0.5, 0.25), near_one_hot).astype(np.float32)
    before = (noisy.argmax(-1) == labels).mean()
    after = (np.asarray(crf.dense_crf(noisy, image, params=params)).argmax(-1) == labels).mean()
    assert before < 0.9 and after > 0.99


def test_dense_crf_leaves_padding_alone():
    labels, image = _scene()
    probabilities = np.full(labels.shape + (3,), 1 / 3, np.float32)
    probabilities[..., 0] += 0.1
    probabilities /= probabilities.sum(-1, keepdims=True)
    valid = np.zeros(labels.shape, bool)
    valid[:30, :40] = True
    q = np.asarray(crf.dense_crf(probabilities, image, valid))
    np.testing.assert_array_equal(q[~valid], probabilities[~valid])


def test_old_config_json_gets_new_keys_from_the_defaults(tiny_workdir, tmp_path):
    from experiments.run_config import run_config

    saved = json.load(open(os.path.join(tiny_workdir, "config.json")))
    del saved["train"]["keep_checkpoints"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = run_config(str(tmp_path), data_dir="/elsewhere")
    assert config.train.keep_checkpoints == 3 and config.model.width == 8 and config.data.data_dir == "/elsewhere"


def test_affinity_propagation_heads_in_one_evaluation(tiny_workdir):
    """--propagate_oracle works for any model (here DifNet, whose seed branch is a head too): each T is one more head
    of the same pass."""
    result, paths = evaluate_run.evaluate_workdir(tiny_workdir, propagate_oracle=(1, 3), batch_size=8)
    assert set(result["heads"]) == {"seed", "oracle_T1", "oracle_T3"} and paths[0].endswith("_propagate.json")
    assert all(0.0 <= value <= 1.0 for value in result["heads"].values())
    with pytest.raises(ValueError, match="affinity head.*--propagate_oracle works for every model"):
        evaluate_run.evaluate_workdir(tiny_workdir, propagate=(1,))


def test_propagation_refinements_are_eq6_with_the_models_or_the_true_affinity():
    from difnet_jax.models import affinity
    from experiments.configs.voc import get_config

    model = get_config("deeplabv3plus18_affinity,synthetic").model
    rates = affinity.expand_rates(tuple(model.deeplabv3plus.affinity_rates))
    refinements = report.propagation_refinements(model, (2,), (3,), lam=5.0, mu=7.0)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    probs = jax.nn.softmax(jax.random.normal(keys[0], (1, 40, 40, 4)))
    logits = jax.random.normal(keys[1], (1, 40, 40, 8 * len(rates)))
    labels = jax.random.randint(keys[2], (1, 40, 40), 0, 4)
    own = refinements["propagate_T2"](probs, {"affinity_logits": logits}, None, labels)
    np.testing.assert_allclose(own, affinity.propagate(probs, affinity.steep_sigmoid(logits, 7.0), rates, lam=5.0,
                                                       iterations=2), atol=1e-6)
    oracle = refinements["oracle_T3"](probs, {}, None, labels)
    np.testing.assert_allclose(oracle, affinity.propagate(probs, affinity.ground_truth_affinity(labels, rates), rates,
                                                          lam=5.0, iterations=3), atol=1e-6)
