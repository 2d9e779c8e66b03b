"""The family record is the one seam for a model family.

A toy family (one conv), defined here alone and registered for the test, trains, evaluates, resumes, is
compared and is drawn with no other file touched; and no module of the library outside a family's own
model file branches on a family's or a model's name.
"""

import json
import os
import pathlib
import re

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import pytest

from difnet_jax.models import FAMILIES, Family
from difnet_jax.models.family import segmentation_loss
from tests.helpers import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


class OneConv(nn.Module):
    """The toy family's network: one 3x3 conv to the class scores, at the input size."""

    num_classes: int
    features: int = 4

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        hidden = nn.Conv(self.features, (3, 3), name="hidden")(images)
        logits = nn.Conv(self.num_classes, (1, 1), name="classifier")(nn.relu(hidden))
        return logits.astype(jnp.float32), {"hidden_scores": logits}


TOY = Family(
    build=lambda model, num_classes, facts: OneConv(num_classes, features=facts["features"]),
    loss=segmentation_loss,
    dataset_facts=lambda model: {"features": model.toy.features},  # what build reads, handed in by the caller
    backbones=lambda model: (),
    check=lambda model: None,
    defaults=lambda: ml_collections.ConfigDict({"features": 4, "impl": "plain"}),
    label=lambda model: f"Toy-{model.toy.features}",
    resumable_keys=("impl",),
    pictures=lambda intermediates: ({"toy scores": intermediates["hidden_scores"]}, {}),
)


@pytest.fixture
def toy_family(monkeypatch):
    monkeypatch.setitem(FAMILIES, "toy", TOY)
    return TOY


def _toy_config(data_dir: str, steps: int) -> ml_collections.ConfigDict:
    config = tiny_config(data_dir, "simdeeplab18,synthetic")
    with config.unlocked():
        del config.model["simdeeplab"]
        config.model.name = "toy"
        config.model.toy = TOY.defaults()
    config.model.backbone_init = ""
    config.train.num_steps = steps
    config.train.eval_every = steps
    return config


def test_a_toy_family_trains_evaluates_resumes_is_compared_and_drawn(toy_family, tiny_data_dir, tmp_path):
    from difnet_jax import evaluate_run, load, train, trained_run
    from difnet_jax.drawing.pictures import ValidationPictures
    from difnet_jax.studies import compare

    workdir = str(tmp_path / "toy")
    train.train_and_evaluate(_toy_config(tiny_data_dir, 2), workdir)
    evaluated, _ = evaluate_run.evaluate_workdir(workdir)
    assert 0.0 <= evaluated["miou"] <= 1.0

    resumed = _toy_config(tiny_data_dir, 3)
    resumed.model.toy.impl = "other"  # a key the family says a resume may change
    train.train_and_evaluate(resumed, workdir)
    steps = [json.loads(line).get("step") for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert max(steps) == 3 and 1 in steps  # the first two steps' records kept: resumed, not restarted

    result = compare.compare([workdir], str(tmp_path / "compare"), num_images=1)
    assert "examples.png" in [os.path.basename(path) for path in result["paths"]]

    model = load(workdir)
    assert model.predict(jnp.zeros((1, 33, 33, 3), jnp.uint8)).shape == (1, 33, 33)
    run = trained_run.load_run(workdir)
    pictures = ValidationPictures(run.model, run.trainer.family, [{
        "image": jnp.zeros((33, 33, 3), jnp.uint8), "label": jnp.zeros((33, 33), jnp.uint8), "id": b"x"}],
        run.trainer.evaluator.options, count=1)
    drawn = pictures.render(run.variables)
    assert list(drawn) == ["val/pictures/0"]
    assert pictures._panel_names[0] == ["prediction", "toy scores"]


FAMILY_NAMES = "|".join(sorted(FAMILIES))
BRANCHES = re.compile(
    rf"""model\.name\s*(==|!=)"""  # model.name == ...
    rf"""|(==|!=)\s*["']({FAMILY_NAMES})["']"""  # ... == "difnet"
    rf"""|["']({FAMILY_NAMES})["']\s*(==|!=|in\b|not\s+in\b)"""  # "difnet" in model
)


def test_no_module_outside_a_family_branches_on_a_family_name():
    """Family knowledge lives in the family's model file and its `Family` entry (studies of one family's
    mechanism excepted: they are that family's)."""
    own_files = {f"difnet_jax/models/{name}.py" for name in FAMILIES}
    found = []
    for folder in ("difnet_jax", "benchmarks", "experiments"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative in own_files:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BRANCHES.search(line.split("#")[0]):
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
