"""The claims study (difnet_jax/studies/claims.py, claims_report.py, experiments/claims.py): its table covers issues
21 and 28's claims, finished runs skipped so that a study resumes, sweeps selecting on held-out data (one after
another's selection), lambda and the self term chosen by evaluation, intervals in the report, "not run" for claims
without runs, the ledger restoring a session's runs, and --dry_run starting nothing. No training: workdirs are
hand-made config.json + metrics.jsonl."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from difnet_jax.config_checks import check_config
from difnet_jax.studies import claims, claims_list, claims_report, claims_runner
from difnet_jax.user_errors import ArgumentError, ConfigError
from experiments.configs import variants
from experiments.configs.voc import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(job: claims.Job):
    config = get_config(job.run.arg)
    for key, value in job.overrides:
        variants.set_key(config, key, value)
    config.train.num_steps, config.train.seed = job.steps, job.seed
    return config


def _fake_run(job: claims.Job, miou: float, *, trained_to: int | None = None, eval_steps=None, heads=None) -> None:
    """JOB's workdir as training leaves it: config.json, and metrics.jsonl trained to `trained_to` (default all
    steps) with evaluations at `eval_steps` (default the last step), the last with `miou` and `heads`."""
    os.makedirs(job.workdir)
    with open(os.path.join(job.workdir, "config.json"), "w") as f:
        f.write(_config(job).to_json_best_effort(indent=1))
    trained_to = job.steps if trained_to is None else trained_to
    eval_steps = [job.steps] if eval_steps is None else eval_steps
    records = [{"step": trained_to, "loss": 0.5, "time": 1.0 * trained_to}]
    for step in eval_steps:
        last = step == eval_steps[-1]
        records.append({"step": step, "val/miou": miou if last else miou - 0.1, "val/pixel_accuracy": 0.9,
                        "val/iou": {}, **({f"val/miou_{h}": v for h, v in (heads or {}).items()} if last else {})})
    with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def _claim(study, name):
    return next(c for c in study.claims if c.name == name)


def _pairs(claim):
    return {(c.better.run, c.better.key, c.worse.run, c.worse.key, c.at_least) for c in claim.comparisons}


def _plan(tmp_path, only, seeds=2, steps=20):
    study = claims_list.study()
    return claims.Plan(study, claims.chosen_claims(study, only), steps, seeds, str(tmp_path / "runs"))


def _select_all(plan, index=1):
    """A selection of every sweep (its value at `index`) and of lambda per self term."""
    return {**{name: sweep.values[min(index, len(sweep.values) - 1)] for name, sweep in plan.study.sweeps.items()},
            "da_propagation": {"current": 24.0, "original": 6.0}}


def test_the_study_covers_every_claim_with_runnable_configs():
    study = claims_list.study()
    assert [c.name for c in study.claims] == ["difnet_vs_simdeeplab", "walks", "pdn", "da_loss", "weighting",
                                              "propagation", "transitions"]
    runs, miou = study.runs, "val/miou"
    protocol = {c.name: {r.modifiers for r in study.runs_of([c])} for c in study.claims}
    assert protocol == {"difnet_vs_simdeeplab": {claims.SCRATCH, claims.PRETRAINED}, "walks": {claims.SCRATCH},
                        "transitions": {claims.SCRATCH}, "pdn": {claims.PRETRAINED}, "da_loss": {claims.PRETRAINED},
                        "weighting": {claims.PRETRAINED}, "propagation": {claims.PRETRAINED}}
    pairs = {(runs[b].variant, runs[w].variant, runs[b].modifiers, runs[w].modifiers)
             for b, _, w, _, _ in _pairs(_claim(study, "difnet_vs_simdeeplab"))}
    assert pairs == {("difnet18", "simdeeplab18", claims.SCRATCH, claims.SCRATCH),
                     ("difnet18", "simdeeplab18", claims.PRETRAINED, claims.PRETRAINED)}
    # the fine-tuned pair's lr grouping chosen the same way for both (item 1.7), the row named for what it is
    assert runs["difnet18_pretrained"].sweeps == ("difnet_lr",) and runs["simdeeplab18_pretrained"].sweeps == (
        "simdeeplab_lr",)
    assert study.sweeps["difnet_lr"].values == (1.0, 10.0) and "main.sh" in study.sweeps["difnet_lr"].label(10.0)
    assert "authors' released code" in _claim(study, "difnet_vs_simdeeplab").comparisons[1].statement
    pdn = "pdn18_{}_pretrained".format
    assert _pairs(_claim(study, "pdn")) == {
        (pdn("24nb_1m"), miou, pdn("8nb_1m"), miou, False),
        (pdn("8nb_1m"), miou, "simdeeplab18_pretrained", miou, False),
        (pdn("24nb_2m"), miou, pdn("24nb_1m"), miou, True),
        *[(pdn("24nb_1m"), f"val/miou_layer{t + 1}", pdn("24nb_1m"), f"val/miou_layer{t}", False) for t in (1, 2, 3)]}
    assert all(runs[pdn(v)].sweeps == ("pdn_init", "pdn_layer_loss_weight", "pdn_lr")
               for v in ("8nb_1m", "24nb_1m", "24nb_2m"))
    # PDN's lr grouping is chosen as Sim-DeepLab's, after its init and layer-loss weight: the baseline row is fair
    assert study.sweeps["pdn_lr"].base.sweeps == ("pdn_init", "pdn_layer_loss_weight")
    assert study.sweeps["pdn_lr"].values == study.sweeps["simdeeplab_lr"].values
    # the sweeps of issue 28: grids whose old selections were edges reach further; R includes a cell-preserving set
    sweeps = study.sweeps
    assert sweeps["pdn_init"].values == ("caffe_std", "literal_variance")
    assert sweeps["pdn_layer_loss_weight"].base.sweeps == ("pdn_init",)
    assert min(sweeps["pdn_layer_loss_weight"].values) < 0.1
    assert min(sweeps["da_beta_neighbor"].values) < 0.03 and min(sweeps["da_beta_signal"].values) < 0.3
    assert (3, (4, 8), 6) in sweeps["da_rates"].values and (8, (12, 24), 16) in sweeps["da_rates"].values
    assert all("da_rates" in sweeps[f"da_beta{s}"].base.sweeps for s in ("", "_none", "_signal", "_neighbor"))
    da = "deeplabv3plus18_affinity_{}_pretrained".format
    assert [r.name for r in runs.values() if r.propagate] == [da("sqrt")]
    assert {runs[da(w)].sweeps[-1] for w in claims.WEIGHTINGS} == {"da_beta", "da_beta_none", "da_beta_signal",
                                                                   "da_beta_neighbor"}
    for sweep in sweeps.values():
        assert set(claims.HELD_OUT) <= set(sweep.run(sweep.values[0]).overrides)
    # both readings of the self term and of T in the propagation rows; da_loss with no pass and one pass
    rows = _claim(study, "propagation").comparisons
    assert len(rows) == 2 * 2 * 4 and all(c.paired for c in rows)
    assert {(c.better.reading, c.better.passes, c.worse.passes) for c in rows if "T = 1 > T = 0" in c.statement} == {
        (term, a, b) for term in ("current", "original") for a, b in ((1, 0), (2, 1))}
    assert [c.better.passes for c in _claim(study, "da_loss").comparisons] == [None, 1, 1]
    # every run and sweep run is a config the project accepts
    plan = claims.Plan(study, study.claims, 10, 1, "/r")
    selected = _select_all(plan)
    for run in [*runs.values(), *[s.run(s.values[0]) for s in sweeps.values()]]:
        check_config(_config(claims.make_job(run, 0, 10, "/r", selected, plan.short)))


def test_the_commands_set_the_planned_values(monkeypatch):
    """Each job's `python -m experiments.voc` arguments, parsed as that command parses them, give the config the
    study plans (and the skip check compares with): arg, steps, seed and every override, nested rates included."""
    study = claims_list.study()
    plan = claims.Plan(study, study.claims, 30, 2, "/runs")
    selected = _select_all(plan)
    jobs = [job for sweep in plan.sweeps for job in plan.sweep_jobs(sweep, selected)] + plan.claim_jobs(None, selected)
    assert all(job.workdir for job in jobs)
    assert len(jobs) == sum(len(s.values) for s in study.sweeps.values()) + 2 * len(study.runs)
    assert any("affinity_rates=(6,(8,16),12)" in " ".join(job.train_argv()) for job in jobs)
    for job in jobs:
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
        flags.DEFINE_string("workdir", None, "", flag_values=values)
        monkeypatch.setattr(sys, "argv", ["prog", *job.train_argv()])  # config_flags reads the overrides there
        values(sys.argv)
        document = json.loads(values.config.to_json_best_effort())
        assert [claims._canonical(claims._saved(document, key)) for key, _ in job.planned()] == \
            [claims._canonical(value) for _, value in job.planned()], job.run.name


def test_unknown_claim_names_the_known_ones():
    study = claims_list.study()
    assert [c.name for c in claims.chosen_claims(study, ["walks", "pdn"])] == ["walks", "pdn"]
    with pytest.raises(ArgumentError, match="'walk' is not a claim.*did you mean 'walks'"):
        claims.chosen_claims(study, ["walk"])


def test_finished_runs_are_skipped_so_that_a_study_resumes(tmp_path):
    plan = _plan(tmp_path, ["walks"])
    full0, full1, dropped0, dropped1 = plan.claim_jobs()
    _fake_run(full0, 0.6)  # finished
    _fake_run(full1, 0.6, trained_to=10, eval_steps=[10])  # stopped half way
    _fake_run(dropped0, 0.5, eval_steps=[10])  # trained to the end, stopped during the final evaluation
    assert [claims.done(job)[0] for job in (full0, full1, dropped0, dropped1)] == [True, False, False, False]
    trainings = []

    def train(job):
        trainings.append(job.workdir)
        if os.path.isdir(job.workdir):  # the resumed run appends its evaluation
            with open(os.path.join(job.workdir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": job.steps, "loss": 0.4}) + "\n" + json.dumps(
                    {"step": job.steps, "val/miou": 0.55, "val/pixel_accuracy": 0.9, "val/iou": {}}) + "\n")
        else:
            _fake_run(job, 0.5)

    claims.execute(plan, train, evaluate=lambda job: pytest.fail("nothing to evaluate"))
    assert trainings == [full1.workdir, dropped0.workdir, dropped1.workdir]
    claims.execute(plan, lambda job: pytest.fail(f"{job.workdir} is finished"), lambda job: pytest.fail("no"))
    plan = _plan(tmp_path / "other", ["walks"])
    with pytest.raises(claims.StudyStopped, match="difnet18_scratch_steps20_seed0 is unfinished"):
        claims.execute(plan, train=lambda job: None, evaluate=lambda job: None)


def test_a_workdir_holding_another_run_is_refused(tmp_path):
    plan = _plan(tmp_path, ["walks"], seeds=1)
    full, dropped = plan.claim_jobs()
    _fake_run(full, 0.6)
    os.makedirs(os.path.dirname(dropped.workdir), exist_ok=True)
    os.rename(full.workdir, dropped.workdir)  # a DifNet with all five walks where walks (1, 3, 5) belong
    with pytest.raises(ConfigError, match=r"model.difnet.walks=\[1, 2, 3, 4, 5\] where the study plans \(1, 3, 5\)"):
        claims.execute(plan, train=lambda job: None, evaluate=lambda job: None)


def _fake_propagation_report(job, heads):
    record = claims.trained(job.workdir)
    with open(claims.propagation_report(record), "w") as f:
        json.dump({"miou": 0.6, "heads": heads}, f)


def test_chained_sweeps_then_lambda_by_evaluation_then_claim_runs_with_both_readings(tmp_path):
    """da_rates selects first; da_beta runs at its selection; the selected held-out run is evaluated with every
    lambda and both self terms and each reading keeps its best lambda; the claim runs are trained, then evaluated at
    those lambdas with the passes of both readings of T; the paired rows judge T against T on the same runs."""
    plan = _plan(tmp_path, ["propagation"], seeds=2)
    assert [s.name for s in plan.sweeps] == ["da_rates", "da_beta"]
    work = plan.work()
    assert [job.run.name for job, _ in work] == [f"da_rates_rates{claims._text(v)}" for v in claims.RATE_CANDIDATES]
    assert all(job.pending == ["da_rates", "da_beta"] for job in plan.claim_jobs())
    trained = []

    def train(job):
        trained.append(job.run.name)
        miou = {"da_rates_rates(6,(8,16),12)": 0.58, "da_beta_beta3.0": 0.57}.get(job.run.name, 0.5)
        _fake_run(job, miou)

    evaluations = []

    def evaluate(job):
        evaluations.append(job.evaluate_argv())
        if "/sweeps/" in job.workdir:  # held out: lambda 24 best for current, 100 for original (mean over T)
            heads = {claims.PropagationSweep.head(t, lam, term): 0.5 + (0.01 if (term, lam) in
                     (("current", 24.0), ("original", 100.0)) else 0) for t in claims.SWEEP_PASSES
                     for lam in claims.PROPAGATION_LAMBDAS for term in ("current", "original")}
        else:
            seed = int(job.workdir[-1])
            heads = {h: 0.6 + 0.001 * int(h.split("_T")[1].split("_")[0]) + 0.002 * seed + (0.1 if "oracle" in h else 0)
                     for h in job.heads}
        _fake_propagation_report(job, heads)

    claims.execute(plan, train, evaluate)
    selected = plan.selected()
    assert selected["da_rates"] == (6, (8, 16), 12) and selected["da_beta"] == 3.0
    assert selected["da_propagation"] == {"current": 24.0, "original": 100.0}
    section = "\n".join(claims_report.sweeps_section(plan, selected))  # 100 is the grid's top: a bound, said so
    assert section.count("(selected; at the edge of its grid: a bound)") == 1 and section.count("(selected)") == 1
    assert "a bound towards no propagation at all" in section
    assert [name for name in trained if name.startswith("da_beta")] == [f"da_beta_beta{b}"
                                                                         for b in claims.BETAS["sqrt"]]
    sweep_flags, *claim_flags = evaluations
    assert "--propagate_lambda=1.5,6,24,100" in sweep_flags and sweep_flags[0].endswith(
        "da_beta_beta3.0_rates(6,(8,16),12)_steps20_seed0")
    assert claim_flags[0][1:] == ["--propagate=1,2,3,4,10,11", "--propagate_oracle=1,2,3,4,10,11",
                                  "--propagate_lambda=24,100", "--propagate_self_term=current,original"]
    rows = {row.comparison.key: row for row in claims_report.rows(plan) if row.claim.name == "propagation"}
    row = rows["own_T3_T1_current_T passes"]
    assert row.verdict == "yes" and "paired t, n 2 / 2" in row.interval  # +0.002 at every seed: a paired yes
    assert rows["oracle_T10_original_T passes after a first"].verdict == "yes"
    row = rows["own_T1_T0_current_T passes"]  # no propagation: the fake runs' val/miou, 0.50 at both seeds
    assert row.ours == "60.20 ± 0.14 (n = 2) vs 50.00 ± 0.00 (n = 2)" and row.verdict == "not testable"


def test_the_report_has_intervals_not_run_rows_changes_and_edges(tmp_path):
    plan = _plan(tmp_path, None)
    text = claims_report.markdown(plan, "python -m experiments.claims --steps=20 --seeds=2", "an estimate",
                                  date="2026-01-02")
    lines = text.splitlines()
    start = lines.index(claims_report.table(plan, [])[0]) + 2
    table = [line for line in lines[start:] if line.startswith("|")][:sum(len(c.comparisons)
                                                                             for c in plan.study.claims)]
    assert all("| not run |" in line for line in table)
    assert "2026-01-02" in text and "0 of " in text and "No verdict has moved yet" in text
    for job, miou in zip(_plan(tmp_path, ["walks"]).claim_jobs(), (0.60, 0.62, 0.50, 0.51)):
        _fake_run(job, miou)
    for job, miou in zip(_plan(tmp_path, ["difnet_vs_simdeeplab"]).claim_jobs()[:4], (0.60, 0.61, 0.60, 0.62)):
        if not os.path.isdir(job.workdir):
            _fake_run(job, miou)
    rows = {row.comparison.key: row for row in claims_report.rows(plan)}
    assert rows["walks"].verdict == "yes" and rows["walks"].interval.startswith("+10.50 [")
    assert rows["walks"].interval.endswith("(Welch, n 2 / 2)")
    assert rows["difnet_scratch"].verdict == "within noise"  # 61.00 ± 1.41 vs 61.00 ± 1.41
    assert rows["pdn_24_8"].verdict == "not run"
    changed = claims_report.changes(list(rows.values()))
    assert changed == [f"- DifNet-18 > Sim-DeepLab-18, from scratch: yes -> **within noise** "
                       f"({rows['difnet_scratch'].claim.changes}).",
                       f"- {rows['walks'].comparison.statement}: within noise -> **yes** "
                       f"({rows['walks'].claim.changes})."]
    interim = dataclasses.replace(rows["walks"], complete=False)  # e.g. 1 of 5 seeds: an interim figure
    assert claims_report.changes([interim]) == [
        "- No verdict has moved yet among the rows whose planned seeds are all finished.",
        "- 1 row(s) with a different verdict but fewer seeds finished than planned: left out until their seeds are in."]
    # a selection at the end of its grid is called a bound
    for job, miou in zip(plan.sweep_jobs(plan.study.sweeps["difnet_lr"]), (0.5, 0.6)):
        _fake_run(job, miou)
    for job, miou in zip(plan.sweep_jobs(plan.study.sweeps["pdn_init"]), (0.5, 0.6)):
        _fake_run(job, miou)
    for job, miou in zip(plan.sweep_jobs(plan.study.sweeps["pdn_layer_loss_weight"]), (0.6, 0.5, 0.5, 0.5, 0.5)):
        _fake_run(job, miou)
    section = "\n".join(claims_report.sweeps_section(plan, plan.selected()))
    assert "| 0.01 | 60.00 | yes (at the edge of its grid: a bound) |" in section
    assert "10.0 (one rate, x10 everywhere: main.sh) | 60.00 | yes |" in section


def test_the_ledger_keeps_finished_runs_and_restores_them(tmp_path):
    plan = _plan(tmp_path, ["walks"], seeds=2)
    ledger = claims.Ledger(str(tmp_path / "ledger.jsonl"))
    for job, miou in zip(plan.claim_jobs(), (0.60, 0.62, 0.50, 0.51)):
        _fake_run(job, miou)
        if job.seed == 0:
            ledger.add(job, plan.runs_dir)
    assert len(ledger.entries()) == 2
    assert ledger.update(plan.ledger_jobs(), plan.runs_dir) == 4  # the runs finished outside the study too, once each
    assert len(ledger.entries()) == 4 and "difnet18_scratch_steps20_seed0" in ledger.entries()
    before = [row.interval for row in claims_report.rows(plan)]
    fresh = _plan(tmp_path / "fresh", ["walks"], seeds=2)
    assert ledger.restore(fresh.runs_dir) == 4 and ledger.restore(fresh.runs_dir) == 0
    assert all(claims.done(job) == (True, True) for job in fresh.claim_jobs())
    assert [row.interval for row in claims_report.rows(fresh)] == before


def test_dry_run_lists_the_runs_and_starts_nothing(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "claims.md"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.claims", "--dry_run", "--only=difnet_vs_simdeeplab,pdn", "--seeds=2",
         "--steps=10", "--scratch_steps=20", f"--runs_dir={runs}", f"--out={out}",
         f"--ledger={tmp_path / 'ledger.jsonl'}"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line for line in lines if "python -m experiments.voc" in line]
    # the sweeps without a dependency (init, both lr groupings: 2 each), DifNet and Sim-DeepLab from scratch
    assert len(commands) == 3 * 2 + 2 * 2
    assert sum("waits for sweep(s)" in line for line in lines) == 5 + 2 + 2 * 2 + 3 * 2  # llw; PDN lr; fine-tuned; PDN
    assert any("Estimated training time" in line for line in lines)
    assert f"--workdir={runs}/difnet18_scratch_steps20_seed1" in result.stdout  # --scratch_steps
    assert not runs.exists() and not out.exists()


def test_the_report_rewrites_only_the_table_between_the_markers_of_a_page(tmp_path):
    entry = claims_runner
    page = tmp_path / "claims.md"
    page.write_text(f"# Claims\n\nintro\n\n{entry.TABLE_BEGIN}\nold table\n{entry.TABLE_END}\n\nwhat was checked\n")
    assert entry.splice_table(str(page), ["| new | table |"])
    assert page.read_text() == (f"# Claims\n\nintro\n\n{entry.TABLE_BEGIN}\n| new | table |\n{entry.TABLE_END}\n\n"
                                "what was checked\n")
    other = tmp_path / "other.md"
    other.write_text("no markers\n")
    assert not entry.splice_table(str(other), ["x"]) and other.read_text() == "no markers\n"


def test_the_runner_runs_two_jobs_at_once_on_their_own_cores_and_keeps_them_in_the_ledger(tmp_path, monkeypatch):
    """experiments.claims' scheduler: jobs start as slots free up (each slot its share of the cores), a finished
    sweep unlocks the runs waiting for it, every finished run goes to the ledger."""
    plan = _plan(tmp_path, ["difnet_vs_simdeeplab"], seeds=1)
    calls = []

    def fake_module(module, argv, log_path, cores, cache_dir, cwd):
        workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
        calls.append((os.path.basename(workdir), tuple(cores)))
        job = next(j for j in plan.all_jobs() if j.workdir == workdir)
        _fake_run(job, 0.7 if "lrs10.0" in workdir else 0.6)

    monkeypatch.setattr(claims_runner.os, "sched_getaffinity", lambda pid: {0, 1})
    ledger = claims.Ledger(str(tmp_path / "ledger.jsonl"))
    claims_runner.execute(plan, ledger, 2, REPO, run=fake_module)
    assert {cores for _, cores in calls} == {(0,), (1,)}
    assert len(calls) == 4 + 4  # the two lr sweeps of 2 values, then 2 runs from scratch and 2 fine-tuned
    assert plan.selected() == {"difnet_lr": 10.0, "simdeeplab_lr": 10.0}
    assert "difnet18_pretrained_lrs10.0_steps20_seed0" in [name for name, _ in calls]
    assert len(ledger.entries()) == 8 and not plan.work()
    with pytest.raises(ArgumentError, match="--parallel=3 is invalid: expected 1 to 2"):
        claims_runner.core_shares(3)
