"""A run loses nothing: SIGTERM saves and resumes (also at the last step and during an evaluation),
NaNs are caught, corrupt checkpoints are skipped, a changed model is refused, a bad workdir fails
early, bf16 trains like float32.

The training loop's faults do not depend on the model: those tests train the smallest family, Sim-DeepLab-18 at
tiny_config's size (`LOOP`; its programs compile in a third of DifNet-18's time and are shared through JAX's
persistent cache by every test here, the subprocesses included). bf16 keeps DifNet-18, whose cascade stays float32."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from difnet_jax import checkpointing, train
from difnet_jax.data import pipeline
from difnet_jax.data.normalization import IMAGENET
from difnet_jax.run_log import Progress
from difnet_jax.user_errors import PathError
from tests.helpers import TINY, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOP = "simdeeplab18,synthetic"


def loop_config(data_dir):
    return tiny_config(data_dir, LOOP)


def test_sigterm_saves_and_the_run_resumes_where_it_stopped(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable, "-m", "experiments.voc", f"--config=experiments/configs/voc.py:{LOOP}",
        f"--workdir={workdir}", "--config.data.name=synthetic_shapes/tiny", f"--config.data.data_dir={tiny_data_dir}",
        "--config.model.width=8", "--config.model.aspp_rates=(1,2)", "--config.data.crop_size=33",
        "--config.train.batch_size=4", "--config.train.eval_batch_size=8", "--config.train.num_steps=1000",
        "--config.train.log_every=1", "--config.train.checkpoint_every=1000", "--config.train.eval_every=1000",
    ]  # tiny_config's values: the programs it compiles are the in-process tests' (JAX's persistent cache)
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics_path = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    assert output.count("SIGTERM received") == 1 and output.count("Stopped by") == 1, output[-3000:]
    saved = [int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert len(saved) == 1 and 2 <= saved[0] < 1000
    stopped_at = saved[0]
    assert (f"Stopped by SIGTERM after step {stopped_at}; checkpoint saved in {workdir / 'checkpoints'}. "
            "Run the same command to resume.") in output

    command[command.index("--config.train.num_steps=1000")] = f"--config.train.num_steps={stopped_at + 2}"
    # num_steps may change on resume (it is not a model or data key); the run continues from the checkpoint.
    output = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'} at step {stopped_at}" in output.stderr
    steps = [json.loads(line)["step"] for line in metrics_path.read_text().splitlines()]
    assert steps[-3:] == [stopped_at + 1, stopped_at + 2, stopped_at + 2]  # two train lines, one eval line


def test_the_step_normalises_the_loaders_uint8_crops_as_the_host_would(tiny_data_dir):
    """The loader hands uint8 crops; the train step normalises them (here the authors' BGR Caffe-mean input) to the
    values a host-normalised float batch has, so both give the same step."""
    from difnet_jax.data import normalization

    config = loop_config(tiny_data_dir)
    norm = normalization.of_config(config.data)
    trainer = train.Trainer(config, 21)
    local = next(iter(pipeline.train_loader(pipeline.source(TINY, "train", tiny_data_dir), global_batch_size=4,
                                            crop_size=33, normalization=norm)))
    assert local["image"].dtype == np.uint8
    metrics = {}
    for kind, images in (("uint8", local["image"]), ("host-normalised", pipeline.normalize(local["image"], norm))):
        state = trainer.init(jax.random.PRNGKey(0))
        _, step_metrics = trainer.train_step(state, trainer.global_batch({**local, "image": images}))
        metrics[kind] = {k: float(v) for k, v in step_metrics.items()}
    for key in ("loss", "grad_norm", "pixel_accuracy"):
        np.testing.assert_allclose(metrics["uint8"][key], metrics["host-normalised"][key], rtol=1e-5, err_msg=key)


def _poisoning_global_batch(poison_step):
    """Trainer.global_batch that hands the step host-normalised float images (so that the compiled step takes
    float32, which can hold a NaN; uint8 crops cannot) and puts a NaN in the images of the `poison_step`-th batch."""
    from difnet_jax.data import normalization

    original = train.Trainer.global_batch
    calls = {"n": 0}

    def global_batch(self, local_batch):
        calls["n"] += 1
        images = pipeline.normalize(local_batch["image"], normalization.of_config(self.config.data))
        if calls["n"] == poison_step:
            images = np.full_like(images, np.nan)
        return original(self, {**local_batch, "image": images})

    return global_batch


def test_nan_batch_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_data_dir, tmp_path, monkeypatch):
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    config.train.log_every = 100
    monkeypatch.setattr(train.Trainer, "global_batch", _poisoning_global_batch(3))
    with pytest.raises(FloatingPointError, match="at step 3"):
        train.train_and_evaluate(config, str(tmp_path))
    manager = checkpointing.checkpoint_manager(str(tmp_path), config)
    assert manager.all_steps() == [2]
    trainer = train.Trainer(config, 21)
    state = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["state"].params))


def test_nan_batch_is_skipped_when_asked(tiny_data_dir, tmp_path, monkeypatch):
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.checkpoint_every = 4
    config.train.log_every = 4
    config.train.eval_every = 4
    config.train.skip_nonfinite = True
    monkeypatch.setattr(train.Trainer, "global_batch", _poisoning_global_batch(2))
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 4 and np.isfinite(result["val/miou"])
    logged = [r for r in _records(tmp_path) if "loss" in r]  # steps 1 and 4; the NaN came at step 2
    assert [(r["step"], r["skipped_steps"]) for r in logged] == [(1, 0), (4, 1)]
    assert all(np.isfinite(r["loss"]) for r in logged)


def test_skipped_step_leaves_the_state_unchanged(tiny_data_dir):
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4  # the previous test's train step: compiled once
    config.train.skip_nonfinite = True
    trainer = train.Trainer(config, 21)
    state = trainer.init(jax.random.PRNGKey(0))
    before = jax.device_get(state.params)
    batch = {"image": np.full((4, 33, 33, 3), np.nan, np.float32), "label": np.zeros((4, 33, 33), np.int32)}
    state, metrics = trainer.train_step(state, trainer.global_batch(batch))
    assert int(metrics["nonfinite"]) == 1 and int(state.step) == 1
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def finished_run(tiny_data_dir, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("finished")
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.checkpoint_every = 2
    config.train.eval_every = 4
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


def test_truncated_latest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, caplog):
    config, finished = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    files = [os.path.join(d, f) for d, _, fs in os.walk(workdir / "checkpoints" / "4" / "state") for f in fs]
    for path in files:  # a half-written step-4 checkpoint
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 3)
    trainer = train.Trainer(config, 21)
    loader = pipeline.train_loader(pipeline.source(TINY, "train", config.data.data_dir), global_batch_size=4,
                                   crop_size=33, normalization=IMAGENET)
    manager = checkpointing.checkpoint_manager(str(workdir), config)
    with caplog.at_level(logging.WARNING):
        state, step = checkpointing.restore_latest(manager, trainer.abstract_state, iter(loader))
    assert step == 2 and int(state.step) == 2
    assert "checkpoints/4 cannot be restored" in caplog.text
    assert (workdir / "checkpoints" / "4").exists()  # nothing is deleted


def test_resume_with_another_model_is_refused(finished_run):
    config, workdir = finished_run
    changed = loop_config(config.data.data_dir)
    changed.train.num_steps = 8
    changed.model.aspp_rates = (1,)
    changed.data.crop_size = 41
    changed.data.data_dir = "/elsewhere"  # a new location alone would be fine
    expected = r"data.crop_size: 33 -> 41, model.aspp_rates: \[1, 2\] -> \[1\]\)"
    with pytest.raises(ValueError, match=expected):
        train.train_and_evaluate(changed, str(workdir))


def test_bad_workdir_fails_before_training(tiny_data_dir, tmp_path, monkeypatch):
    config = loop_config(tiny_data_dir)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PathError, match=r"workdir '.*a_file/run' is not writable \(Not a directory\): choose "
                                          "another --workdir"):
        train.train_and_evaluate(config, str(blocker / "run"))
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    with pytest.raises(PathError, match="1 MiB free|0 MiB free"):
        train.train_and_evaluate(config, str(tmp_path / "full"))
    assert not (tmp_path / "full" / "checkpoints").exists()


def test_bfloat16_trains_like_float32(tiny_data_dir):
    source = pipeline.source(TINY, "train", tiny_data_dir)
    batch = next(iter(pipeline.train_loader(source, global_batch_size=4, crop_size=33, normalization=IMAGENET)))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(tiny_data_dir)
        config.model.dtype = dtype
        config.train.num_steps = 1000
        trainer = train.Trainer(config, 21)
        state = trainer.init(jax.random.PRNGKey(0))
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))  # float32 parameters
        losses[dtype] = []
        for _ in range(5):
            state, metrics = trainer.train_step(state, trainer.global_batch(batch))
            losses[dtype].append(float(metrics["loss"]))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)
    assert losses["bfloat16"][-1] < losses["bfloat16"][0]


def _signal_self(signum):
    os.kill(os.getpid(), signum)  # the handler runs before os.kill returns, as for a signal from outside


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_signal_during_a_step_stops_the_run_right_after_it(tiny_data_dir, tmp_path, monkeypatch, caplog):
    """One process waits for the previous step before it reads the stop flag and takes the next batch, so at most
    one step is queued behind the running one: a signal while step 3's batch is fetched stops the run after step
    3, not at the next logged step (log_every 100 here; before, steps were queued up to it and all ran first)."""
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 8
    config.train.log_every = config.train.checkpoint_every = config.train.eval_every = 100
    added, finished_when_fetched = [], []
    add, global_batch = Progress.add, train.Trainer.global_batch

    def add_and_keep(self, step_metrics):
        added.append(step_metrics)
        add(self, step_metrics)

    def fetch(self, local_batch):  # fetch k is step k's batch (the first one before compiling)
        finished_when_fetched.append(all(m["loss"].is_ready() for m in added[:-1]))  # all but the running one
        if len(finished_when_fetched) == 3:
            _signal_self(signal.SIGINT)  # comes while step 3 is being set up and run
        return global_batch(self, local_batch)

    monkeypatch.setattr(Progress, "add", add_and_keep)
    monkeypatch.setattr(train.Trainer, "global_batch", fetch)
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(config, str(tmp_path))
    assert result == {"step": 3, "stopped_by": "SIGINT"}
    assert all(finished_when_fetched) and len(finished_when_fetched) == 3  # no step ran ahead, none after 3
    assert "Stopped by SIGINT after step 3; checkpoint saved" in caplog.text
    assert checkpointing.checkpoint_manager(str(tmp_path), config).all_steps() == [3]


def test_a_stop_at_the_last_step_is_honoured_and_the_rerun_evaluates(tiny_data_dir, tmp_path, monkeypatch, caplog):
    """Ctrl-C while the last step's report waits for the device: no evaluation; the rerun does it."""
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.log_every = config.train.checkpoint_every = config.train.eval_every = 100
    report = Progress.report

    def report_then_ctrl_c(self, step):
        report(self, step)
        if step == 4:
            _signal_self(signal.SIGINT)

    monkeypatch.setattr(Progress, "report", report_then_ctrl_c)
    handler_before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN when started in the background
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(config, str(tmp_path))
    assert result == {"step": 4, "stopped_by": "SIGINT"}
    assert caplog.text.count("Stopped by") == 1 and "Stopped by SIGINT after step 4; checkpoint saved" in caplog.text
    assert checkpointing.checkpoint_manager(str(tmp_path), config).all_steps() == [4]
    assert [r["step"] for r in _records(tmp_path) if "val/miou" in r] == []
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    monkeypatch.undo()
    rerun = train.train_and_evaluate(config, str(tmp_path))
    assert rerun["step"] == 4 and 0 <= rerun["val/miou"] <= 1
    assert [r["step"] for r in _records(tmp_path) if "val/miou" in r] == [4]


def test_a_stop_during_an_evaluation_checkpoints_and_the_resumed_run_evaluates_again(tiny_data_dir, tmp_path,
                                                                                    monkeypatch, caplog):
    config = loop_config(tiny_data_dir)
    config.train.num_steps = 4
    config.train.eval_every = 2
    config.train.log_every = config.train.checkpoint_every = 100  # step 2 is no checkpoint step of its own
    evaluate = train.Trainer.evaluate

    def sigterm_then_evaluate(self, *args, **kwargs):
        _signal_self(signal.SIGTERM)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "evaluate", sigterm_then_evaluate)
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(config, str(tmp_path))
    assert result == {"step": 2, "stopped_by": "SIGTERM"}
    assert caplog.text.count("Stopped by") == 1
    assert ("Stopped by SIGTERM during the evaluation of step 2; checkpoint saved in "
            f"{tmp_path / 'checkpoints'}. Run the same command to resume (it evaluates step 2 first).") in caplog.text
    assert checkpointing.checkpoint_manager(str(tmp_path), config).all_steps() == [2]
    assert [r["step"] for r in _records(tmp_path)] == [1, 2]  # steps 1 and 2 reported, no evaluation

    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 4 and "The evaluation of step 2 was stopped: evaluating it now." in caplog.text
    assert [(r["step"], "val/miou" in r) for r in _records(tmp_path)] == [
        (1, False), (2, False), (2, True), (3, False), (4, False), (4, True)]


def test_a_stop_while_setting_up_ends_the_run_after_that_stage(tiny_data_dir, tmp_path, monkeypatch, caplog):
    prepare = pipeline.prepare

    def prepare_then_sigterm(*args, **kwargs):
        builder = prepare(*args, **kwargs)
        _signal_self(signal.SIGTERM)
        return builder

    monkeypatch.setattr(pipeline, "prepare", prepare_then_sigterm)
    with caplog.at_level(logging.INFO, logger="difnet_jax"):
        result = train.train_and_evaluate(loop_config(tiny_data_dir), str(tmp_path))
    assert result == {"step": 0, "stopped_by": "SIGTERM"}
    assert ("Stopped by SIGTERM before training; nothing new to save. Run the same command to resume."
            in caplog.text) and "Initialising" not in caplog.text
    assert sorted(os.listdir(tmp_path)) == []  # no lock, checkpoint or config left behind
