"""TensorBoard events, read back with tensorboard's own reader: every scalar, the pictures, no repeated steps."""

import dataclasses
import io
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from difnet_jax.data import pipeline
from difnet_jax.data.normalization import IMAGENET
from difnet_jax.drawing import visualize
from difnet_jax.drawing.pictures import HEADER_HEIGHT, ValidationPictures, example_indices
from difnet_jax.evaluation.evaluator import EvalOptions
from difnet_jax.models import FAMILIES
from difnet_jax.run_log import MetricsLog, scalar_tags
from tests.helpers import TINY


@pytest.fixture
def workdir(tiny_workdir):
    return tiny_workdir


def read_events(logdir: str) -> EventAccumulator:
    events = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_events_hold_every_logged_scalar_and_the_validation_pictures(workdir, tiny_data_dir):
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [1, 2, 2] and all(r["time"] > 0 for r in records)
    assert [r["time"] for r in records] == sorted(r["time"] for r in records)
    events = read_events(workdir)
    expected = {}
    for record in records:
        for tag, value in scalar_tags(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert {"loss", "loss/ce", "pixel_accuracy", "lr", "grad_norm", "param_norm", "steps_per_sec", "val/miou",
            "val/pixel_accuracy", "val/iou/background"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, logged in expected.items():
        read = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in read] == [s for s, _ in logged], tag
        np.testing.assert_allclose([v for _, v in read], [v for _, v in logged], rtol=1e-6, err_msg=tag)

    # The pictures: image | ground truth | prediction | seed | walk 5, for 4 images spread over the split.
    source = pipeline.source(TINY, "validation", tiny_data_dir)
    indices = example_indices(len(source), 4)
    assert indices == [0, 5, 10, 15]
    assert sorted(events.Tags()["images"]) == sorted(f"val/pictures/{i}" for i in indices)
    (image_event,) = events.Images("val/pictures/5")
    picture = np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))
    assert image_event.step == 2 and picture.shape == (HEADER_HEIGHT + 96, 5 * 96 + 4 * 2, 3)
    element = source[5]
    np.testing.assert_array_equal(picture[HEADER_HEIGHT:, :96], element["image"])
    np.testing.assert_array_equal(picture[HEADER_HEIGHT:, 98:194], visualize.colorize(element["label"][..., 0]))


def test_a_resumed_log_appends_without_repeating_steps(tmp_path):
    workdir = str(tmp_path)
    first = MetricsLog(workdir)
    picture = {"val/pictures/0": np.zeros((4, 6, 3), np.uint8)}
    first.write({"step": 1, "loss": 3.0, "loss/ce": 3.0})
    first.write({"step": 2, "loss": 2.0, "loss/ce": 2.0})
    first.write({"step": 2, "val/miou": 0.1, "val/iou": {"a": 0.2, "b": None}}, pictures=picture)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 3, "loss":')  # a write cut short by the stop

    # The next session restarts from the step-1 checkpoint: steps 2.. come again, then new ones.
    second = MetricsLog(workdir)
    second.write({"step": 2, "loss": 2.0, "loss/ce": 2.0})
    second.write({"step": 2, "val/miou": 0.1, "val/iou": {"a": 0.2, "b": None}}, pictures=picture)
    second.write({"step": 3, "loss": 1.5, "loss/ce": 1.5})
    second.write({"step": 4, "val/miou": 0.3, "val/iou": {"a": 0.4, "b": 0.5}}, pictures=picture)
    # A session with nothing new (a finished run re-evaluated) leaves no event file behind.
    MetricsLog(workdir).write({"step": 4, "val/miou": 0.3, "val/iou": {"a": 0.4, "b": 0.5}}, pictures=picture)
    assert len([name for name in os.listdir(workdir) if "tfevents" in name]) == 2

    events = read_events(workdir)
    steps = lambda tag: [e.step for e in events.Scalars(tag)]
    assert steps("loss") == steps("loss/ce") == [1, 2, 3]
    assert steps("val/miou") == steps("val/iou/a") == [2, 4] and steps("val/iou/b") == [4]
    assert [e.step for e in events.Images("val/pictures/0")] == [2, 4]
    # metrics.jsonl, the source of truth, keeps every record; 'time' goes on from the last session's.
    records = MetricsLog.read(workdir)
    assert [r["step"] for r in records] == [1, 2, 2, 2, 2, 3, 4, 4]
    assert records[3]["time"] >= records[2]["time"]


class _StubModel:
    """A PDN-like output with an affinity map: the intermediates a picture may show."""

    def apply(self, variables, images, train):
        batch, height, width, _ = images.shape
        logits = jnp.zeros((batch, height, width, 3)).at[..., 1].set(1.0)
        layers = (jnp.zeros((batch, 5, 7, 3)).at[..., 2].set(1.0), logits)
        return logits, {"layer_logits": layers, "affinity_logits": jnp.zeros((batch, height, width, 16))}


def test_pictures_show_the_panels_the_family_draws():
    """PDN's layers (its extra predictions, the default panels) and DeepLabv3+'s affinity map, drawn together by a
    family that draws both."""
    from difnet_jax.models import deeplabv3plus, pdn

    rng = np.random.default_rng(0)
    source = [{"image": rng.integers(0, 255, (20, 30, 3), np.uint8), "label": np.zeros((20, 30, 1), np.uint8)}
              for _ in range(3)]
    family = dataclasses.replace(FAMILIES["pdn"], pictures=lambda intermediates: (
        pdn.extra_predictions(intermediates), deeplabv3plus.pictures(intermediates)[1]))
    options = EvalOptions(eval_size=33, normalization=IMAGENET)
    pictures = ValidationPictures(_StubModel(), family, source, options, count=2)
    rendered = pictures.render({})
    assert sorted(rendered) == ["val/pictures/0", "val/pictures/2"]
    picture = rendered["val/pictures/2"]
    # image | ground truth | prediction | layer1 | layer2 | affinity, rate 1
    assert picture.shape == (HEADER_HEIGHT + 20, 6 * 30 + 5 * 2, 3)
    panel = lambda k: picture[HEADER_HEIGHT:, 32 * k : 32 * k + 30]
    np.testing.assert_array_equal(panel(0), source[2]["image"])
    assert (panel(2) == visualize.PALETTE[1]).all() and (panel(3) == visualize.PALETTE[2]).all()
    assert (panel(5) == 128).all()  # sigmoid(0) = 0.5 to every neighbour
