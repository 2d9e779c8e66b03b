"""A difnet18 run reads the authors' input (caffe_bgr) everywhere: training, evaluation, prediction, the validation
pictures and the studies. `normalization` has no ImageNet default on these paths, so one that forgot to pass the
run's own would fail; this test watches which normalisation each path actually applies."""

import numpy as np
import pytest

from difnet_jax.data import normalization
from difnet_jax.data.normalization import CAFFE_BGR, Normalization
from tests.helpers import tiny_config


@pytest.fixture
def applied(monkeypatch):
    """The names of the normalisations applied (on the host, on the device, inverted, or as the padding colour)."""
    names = []
    for method in ("apply", "apply_on_device", "invert"):
        original = getattr(Normalization, method)

        def spy(self, *args, _original=original, **kwargs):
            names.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Normalization, method, spy)
    fill = Normalization.fill

    def fill_spy(self):
        names.append(self.name)
        return fill.fget(self)

    monkeypatch.setattr(Normalization, "fill", property(fill_spy))
    return names


def _only_caffe(names: list[str], what: str) -> None:
    assert names and set(names) == {CAFFE_BGR.name}, f"{what} applied {sorted(set(names))}"
    names.clear()


def test_a_difnet18_run_feeds_caffe_bgr_input_everywhere(tiny_data_dir, tmp_path, applied):
    from difnet_jax import evaluate_run, load, train
    from difnet_jax.studies import compare

    workdir = str(tmp_path / "run")
    config = tiny_config(tiny_data_dir)  # the shared run's config (conftest.py): its programs are in JAX's cache
    config.train.num_steps = 2
    config.train.log_every = 1
    assert normalization.of_config(config.data) is CAFFE_BGR
    train.train_and_evaluate(config, workdir)  # training, its evaluation and the validation pictures
    _only_caffe(applied, "training, its evaluation and pictures")

    evaluate_run.evaluate_workdir(workdir, output_dir=str(tmp_path / "reports"))
    _only_caffe(applied, "evaluate_workdir")

    load(workdir).predict(np.zeros((20, 30, 3), np.uint8))
    _only_caffe(applied, "prediction (difnet_jax.load)")

    compare.compare([workdir], str(tmp_path / "compare"), num_images=1)
    _only_caffe(applied, "studies.compare's examples")
