"""Training: the loss goes down, checkpoints resume exactly, metrics.jsonl is written, a finished run
only re-evaluates, and a fresh run says what it does (compiling timed, left out of its rate)."""

import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from difnet_jax import train
from difnet_jax.data import normalization, pipeline
from tests.helpers import TINY, tiny_config


def test_loss_falls_clearly_on_a_fixed_batch(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 1000  # keep the poly rate near its peak (tiny_config's own rate: test_faults' program)
    trainer = train.Trainer(config, num_classes=21)
    state = trainer.init(jax.random.PRNGKey(0))
    source = pipeline.source(TINY, "train", tiny_data_dir)
    loader = pipeline.train_loader(source, global_batch_size=4, crop_size=33,
                                   normalization=normalization.of_config(config.data))
    batch = trainer.global_batch(next(iter(loader)))
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


def _assert_says_what_it_does_and_rates_exclude_compiling(caplog, workdir):
    """A fresh run logs each stage before it starts, its first progress line at step 1 once compiled, and
    that line's rate (so the ETA) counts the step's run only, not the compilation before it."""
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("difnet_jax")]
    expected = ["Preparing the data: synthetic_shapes/tiny", "Initialising difnet-18", "Training difnet-18",
                "Compiling the train step", "Compiled the train step in", "step 1/2", "step 2/2", "eval step 2"]
    found = [next(i for i, m in enumerate(messages) if m.startswith(prefix)) for prefix in expected]
    assert found == sorted(found), messages
    compile_seconds = float(re.search(r"Compiled the train step in ([\d.]+)s", caplog.text).group(1))
    first = json.loads(open(os.path.join(workdir, "metrics.jsonl")).readline())
    assert first["step"] == 1 and 1 / first["steps_per_sec"] < compile_seconds / 2, (first, compile_seconds)


def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_data_dir, tmp_path, caplog):
    config = tiny_config(tiny_data_dir)
    config.train.num_steps = 2  # the shared trained run's programs (conftest.py): JAX's persistent cache has them
    config.train.checkpoint_every = 1
    config.train.eval_every = 2
    straight = str(tmp_path / "straight")
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(config, straight)
    assert 0.0 <= result["val/miou"] <= 1.0 and result["step"] == 2
    _assert_says_what_it_does_and_rates_exclude_compiling(caplog, straight)
    caplog.clear()

    # A run interrupted after step 1: the same workdir without the step-2 checkpoint.
    resumed = str(tmp_path / "resumed")
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "2"))
    os.remove(os.path.join(resumed, "metrics.jsonl"))
    train.train_and_evaluate(config, resumed)  # picks up at step 1, with the data iterator's position

    trainer = train.Trainer(config, num_classes=21)
    a, b = _restore_state(straight, trainer, 2), _restore_state(resumed, trainer, 2)
    assert int(a.step) == int(b.step) == 2
    for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

    records = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # a session's first step is always reported
    evals = [r for r in records if "val/miou" in r]
    assert len(evals) == 1 and evals[0]["step"] == 2 and len(evals[0]["val/iou"]) == 21
    resumed_steps = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))]
    assert resumed_steps == [2, 2]  # only step 2 was trained again: its train line (the session's first) and eval

    # Running a finished run again re-evaluates it: the same figures, no training, no second eval line.
    lines_before = open(os.path.join(straight, "metrics.jsonl")).read()
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        again = train.train_and_evaluate(config, straight)
    assert again["step"] == 2 and again["val/miou"] == result["val/miou"]
    assert open(os.path.join(straight, "metrics.jsonl")).read() == lines_before
    assert "is already trained to step 2 (config.train.num_steps=2): evaluating that checkpoint" in caplog.text
    assert "not appended" in caplog.text and "steps 3..2" not in caplog.text and "Compiling" not in caplog.text



def test_the_eta_counts_the_evaluations_still_to_come():
    """Every 250 steps and at the last: at step 1 four to come; the ETA adds them once one was timed."""
    from difnet_jax.run_log import Progress

    progress = Progress(None, lambda step: 0.0, 1000, False, 0, eval_every=250)
    assert [progress.evaluations_left(step) for step in (1, 250, 251, 999, 1000)] == [4, 4, 3, 1, 1]
    assert progress.eta(700, 2.0) == "2m30s + 2 evaluations"  # none timed yet: said, not guessed
    progress.eval_seconds = 15.0
    assert progress.eta(700, 2.0) == "3m00s"  # 300 steps at 2 steps/s, and two evaluations of 15 s
    odd = Progress(None, lambda step: 0.0, 1100, False, 0, eval_every=500)
    assert [odd.evaluations_left(step) for step in (1, 501, 1001)] == [3, 2, 1]  # 500, 1000 and the last
    assert Progress(None, lambda step: 0.0, 10, False, 0).eta(5, 1.0) == "0m05s"  # no eval_every: steps only
