"""Runs the study of each paper's claims and writes docs/results/claims.md: a thin entry point over
`difnet_jax.studies.claims` (the claims, their runs, sweeps and ledger) and `claims_report` (the judging and report).

  python -m experiments.claims --dry_run                  # the runs and the estimated CPU time; nothing started
  python -m experiments.claims                            # every claim, 5 seeds, two trainings at once on 2 cores
  python -m experiments.claims --only=difnet_vs_simdeeplab,walks --seeds=2
  python -m experiments.claims --report_only              # rewrite claims.md from the runs finished so far

Each training is a subprocess `python -m experiments.voc ...` (its log beside its workdir, WORKDIR.log); the
propagation runs are then evaluated by `python -m experiments.evaluate --propagate=... --propagate_lambda=...`.
`--parallel` trainings run at once, each on its share of the cores (one core each: XLA's single-threaded CPU path):
on a 2-core Intel Xeon (AVX-512), two DifNet-18 trainings at once, one core each, finished 1.17x as many trainings an
hour as one at a time with two threads (BENCHMARKS.md, "Trainings per hour"). Results differ from a two-thread run
of the same seed by float32 reduction order, so a study keeps one setting for all its runs (recorded in each run's
log). The programs are cached between runs (JAX's persistent compilation cache under RUNS_DIR/.jax_cache).

A finished run (its metrics.jsonl holds the evaluation at the last step) is skipped, so an interrupted study resumes
where it stopped (Ctrl-C lets the running trainings checkpoint, then stops). Each finished run is also added to the
ledger (--ledger, committed): a later session restores its missing workdirs from it and goes on.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from absl import flags

from difnet_jax.studies import claims, claims_list, claims_report, claims_runner
from experiments import cli
from experiments.run_config import run_config

_STEPS = flags.DEFINE_integer("steps", 400, "Training steps of the fine-tuning runs and the sweeps (PDN-18 reaches "
                              "0.71 held-out mIoU in 400).")
_SCRATCH_STEPS = flags.DEFINE_integer("scratch_steps", 1000, "Training steps of the runs from scratch (the "
                                      "synthetic modifier's 1,000: at 400 DifNet-18 is at 0.37 mIoU, std 0.04).")
_SEEDS = flags.DEFINE_integer("seeds", claims.SEEDS, "Seeds 0..N-1 of every claim run (the sweeps use seed 0).")
_ONLY = flags.DEFINE_list("only", None, "Claims to run, comma-separated (default all): "
                          + ", ".join(claim.name for claim in claims_list.study().claims) + ".")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the runs and the estimated CPU time; start nothing.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write --out from the finished runs; train nothing.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/claims", "Folder of the study's workdirs.")
_OUT = flags.DEFINE_string("out", os.path.join(cli.PROJECT_ROOT, "docs", "results", "claims.md"),
                           "The claims table written at the end.")
_LEDGER = flags.DEFINE_string("ledger", os.path.join(cli.PROJECT_ROOT, "docs", "results", "claims_runs.jsonl"),
                              "The finished runs' configs and final evaluations; missing workdirs are restored "
                              "from it.")
_PAGES = flags.DEFINE_list("pages", [os.path.join(cli.PROJECT_ROOT, "docs", "claims.md")],
                           "Pages whose claims table (between claims_runner's TABLE_BEGIN and TABLE_END comments) is "
                           "rewritten.")
_PARALLEL = flags.DEFINE_integer("parallel", min(2, len(os.sched_getaffinity(0))),
                                 "Trainings at once, each on an equal share of the cores (module docstring).")


def _command() -> str:
    parts = ["python -m experiments.claims", f"--steps={_STEPS.value}", f"--scratch_steps={_SCRATCH_STEPS.value}",
             f"--seeds={_SEEDS.value}"]
    if _ONLY.value:
        parts.append(f"--only={','.join(_ONLY.value)}")
    if _RUNS_DIR.value != "runs/claims":
        parts.append(f"--runs_dir={_RUNS_DIR.value}")
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
    return (f"{len(plan.all_jobs())} trainings planned so far, estimated {claims.hours(total)} of training time in "
            f"all ({claims.hours(total / _PARALLEL.value)} of wall time at {_PARALLEL.value} at once), "
            f"{claims.hours(left / _PARALLEL.value)} of wall time left (python -m experiments.claims --dry_run)")


def _dry_run(plan: claims.Plan) -> None:
    total, left, rates = _estimate(plan)
    selected = plan.selected()
    print(f"The study of {len(plan.claims)} claim(s): {', '.join(c.name for c in plan.claims)}; "
          f"{plan.steps} steps a fine-tuning run, {plan.scratch_steps} a run from scratch, seeds 0..{plan.seeds - 1}, "
          f"workdirs under {plan.runs_dir}.")
    for sweep in plan.sweeps:
        print(f"\nSweep {sweep.name} ({sweep.key} in {[sweep.label(v) for v in sweep.values]}, held-out train data, "
              "seed 0):")
        for job in plan.sweep_jobs(sweep, selected):
            _print_job(job, rates, plan)
    print("\nClaim runs:")
    for job in plan.claim_jobs(None, selected):
        _print_job(job, rates, plan)
    measured = ", ".join(f"{variant} {seconds:.2f}" for variant, seconds in sorted(rates.items())) or "none"
    print(f"\nSeconds per step ('time' / step of the last record of runs of at least {claims.MIN_STEPS_TO_MEASURE} "
          f"steps in {plan.runs_dir} and runs/): {measured}; any other variant "
          f"{claims.DEFAULT_SECONDS_PER_STEP} (assumed), plus {claims.SECONDS_PER_RUN:.0f} s a run to start and "
          f"{claims.SECONDS_PER_PROPAGATION:.0f} s a propagation evaluation"
          + (f", plus {claims.SECONDS_TO_PRETRAIN:.0f} s to pretrain the synthetic ImageNet ResNet-18"
             if claims.pretraining_missing(plan) else "") + ".")
    print(f"Estimated training time: {claims.hours(total)} for the {len(plan.all_jobs())} trainings planned so far, "
          f"{claims.hours(left)} left (finished runs are skipped; runs waiting for a selection are counted once "
          f"planned); {_PARALLEL.value} at once: about {claims.hours(left / _PARALLEL.value)} of wall time left. "
          "Nothing was started (--dry_run).")


def _print_job(job: claims.Job, rates, plan) -> None:
    is_trained, is_evaluated = claims.done(job, plan.load_config)
    state = "finished, skipped" if is_evaluated else ("trained; evaluation left" if is_trained else
                                                      f"~{claims.hours(claims.estimate_seconds(job, rates))}")
    if job.pending:
        print(f"  {job.run.label} seed {job.seed}: waits for sweep(s) {', '.join(job.pending)} ({state})")
        return
    print(f"  {job.run.label} seed {job.seed} ({state}): python -m experiments.voc {shlex.join(job.train_argv())}")
    if job.run.propagate:
        print("      then python -m experiments.evaluate " + (shlex.join(job.evaluate_argv()) if job.evaluate_flags
                                                               else "(waits for sweep da_propagation)"))


def _announce(job: claims.Job, action: str, cores: list[int]) -> None:
    print(f"{job.run.label} seed {job.seed}: {'training' if action == 'train' else 'evaluating'} {job.workdir} (log "
          f"{job.workdir}.log, cores {cores}) at {time.strftime('%H:%M:%S')}", flush=True)


def main():
    study = claims_list.study()
    runs_dir = os.path.abspath(_RUNS_DIR.value)
    ledger = claims.Ledger(_LEDGER.value)
    plan = claims.Plan(study, claims.chosen_claims(study, _ONLY.value), _STEPS.value, _SEEDS.value, runs_dir,
                       load_config=run_config, scratch_steps=_SCRATCH_STEPS.value)
    if not _DRY_RUN.value and (restored := ledger.restore(runs_dir)):
        print(f"Restored {restored} finished run(s) from {_LEDGER.value} into {runs_dir}.")
    if _DRY_RUN.value:
        _dry_run(plan)
        return 0
    status = 0
    if not _REPORT_ONLY.value:
        try:
            claims_runner.execute(plan, ledger, _PARALLEL.value, cli.PROJECT_ROOT, _announce)
        except claims.StudyStopped as stop:
            print(f"Study stopped: {stop}", file=sys.stderr)
            status = 1
    report = claims.Plan(study, study.claims, _STEPS.value, _SEEDS.value, runs_dir, load_config=run_config,
                         scratch_steps=_SCRATCH_STEPS.value)
    kept = ledger.update(report.ledger_jobs(), runs_dir, run_config)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    all_rows = claims_report.rows(report)
    text = claims_report.markdown(report, _command(), _estimate_text(report), runs_dir=_RUNS_DIR.value)
    with open(_OUT.value, "w") as f:
        f.write(text)
    table = claims_report.table(report, all_rows)
    spliced = [page for page in _PAGES.value if os.path.isfile(page) and claims_runner.splice_table(
        page, [f"{claims_report.progress(report)} ({time.strftime('%Y-%m-%d')}; the table of "
               f"`{os.path.relpath(_OUT.value, cli.PROJECT_ROOT)}`, written by the same command):", "", *table, "",
               "What changed since the last table:", "", *claims_report.changes(all_rows)])]
    print("\n".join(table))
    print(f"Wrote {_OUT.value}" + (f" and the table in {', '.join(spliced)}" if spliced else "")
          + f"; {kept} finished run(s) kept in {_LEDGER.value}")
    return status


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
