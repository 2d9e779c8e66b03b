"""Training: the loss goes down, checkpoints resume exactly, metrics.jsonl is written."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from difnet_jax import train
from difnet_jax.data import pipeline
from experiments.configs.voc import get_config
from tests.conftest import TINY


def tiny_config(data_dir, arg="difnet18,synthetic"):
    config = get_config(arg)
    config.model.width = 8
    config.model.aspp_rates = (1, 2)
    config.data.name = TINY
    config.data.data_dir = data_dir
    config.data.crop_size = 33
    config.train.batch_size = 4
    config.train.eval_batch_size = 8
    config.train.log_every = 2
    return config


def test_loss_falls_clearly_on_a_fixed_batch(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 1000  # keep the poly rate near its peak
    config.train.lr = 0.05
    trainer = train.Trainer(config, num_classes=21)
    state = trainer.init(jax.random.PRNGKey(0))
    source = pipeline.source(TINY, "train", tiny_data_dir)
    batch = trainer.global_batch(next(iter(pipeline.train_loader(source, global_batch_size=4, crop_size=33))))
    losses = []
    for _ in range(40):
        state, step_metrics = trainer.train_step(state, batch)
        losses.append(float(step_metrics["loss"]))
    assert int(state.step) == 40
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.4 * losses[0], losses


def _restore_state(workdir, trainer, step):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "data"))
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))[
        "state"
    ]


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    config.train.eval_every = 4
    straight = str(tmp_path / "straight")
    result = train.train_and_evaluate(config, straight)
    assert 0.0 <= result["val/miou"] <= 1.0 and result["step"] == 4

    # A run interrupted after step 2: the same workdir without the step-4 checkpoint.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    os.remove(os.path.join(resumed, "metrics.jsonl"))
    train.train_and_evaluate(config, resumed)  # picks up at step 2, with the data iterator's position

    trainer = train.Trainer(config, num_classes=21)
    a, b = _restore_state(straight, trainer, 4), _restore_state(resumed, trainer, 4)
    assert int(a.step) == int(b.step) == 4
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    records = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    evals = [r for r in records if "val/miou" in r]
    assert len(evals) == 1 and evals[0]["step"] == 4 and len(evals[0]["val/iou"]) == 21
    resumed_steps = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert resumed_steps == [4, 4]  # only steps 3-4 were trained again: one train and one eval line
