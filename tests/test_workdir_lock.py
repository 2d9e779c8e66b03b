"""One training per workdir: a second one stops at once naming the holder (host, pid), a lock left
by a dead process is taken over with a warning, evaluation and prediction read a workdir in use."""

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import difnet_jax
from difnet_jax import workdir_lock
from difnet_jax.workdir_lock import LOCK_NAME, WorkdirInUse, WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = """
import signal, sys, time
from difnet_jax.workdir_lock import WorkdirLock
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a clean stop releases the lock
with WorkdirLock.acquire(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


@contextlib.contextmanager
def lock_held_by_another_process(workdir):
    """A real second process holding WORKDIR's lock until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_second_training_on_a_workdir_in_use_stops_at_once_naming_the_holder(tiny_data_dir, tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable, "-m", "experiments.voc", "--config=experiments/configs/voc.py:difnet18,synthetic",
        f"--workdir={workdir}", "--config.data.name=synthetic_shapes/tiny", f"--config.data.data_dir={tiny_data_dir}",
        "--config.model.width=8", "--config.model.aspp_rates=(1,2)", "--config.data.crop_size=33",
        "--config.train.batch_size=4", "--config.train.num_steps=2",
    ]
    with lock_held_by_another_process(workdir) as holder:
        second = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                                text=True, timeout=300)
        assert second.returncode != 0
        assert (f"workdir '{workdir}' is in use by another training (pid {holder.pid} on host "
                f"{socket.gethostname()}, started ") in second.stderr, second.stderr[-3000:]
        assert f"or use another --workdir (if that run is gone, delete {workdir / LOCK_NAME})" in second.stderr
        assert "Preparing the data" not in second.stderr  # stopped before doing anything
        assert sorted(os.listdir(workdir)) == [LOCK_NAME]  # no checkpoints/, config.json or metrics.jsonl
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == holder.pid
    assert not (workdir / LOCK_NAME).exists()  # the holder's clean exit removed it


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    with lock_held_by_another_process(tmp_path) as holder:
        holder.send_signal(signal.SIGKILL)  # no chance to clean up
        holder.wait()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
        with caplog.at_level(logging.WARNING), WorkdirLock.acquire(str(tmp_path)):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (f"Took over the stale lock {tmp_path / LOCK_NAME} of pid {holder.pid} on host {socket.gethostname()}, "
            "started ") in caplog.text and "(that process is no longer running)" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def _fake_lock(workdir, host, pid, age_s=0.0):
    path = workdir / LOCK_NAME
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2024-01-02T03:04:05"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_another_hosts_lock_holds_until_it_is_ten_minutes_without_heartbeat(tmp_path, caplog):
    _fake_lock(tmp_path, "other-host", 4321, age_s=30)
    with pytest.raises(WorkdirInUse, match=r"on another host \(pid 4321 on host other-host, started "
                                           r"2024-01-02T03:04:05; lock refreshed 30 s ago\): if that run is gone, "
                                           f"delete {tmp_path / LOCK_NAME}, or wait until it is 10 min old"):
        WorkdirLock.acquire(str(tmp_path))
    _fake_lock(tmp_path, "other-host", 4321, age_s=workdir_lock.STALE_AFTER_S + 60)
    with caplog.at_level(logging.WARNING), WorkdirLock.acquire(str(tmp_path)):
        pass
    assert "of pid 4321 on host other-host, started 2024-01-02T03:04:05 (not refreshed for 11 min)" in caplog.text


def test_without_flock_a_running_pid_holds_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_lock.fcntl, "flock", no_flock)
    _fake_lock(tmp_path, socket.gethostname(), os.getppid())  # pytest's parent: running
    with pytest.raises(WorkdirInUse, match=f"pid {os.getppid()} on host {socket.gethostname()}"):
        WorkdirLock.acquire(str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _fake_lock(tmp_path, socket.gethostname(), int(finished.stdout))
    with WorkdirLock.acquire(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
    with WorkdirLock.acquire(str(tmp_path)):
        os.utime(tmp_path / LOCK_NAME, (0, 0))
        time.sleep(0.5)
        assert time.time() - os.stat(tmp_path / LOCK_NAME).st_mtime < 60


def test_prediction_reads_a_workdir_in_use(tiny_workdir, tiny_data_dir, tmp_path):
    trained = tiny_workdir
    workdir = tmp_path / "in_use"
    shutil.copytree(trained, workdir)
    with lock_held_by_another_process(workdir) as holder:
        before = (workdir / LOCK_NAME).read_text()
        labels = difnet_jax.load(str(workdir)).predict(np.zeros((40, 50, 3), np.uint8))
        assert labels.shape == (40, 50)
        assert (workdir / LOCK_NAME).read_text() == before and json.loads(before)["pid"] == holder.pid
