"""Data parallelism: 1 and 8 simulated devices train alike; two processes train with jax.distributed."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}


def test_one_and_eight_devices_give_the_same_training():
    """The global batch of 8 split over 1 or 8 devices: same losses, parameters and (synchronised) BN stats."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharding_worker.py")], env=_env(),
                            capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for n in ("8",):
        assert report["max_diff"][n] < 1e-4, report
        for a, b in zip(report["losses"][n], report["losses"]["1"]):
            assert abs(a - b) < 1e-5 * abs(b), report


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(tiny_data_dir, tmp_path):
    """Two local processes, one CPU device each, with jax.distributed on loopback (gloo collectives). What is tested
    is the processes' plumbing, not the model: the smallest family (Sim-DeepLab-18) compiles in a third of DifNet's
    time; DifNet's sharded training is the test above's."""
    port = _free_port()
    workdir = tmp_path / "run"
    common = [
        "-m", "experiments.voc", "--config=experiments/configs/voc.py:simdeeplab18,synthetic",
        f"--workdir={workdir}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
        "--config.data.name=synthetic_shapes/tiny", f"--config.data.data_dir={tiny_data_dir}",
        "--config.model.width=8", "--config.model.aspp_rates=(1,2)", "--config.data.crop_size=33",
        "--config.train.batch_size=4", "--config.train.eval_batch_size=8", "--config.train.num_steps=2",
        "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
    ]
    procs = [subprocess.Popen([sys.executable, *common, f"--process_id={i}"], env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "2 process(es)" in outputs[0] and "Final validation mIoU" in outputs[0]
    assert (workdir / "checkpoints" / "2").is_dir()
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 2]  # written once, by process 0
