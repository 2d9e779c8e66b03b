"""Running the claims study's jobs: each a `python -m` subprocess pinned to its share of the cores, several at once,
re-planned after every job; and the claims table spliced into the pages that show it (`experiments.claims`).

Two trainings at once, one core each, finish 1.17x as many trainings an hour on the 2-core Xeon as one at a time
with two threads (BENCHMARKS.md, "Trainings per hour"). A run's numbers depend on the setting (float32 summation
order), so a study keeps one; each run's log records its cores and XLA_FLAGS.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable

from difnet_jax.studies import claims
from difnet_jax.user_errors import ArgumentError

log = logging.getLogger(__name__)

TABLE_BEGIN = "<!-- claims table: begin (python -m experiments.claims --report_only) -->"
TABLE_END = "<!-- claims table: end -->"


def core_shares(parallel: int) -> list[list[int]]:
    """The cores this process may use, split into `parallel` equal shares (one list of cores per slot)."""
    cores = sorted(os.sched_getaffinity(0))
    if parallel < 1 or parallel > len(cores):
        raise ArgumentError(f"--parallel={parallel} is invalid: expected 1 to {len(cores)} (the cores here)")
    share = len(cores) // parallel
    return [cores[i * share:(i + 1) * share] for i in range(parallel)]


def run_module(module: str, argv: list[str], log_path: str, cores: list[int], cache_dir: str, cwd: str) -> None:
    """Runs `python -m MODULE ARGV` in CWD on CORES, its output appended to LOG_PATH (JAX's compilation cache in
    CACHE_DIR); StudyStopped with the log's end when it fails. Ctrl-C reaches the child too (one process group): a
    training checkpoints and stops; this waits for it."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir}
    if len(cores) == 1:  # XLA's CPU client would start a thread per core of the machine
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    with open(log_path, "a") as log_file:
        log_file.write(f"\n$ python -m {module} {shlex.join(argv)}  # cores {cores}, "
                       f"XLA_FLAGS={env.get('XLA_FLAGS', '')!r}\n")
        log_file.flush()
        process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=cwd, env=env)
        os.sched_setaffinity(process.pid, cores)  # before the child has imported anything, so all its threads
        returncode = process.wait()
    if returncode != 0:
        with open(log_path) as f:
            tail = f.readlines()[-15:]
        raise claims.StudyStopped(f"python -m {module} exited with code {returncode}; the end of {log_path}:\n"
                                  + "".join(tail))


def execute(plan: claims.Plan, ledger: claims.Ledger, parallel: int, cwd: str,
            announce: Callable[[claims.Job, str, list[int]], None] = lambda job, action, cores: None,
            run: Callable[..., None] = run_module) -> None:
    """Runs the plan's work, `parallel` jobs at once, each on its share of the cores, re-planning after each job (a
    finished sweep unlocks the runs waiting for its selection), each finished run added to the ledger;
    StudyStopped after the running jobs end. `run` is `run_module`'s signature (tests pass a fake)."""
    shares, free = core_shares(parallel), list(range(parallel))
    cache_dir = os.path.join(plan.runs_dir, ".jax_cache")
    lock, running, failure = threading.Lock(), {}, None

    def one(job: claims.Job, action: str, slot: int) -> None:
        train = lambda job: run("experiments.voc", job.train_argv(), job.workdir + ".log",  # noqa: E731
                                shares[slot], cache_dir, cwd)
        evaluate = lambda job: run("experiments.evaluate", job.evaluate_argv(),  # noqa: E731
                                   job.workdir + ".log", shares[slot], cache_dir, cwd)
        claims.run_one(job, action, train, evaluate, plan.load_config)
        with lock:
            ledger.add(job, plan.runs_dir, plan.load_config)

    claims.check_workdirs(plan)
    if claims.pretraining_missing(plan):  # once, before trainings at once would each start making it
        log.info("Pretraining the synthetic ImageNet ResNet-18 first (python -m experiments.pretrain) ...")
        run("experiments.pretrain", [], os.path.join(plan.runs_dir, "pretrain.log"), sorted(os.sched_getaffinity(0)),
            cache_dir, cwd)
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        try:
            while True:
                if failure is None:
                    busy = {job.workdir for job, _ in running.values()}
                    for job, action in plan.work():
                        if not free:
                            break
                        if job.workdir not in busy:
                            slot = free.pop(0)
                            announce(job, action, shares[slot])
                            running[pool.submit(one, job, action, slot)] = (job, slot)
                            busy.add(job.workdir)
                if not running:
                    break
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    _, slot = running.pop(future)
                    free.append(slot)
                    failure = failure or future.exception()
        except KeyboardInterrupt:
            log.info("Stopping: the running trainings checkpoint first ...")
            concurrent.futures.wait(running)
            raise
    if failure is not None:
        raise failure


def splice_table(path: str, lines: list[str]) -> bool:
    """Replaces the text between TABLE_BEGIN and TABLE_END in PATH with LINES; False when the page has no markers."""
    with open(path) as f:
        text = f.read()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_BEGIN, 1)
    tail = rest.split(TABLE_END, 1)[1]
    temporary = path + ".partial"
    with open(temporary, "w") as f:
        f.write(head + TABLE_BEGIN + "\n" + "\n".join(lines) + "\n" + TABLE_END + tail)
    os.replace(temporary, path)
    return True
