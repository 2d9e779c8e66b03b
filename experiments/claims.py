"""Runs the study of each paper's claims and writes docs/results/claims.md: a thin entry point over
`difnet_jax.studies.claims` (the claims, their runs and protocols, and how each is judged).

  python -m experiments.claims --dry_run                  # the runs and the estimated CPU time; nothing started
  python -m experiments.claims                            # every claim, 3 seeds (about 3.3 h on 2 cores)
  python -m experiments.claims --only=difnet_vs_simdeeplab,walks --seeds=2
  python -m experiments.claims --report_only              # rewrite claims.md from the runs finished so far

Each training is a subprocess `python -m experiments.voc ...` (its log beside its workdir, WORKDIR.log); the
propagation runs are then evaluated by `python -m experiments.evaluate --propagate=1,3,10 --propagate_oracle=1,3,10`.
The hyper-parameter sweeps on held-out train data run first and decide the claim runs' values. A finished run (its
metrics.jsonl holds the evaluation at the last step) is skipped, so an interrupted study resumes where it stopped
(Ctrl-C lets the running training checkpoint, then stops). claims.md covers every claim of the study from whatever
runs at this budget are finished under --runs_dir, "not run" for the others.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

from absl import flags

from difnet_jax.studies import claims
from experiments import cli
from experiments.run_config import run_config

_STEPS = flags.DEFINE_integer("steps", 400, "Training steps of the fine-tuning runs and the sweeps (PDN-18 reaches "
                              "0.71 held-out mIoU in 400).")
_SCRATCH_STEPS = flags.DEFINE_integer("scratch_steps", 1000, "Training steps of the runs from scratch (the "
                                      "synthetic modifier's 1,000: at 400 DifNet-18 is at 0.37 mIoU, std 0.04).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1 of every claim run (the sweeps use seed 0).")
_ONLY = flags.DEFINE_list("only", None, "Claims to run, comma-separated (default all): "
                          + ", ".join(claim.name for claim in claims.study().claims) + ".")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and the estimated CPU time; start nothing.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write --out from the finished runs; train nothing.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/claims", "Folder of the study's workdirs.")
_OUT = flags.DEFINE_string("out", os.path.join(cli.PROJECT_ROOT, "docs", "results", "claims.md"),
                           "The claims table written at the end.")
_BETA_PER_WEIGHTING = flags.DEFINE_bool("beta_per_weighting", True,
                                        "Select Dilated Affinity's beta for each weighting scheme, as DA Table 1 "
                                        "does; --nobeta_per_weighting: the sqrt scheme's for all four.")


def _command() -> str:
    parts = ["python -m experiments.claims", f"--steps={_STEPS.value}", f"--scratch_steps={_SCRATCH_STEPS.value}",
             f"--seeds={_SEEDS.value}"]
    if _ONLY.value:
        parts.append(f"--only={','.join(_ONLY.value)}")
    if _RUNS_DIR.value != "runs/claims":
        parts.append(f"--runs_dir={_RUNS_DIR.value}")
    if not _BETA_PER_WEIGHTING.value:
        parts.append("--nobeta_per_weighting")
    return " ".join(parts)


def _estimate(plan: claims.Plan) -> tuple[float, float, dict[str, float]]:
    """(seconds of the whole plan, seconds of what is left, the measured seconds per step by variant)."""
    rates = claims.measured_seconds_per_step([plan.runs_dir, os.path.join(cli.PROJECT_ROOT, "runs")])
    total = left = claims.SECONDS_TO_PRETRAIN if claims.pretraining_missing(plan) else 0.0
    for job in plan.all_jobs():
        seconds = claims.estimate_seconds(job, rates)
        total += seconds
        is_trained, is_evaluated = claims.done(job, plan.load_config)
        left += 0.0 if is_evaluated else (claims.SECONDS_PER_PROPAGATION if is_trained else seconds)
    return total, left, rates


def _estimate_text(plan: claims.Plan) -> str:
    total, left, _ = _estimate(plan)
    runs = len(plan.all_jobs())
    return (f"{runs} trainings, estimated {claims.hours(total)} of this 2-core CPU in all, "
            f"{claims.hours(left)} left (python -m experiments.claims --dry_run)")


def _dry_run(plan: claims.Plan) -> None:
    total, left, rates = _estimate(plan)
    print(f"The study of {len(plan.claims)} claim(s): {', '.join(c.name for c in plan.claims)}; "
          f"{plan.steps} steps a fine-tuning run, {plan.scratch_steps} a run from scratch, seeds 0..{plan.seeds - 1}, "
          f"workdirs under {plan.runs_dir}.")
    for sweep in plan.sweeps:
        print(f"\nSweep {sweep.name} ({sweep.key} in {list(sweep.values)}, held-out train data, seed 0):")
        for job in plan.sweep_jobs(sweep):
            _print_job(job, rates, plan)
    print("\nClaim runs:")
    for job in plan.claim_jobs():
        _print_job(job, rates, plan)
    measured = ", ".join(f"{variant} {seconds:.2f}" for variant, seconds in sorted(rates.items())) or "none"
    print(f"\nSeconds per step ('time' / step of the last record of runs of at least {claims.MIN_STEPS_TO_MEASURE} "
          f"steps in {plan.runs_dir} and runs/): {measured}; any other variant "
          f"{claims.DEFAULT_SECONDS_PER_STEP} (assumed), plus {claims.SECONDS_PER_RUN:.0f} s a run to start and "
          f"{claims.SECONDS_PER_PROPAGATION:.0f} s a propagation evaluation"
          + (f", plus {claims.SECONDS_TO_PRETRAIN:.0f} s to pretrain the synthetic ImageNet ResNet-18"
             if claims.pretraining_missing(plan) else "") + ".")
    print(f"Estimated CPU time: {claims.hours(total)} for all {len(plan.all_jobs())} trainings, {claims.hours(left)} "
          "left (finished runs are skipped). Nothing was started (--dry_run).")


def _print_job(job: claims.Job, rates, plan) -> None:
    is_trained, is_evaluated = claims.done(job, plan.load_config)
    state = "finished, skipped" if is_evaluated else ("trained; evaluation left" if is_trained else
                                                      f"~{claims.hours(claims.estimate_seconds(job, rates))}")
    if job.pending:
        print(f"  {job.run.label} seed {job.seed}: waits for sweep(s) {', '.join(job.pending)} ({state})")
        return
    print(f"  {job.run.label} seed {job.seed} ({state}): python -m experiments.voc {shlex.join(job.train_argv())}")
    if job.run.propagate:
        print(f"      then python -m experiments.evaluate {shlex.join(job.evaluate_argv())}")


def _subprocess(module: str, argv: list[str], log_path: str) -> None:
    """Runs `python -m MODULE ARGV` in the project root, its output appended to LOG_PATH. Ctrl-C reaches the child
    too (one process group): the training checkpoints and stops; this waits for it (a second Ctrl-C stops at once)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log_file:
        log_file.write(f"\n$ python -m {module} {shlex.join(argv)}\n")
        log_file.flush()
        process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=cli.PROJECT_ROOT)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            print("Stopping: the running training checkpoints first ...", flush=True)
            returncode = process.wait()
    if returncode != 0:
        with open(log_path) as f:
            tail = f.readlines()[-15:]
        raise claims.StudyStopped(f"python -m {module} exited with code {returncode}; the end of {log_path}:\n"
                                  + "".join(tail))


def _announce(job: claims.Job, what: str, index: int, total: int) -> None:
    if what == "skip":
        print(f"[{index}/{total}] {job.run.label} seed {job.seed}: finished, skipped ({job.workdir})", flush=True)
    else:
        print(f"[{index}/{total}] {job.run.label} seed {job.seed}: {'training' if what == 'train' else 'evaluating'}"
              f" {job.workdir} (log {job.workdir}.log) at {time.strftime('%H:%M:%S')}", flush=True)


def main():
    study = claims.study(_BETA_PER_WEIGHTING.value)
    runs_dir = os.path.abspath(_RUNS_DIR.value)
    plan = claims.Plan(study, claims.chosen_claims(study, _ONLY.value), _STEPS.value, _SEEDS.value, runs_dir,
                       load_config=run_config, scratch_steps=_SCRATCH_STEPS.value)
    if _DRY_RUN.value:
        _dry_run(plan)
        return 0
    status = 0
    if not _REPORT_ONLY.value:
        try:
            claims.execute(plan, lambda job: _subprocess("experiments.voc", job.train_argv(), job.workdir + ".log"),
                           lambda job: _subprocess("experiments.evaluate", job.evaluate_argv(),
                                                   job.workdir + ".log"),
                           _announce)
        except claims.StudyStopped as stop:
            print(f"Study stopped: {stop}", file=sys.stderr)
            status = 1
    report = claims.Plan(study, study.claims, _STEPS.value, _SEEDS.value, runs_dir, load_config=run_config,
                         scratch_steps=_SCRATCH_STEPS.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
        f.write(claims.markdown(report, _command(), _estimate_text(report), runs_dir=_RUNS_DIR.value))
    print(open(_OUT.value).read())
    print(f"Wrote {_OUT.value}")
    return status


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
