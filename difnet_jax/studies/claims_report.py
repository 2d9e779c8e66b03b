"""The claims study's judgement and report: docs/results/claims.md and the README's table.

Each comparison's verdict comes from a two-sided 95 % interval of the difference (`significance`): Welch's for two
run groups, the paired t interval for two metrics of the same runs; "yes" when it lies wholly in the paper's
direction, "no" when wholly against it, "within noise" otherwise, "unresolved (n = 1)" with a single run on a side,
"not testable" where a side has no variance (a model predicting a constant). A claim without finished runs is "not
run": the report never holds a number that was not measured.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

from difnet_jax.studies import compare, significance
from difnet_jax.studies.claims import (
    HELD_OUT,
    PROPAGATION_LAMBDAS,
    PROTOCOLS,
    SWEEP_PASSES,
    Claim,
    Comparison,
    Job,
    Plan,
    Selected,
    _text,
    read_record,
)

# The verdicts of the table of 2026-11-29 (3 seeds, the old rule: Delta against the larger std), by comparison key.
PREVIOUS_DATE = "2026-11-29"
PREVIOUS_VERDICTS = {
    "difnet_scratch": "yes", "difnet_pretrained": "no", "walks": "within noise", "pdn_24_8": "within noise",
    "pdn_8_sim": "within noise", "pdn_2m_1m": "yes (spread unknown)", "pdn_layer2": "within noise",
    "pdn_layer3": "within noise", "pdn_layer4": "within noise", "da_loss": "within noise",
    "weighting_sqrt_neighbor": "yes (spread unknown)", "weighting_neighbor_signal": "no (spread unknown)",
    "weighting_signal_none": "yes (spread unknown)", "own_T1_T0_current_T passes": "no",
    "own_T3_T1_current_T passes": "no", "own_T10_T3_current_T passes": "no",
    "oracle_T10_current_T passes": "yes", "transitions": "within noise",
}


@dataclasses.dataclass
class Row:
    claim: Claim
    comparison: Comparison
    ours: str
    interval: str
    verdict: str
    note: str
    complete: bool = True  # every planned seed finished on both sides


def _group(jobs: Sequence[Job], load_config) -> tuple[compare.SeedGroup | None, str]:
    records = [r for r in (read_record(job, load_config) for job in jobs) if r is not None]
    if not records:
        return None, ""
    groups = compare.seed_groups(records)
    note = "" if len(groups) == 1 else (
        "the seeds' configs differ beyond train.seed (" + "; ".join(
            f"seeds {', '.join(map(str, g.seeds))}" for g in groups) + "): pooled")
    return compare.SeedGroup(jobs[0].run.name, records), note


def _cell(group: compare.SeedGroup, key: str) -> str:
    mean, std = group.mean_std(key)
    return f"{100 * mean:.2f} ± {'n/a' if std is None else f'{100 * std:.2f}'} (n = {group.n})"


def interval(comparison: Comparison, a: compare.SeedGroup, key_a: str, b: compare.SeedGroup,
             key_b: str) -> significance.Interval:
    """The comparison's 95 % interval: paired over the seeds both metrics have, else Welch's."""
    if comparison.paired:
        return significance.paired(a.values(key_a), b.values(key_b))
    return significance.welch(a.values(key_a), b.values(key_b))


def rows(plan: Plan) -> list[Row]:
    """One row per comparison of every claim of the study, from the finished runs at the plan's budget."""
    selected = plan.selected()
    groups = {run.name: _group(plan.claim_jobs([run], selected), plan.load_config)
              for run in plan.study.runs_of(plan.study.claims)}
    return [_row(claim, comp, groups, selected, plan) for claim in plan.study.claims for comp in claim.comparisons]


def _row(claim: Claim, comp: Comparison, groups, selected: dict[str, Any], plan: Plan) -> Row:
    (a, note_a), (b, note_b) = groups[comp.better.run], groups[comp.worse.run]
    keys = [comp.better.metric(selected), comp.worse.metric(selected)]
    missing = [q.text() for q, g, key in zip((comp.better, comp.worse), (a, b), keys)
               if g is None or key is None or not all(key in run.evals[-1] for run in g.runs)]
    if missing:
        return Row(claim, comp, "not run", "", "not run", "missing: " + ", ".join(dict.fromkeys(missing)))
    result = interval(comp, a, keys[0], b, keys[1])
    verdict = significance.verdict(result)
    notes = [f"{'paired' if comp.paired else 'two groups'}"]
    if comp.at_least:
        notes.append("a >= claim: 'within noise' agrees with the paper")
    complete = all(g.n >= plan.seeds for g in (a, b))
    if not complete:
        notes.append(f"fewer seeds finished than planned ({plan.seeds})")
    notes += [n for n in dict.fromkeys((note_a, note_b)) if n]
    if verdict in ("no", "within noise", "not testable"):
        notes.append("what was checked: docs/claims.md")
    return Row(claim, comp, f"{_cell(a, keys[0])} vs {_cell(b, keys[1])}", result.text(), verdict, "; ".join(notes),
               complete)


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|")


def table(plan: Plan, all_rows: Sequence[Row] | None = None) -> list[str]:
    """The claims table (Markdown lines), as docs/results/claims.md and the README show it."""
    lines = ["| claim | paper's figure | ours: a vs b (mean ± std, n) | Δ [95 % CI] (test, n a / b) | verdict | note |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows(plan) if all_rows is None else all_rows:
        lines.append(f"| {_cell_text(row.comparison.statement)} | {_cell_text(row.comparison.paper)} "
                     f"({row.claim.source}) | {row.ours} | {row.interval} | {row.verdict} | {_cell_text(row.note)} |")
    return lines


def changes(all_rows: Sequence[Row]) -> list[str]:
    """Each verdict that moved since PREVIOUS_DATE, with what changed in the claim's runs; a row whose planned seeds
    are not all finished is an interim figure, counted but not listed."""
    lines, interim = [], 0
    for row in all_rows:
        before = PREVIOUS_VERDICTS.get(row.comparison.key)
        if before is None or row.verdict == "not run" or row.verdict == before:
            continue
        if not row.complete:
            interim += 1
            continue
        lines.append(f"- {row.comparison.statement}: {before} -> **{row.verdict}** ({row.claim.changes}).")
    if not lines:
        lines = ["- No verdict has moved yet among the rows whose planned seeds are all finished."]
    if interim:
        lines.append(f"- {interim} row(s) with a different verdict but fewer seeds finished than planned: left out "
                     "until their seeds are in.")
    return lines


def _overrides_text(run, selected: dict[str, Any]) -> str:
    def override(key, value) -> str:
        if not isinstance(value, Selected):
            return f" `--config.{key}={_text(value)}`"
        if value.sweep in selected:
            return f" `--config.{key}={_text(selected[value.sweep])}` (selected by {value.sweep})"
        return f" `--config.{key}=` the value {value.sweep} selects (not run yet)"
    return "".join(override(k, v) for k, v in run.overrides)


def sweeps_section(plan: Plan, selected: dict[str, Any]) -> list[str]:
    lines = ["## Hyper-parameters chosen on held-out train data", "",
             f"Each value trained once (seed 0) on `{HELD_OUT[0][1]}` and evaluated on `{HELD_OUT[1][1]}` "
             "(never the validation split); the claim runs use the value of the best held-out final mIoU. A selection "
             "at the end of a numeric grid is a bound, not an optimum, and says so.", "",
             "| sweep | run | value | held-out mIoU (%) | selected |", "| --- | --- | --- | ---: | --- |"]
    for sweep in plan.study.sweeps_of(plan.study.runs.values()):
        for value, miou in plan.sweep_results(sweep, selected):
            mark = ""
            if selected.get(sweep.name) == value:
                numeric = all(isinstance(v, (int, float)) for v in sweep.values) and len(sweep.values) > 2
                edge = numeric and value in (min(sweep.values), max(sweep.values))
                mark = "yes" + (" (at the edge of its grid: a bound)" if edge else "")
            run = f"{sweep.base.label} (`{sweep.base.arg}`{_overrides_text(sweep.base, selected)})"
            lines.append(f"| {sweep.name} | {run} | {sweep.label(value)} | "
                         f"{'not run' if miou is None else f'{100 * miou:.2f}'} | {mark} |")
    lines += ["", f"Propagation (`da_propagation`): the held-out run of `{plan.study.propagation.source}`'s selection "
              f"evaluated with lambda in {list(PROPAGATION_LAMBDAS)} and both self terms; mean held-out mIoU (%) over "
              f"T = {', '.join(map(str, SWEEP_PASSES))} passes; each self term keeps its best lambda.", ""]
    results = plan.propagation_results(selected)
    if results is None:
        return lines + ["Not run yet.", ""]
    lines += ["| self term | " + " | ".join(f"lambda {lam:g}" for lam in PROPAGATION_LAMBDAS) + " |",
              "| --- |" + " ---: |" * len(PROPAGATION_LAMBDAS)]
    edges = (min(PROPAGATION_LAMBDAS), max(PROPAGATION_LAMBDAS))
    mark = lambda lam: " (selected; at the edge of its grid: a bound)" if lam in edges else " (selected)"  # noqa: E731
    for term, lam_selected in selected["da_propagation"].items():
        cells = [f"{100 * results[term, lam]:.2f}" + (mark(lam) if lam == lam_selected else "")
                 for lam in PROPAGATION_LAMBDAS]
        lines.append(f"| {term} | " + " | ".join(cells) + " |")
    if max(PROPAGATION_LAMBDAS) in selected["da_propagation"].values():
        lines += ["", "A lambda at the top of the grid is a bound towards no propagation at all: as lambda grows the "
                  "self term dominates Eq. 6 and a pass returns its input (either reading), so held-out mIoU rising "
                  "with lambda says propagating with the model's own affinity lowers it at every lambda tried."]
    return lines + [""]


def progress(plan: Plan) -> str:
    """'N of M trainings finished (sweeps a of b)'."""
    sweep_jobs = [job for job in plan.all_jobs() if "/sweeps/" in (job.workdir or "")]
    claim_jobs = plan.claim_jobs()
    finished = lambda jobs: sum(bool(job.workdir) and read_record(job, plan.load_config) is not None  # noqa: E731
                                for job in jobs)
    return (f"{finished(sweep_jobs) + finished(claim_jobs)} of {len(sweep_jobs) + len(claim_jobs)} planned trainings "
            f"finished (sweeps {finished(sweep_jobs)} of {len(sweep_jobs)}, claim runs {finished(claim_jobs)} of "
            f"{len(claim_jobs)}; runs waiting for a selection are counted once they are planned)")


def markdown(plan: Plan, command: str, estimate: str, date: str | None = None, runs_dir: str | None = None) -> str:
    """docs/results/claims.md: the claims table, what changed, the protocols and runs, the sweeps, the budget."""
    date = date or datetime.date.today().isoformat()
    selected = plan.selected()
    all_rows = rows(plan)
    lines = [
        "# The papers' claims, in direction, on synthetic_shapes", "",
        f"Written on {date}. Regenerate it (trains what is missing, skips the finished runs; `--report_only` only "
        "rewrites this file from the finished runs) with", "", f"    {command}", "",
        f"Budget: {plan.steps} steps a fine-tuning run, {plan.scratch_steps} a run from scratch, seeds "
        f"0..{plan.seeds - 1}, depth 18, the synthetic scenes (81-px crops, width-16 ResNets); {estimate}. "
        f"{progress(plan)}. A synthetic benchmark is a smoke test of learning, not a reproduction: these are the "
        "papers' claims in direction under conditions like the papers' (DESIGN.md section 7).", "",
        "Ours: final validation mIoU (%), mean ± sample std (n - 1) over the seeds, n runs. Δ: mean(a) - mean(b) in "
        "points with its two-sided 95 % confidence interval: Welch's for two groups of runs, the paired t interval "
        "for two metrics of the same runs. Verdict: 'yes' when the interval lies wholly in the paper's direction, "
        "'no' when wholly against it, 'within noise' otherwise; 'unresolved (n = 1)' with one run on a side; 'not "
        "testable' where a side has no variance (every run predicts the same); 'not run': no finished run (no number "
        "is ever filled in otherwise).", "",
        *table(plan, all_rows), "",
        f"## What changed since the last table ({PREVIOUS_DATE})", "",
        *changes(all_rows), "",
        "## Claims, protocols and runs", "",
    ]
    for claim in plan.study.claims:
        runs = plan.study.runs_of([claim])
        lines.append(f"- **{claim.name}**: {claim.title} ({claim.source}). "
                     + "; ".join(f"{run.label} ({PROTOCOLS[run.modifiers]}): `{run.arg}`"
                                 + _overrides_text(run, selected) for run in runs)
                     + (f". {claim.note}" if claim.note else "."))
    lines += ["", *sweeps_section(plan, selected),
              f"Workdirs: `{runs_dir or plan.runs_dir}/NAME[_SELECTED]_stepsN_seedS` (sweeps under `sweeps/`), made "
              "by the command above; the finished runs' configs and final evaluations are kept in "
              "docs/results/claims_runs.jsonl, from which the study restores a missing workdir.", ""]
    return "\n".join(lines)

