"""difnet_jax.load: predictions equal the evaluator's, padding and cropping handled, intermediates exposed."""

import jax
import numpy as np
import pytest

import difnet_jax
from difnet_jax.data import normalization, pipeline
from difnet_jax.evaluation import evaluator
from tests.helpers import TINY


@pytest.fixture(scope="module")
def trained(tiny_workdir):
    return difnet_jax.load(tiny_workdir)


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    source = pipeline.source(TINY, "validation", tiny_data_dir)
    return np.stack([source[i]["image"][:50, 3:73] for i in (0, 7)])  # 50 x 70: padded to 57 x 73 inside


def test_predict_is_the_argmax_of_the_evaluators_probabilities(trained, images):
    assert trained.step == 2 and len(trained.class_names) == 21 and trained.config.model.name == "difnet"
    assert "difnet-18" in repr(trained) and trained.num_parameters > 0
    norm = normalization.of_config(trained.config.data)  # the run's own input (difnet18,synthetic: caffe_bgr)
    padded = np.stack([pipeline.pad_to(image, np.zeros((50, 70), np.uint8), 57, 73, norm)[0] for image in images])
    reference = np.asarray(evaluator.model_probabilities(trained.model, trained.variables,
                                                         pipeline.normalize(padded, norm)))[:, :50, :70]
    probabilities = trained.probabilities(images)
    assert probabilities.shape == (2, 50, 70, 21) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, reference, atol=1e-6)
    labels = trained.predict(images)
    assert labels.shape == (2, 50, 70) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, reference.argmax(-1))
    single = trained.predict(images[1])
    assert single.shape == (50, 70)
    np.testing.assert_array_equal(single, labels[1])


def test_intermediates_are_the_models_own(trained, images):
    intermediates = trained.intermediates(images[0])
    assert {"score_map", "importance", "seed", "walks", "mu", "beta"} <= set(intermediates)
    assert intermediates["seed"].shape == (8, 10, 21)  # the 57 x 73 input's stride-8 grid, batch axis dropped
    assert len(intermediates["walks"]) == 5 and intermediates["walks"][-1].shape == (8, 10, 21)
    assert intermediates["mu"].shape == (5,) and np.all((intermediates["mu"] > 0) & (intermediates["mu"] < 1))
    assert jax.tree.structure(intermediates) == jax.tree.structure(trained.intermediates(images[:1]))


def test_images_of_the_wrong_kind_are_refused_naming_what_is_wrong(trained, images):
    with pytest.raises(ValueError, match="dtype float32"):
        trained.predict(images[0].astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(50, 70\)"):
        trained.predict(images[0, ..., 0])
