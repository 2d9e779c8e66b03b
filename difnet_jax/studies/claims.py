"""Each paper's claims, in direction, on the embedded data (DESIGN.md section 7; issues 21 and 28): the study's runs,
which are finished, and the hyper-parameters chosen on held-out train data. `claims_report` judges and writes it.

  python -m experiments.claims --dry_run         # the runs and the estimated CPU time, nothing started
  python -m experiments.claims                   # every claim, 5 seeds, two trainings at once on 2 cores

`claims_list.study()` joins the runs and sweeps here with the claims there; each claim is a list of `Comparison`s,
"a > b" between two `Quantity`s (a run group's final `val/<metric>`), read against the paper's figures. The two
protocols:
- from scratch, `VARIANT,synthetic`: DifNet and Sim-DeepLab, as DifNet's paper trains them (Sec. 5.1: "from scratch"),
  so its Table 1 and its walk ablation are judged in its own protocol; DifNet's affinity-supervised transitions (the
  project's own question) against the same DifNet runs.
- pretrained, `VARIANT,synthetic,pretrained`: the fine-tuning methods, PDN with its DeepLab baseline (Sim-DeepLab,
  DeepLab-v2 without CRF) and DeepLabv3+ with and without Dilated Affinity, from the synthetic ImageNet as their
  papers fine-tune from ImageNet; and DifNet against Sim-DeepLab fine-tuned, the protocol of the DifNet authors'
  released code (`main.py` loads torchvision's ImageNet weights into both ResNets).
Every run is at depth 18 (the CPU's budget), seeds 0..n-1 (5 by default: every claim row).

Hyper-parameters the papers chose by cross-validation are chosen on held-out *train* data (`HELD_OUT`: the first 90 %
of the train split trains, the last 10 % evaluates; never the validation split). A `Sweep` trains one seed per value
and the claim runs use the value of the best held-out final mIoU (`Selected`); a sweep may itself use another's
selection (`da_beta` runs at the selected rates). The sweeps (issue 28, section 1):
- `da_rates`, Dilated Affinity's R: "R = {8, (12, 24), 16}" was chosen on validation results (DA Table 2); the
  candidates are the pixel-scaled set of the `synthetic` modifier (3, (4, 8), 6) (0.75 to 2 stride-4 decoder cells),
  a middle set and the paper's pixels (8, (12, 24), 16), which keep the paper's 2 to 6 decoder cells.
- `da_beta`, `da_beta_<weighting>`: the loss weight beta per weighting scheme, as DA Table 1's protocol.
- `da_propagation`: "lambda is a weight parameter whose value is selected by cross-validation" (Sec. 3.3) and the
  reading of Eq. 6's self term (`affinity.SELF_TERMS`): the held-out run of `da_beta`'s selection is evaluated with
  every lambda of `PROPAGATION_LAMBDAS` and both self terms, and each reading keeps the lambda of its best mean
  held-out mIoU over T = 1, 3, 10 passes (evaluations, no training).
- `pdn_init`: PDN Sec. 4, "randomly initialized from a Gaussian distribution with the mean 0 and the variance 0.01"
  (`pdn.INIT_STDS`: std 0.01 as Caffe's filler, or 0.1 as written), under the pretrained protocol PDN's claims use.
- `pdn_layer_loss_weight` at the selected init, on 24NB-1M (8NB and 2M use it).
- `difnet_lr`, `simdeeplab_lr`: the DifNet authors' `main.sh` trains every parameter in one SGD group (2.5e-4 x 10,
  `LambdaLR(lambda step: 10 * poly)`), the fine-tuning protocol gives backbones x1 and new layers x10: the grouping is
  chosen on held-out data the same way for DifNet and Sim-DeepLab (`train.pretrained_lr_scale` 1 or 10).
- `pdn_lr`: the same choice for PDN (24NB-1M at the selected init and layer-loss weight; 8NB and 2M use it), so
  "PDN > its DeepLab baseline" compares the two each at its own held-out grouping, not Sim-DeepLab's selected one
  against PDN's default.

A run is finished when its metrics.jsonl holds the evaluation at config.train.num_steps (and, for the runs evaluated
with affinity propagation, the propagation report holds the heads the selection asks for): the study skips it, so an
interrupted study resumes. Finished runs are also written to a ledger (`Ledger`, docs/results/claims_runs.jsonl,
committed): the config and final evaluation of each, from which a later session's empty runs folder is restored, so
the study goes on across machines and sessions.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from difnet_jax import trained_run
from difnet_jax.backbone_weights import pretraining
from difnet_jax.evaluation.report import report_basename
from difnet_jax.models import affinity
from difnet_jax.run_log import MetricsLog
from difnet_jax.studies import compare
from difnet_jax.user_errors import ArgumentError, ConfigError

log = logging.getLogger(__name__)

SCRATCH = "synthetic"
PRETRAINED = "synthetic,pretrained"
PROTOCOLS = {SCRATCH: "from scratch", PRETRAINED: "pretrained"}
CONFIG_FILE = "experiments/configs/voc.py"  # any dataset file: `synthetic` swaps in synthetic_shapes
HELD_OUT = (("data.train_split", "train[:90%]"), ("data.eval_split", "train[90%:]"))
SEEDS = 5
# DA Tables 3-4's T = 0, 1, 3, 10 under both readings of what T counts (`T_READINGS`): every pass count either needs.
PROPAGATION_PASSES = (1, 2, 3, 4, 10, 11)
T_READINGS = {"T passes": {0: 0, 1: 1, 3: 3, 10: 10}, "T passes after a first": {0: 1, 1: 2, 3: 4, 10: 11}}
SWEEP_PASSES = (1, 3, 10)  # the passes the lambda sweep averages over
PROPAGATION_LAMBDAS = (1.5, 6.0, 24.0, 100.0)  # around the paper's 6
WEIGHTINGS = ("none", "signal", "neighbor", "sqrt")
# Dilated Affinity's beta, held-out sweeps: around the paper's 1.2 (sqrt) and 0.25 (neighbor). The last study selected
# neighbor 0.03 and signal 0.3, each at the edge of its grid: their grids reach lower (issue 28, item 1.6). The
# neighbor scheme's weights freq(n8)/freq(n_k) span 1 to 172,649 on the synthetic scenes (sqrt's 1 to 416).
# sqrt selected 0.3, the lower edge of (0.3, 1.2, 3.0), at the selected rates (2026-12-07): sqrt's and none's grids
# reach 0.03 too.
BETAS = {"sqrt": (0.03, 0.1, 0.3, 1.2, 3.0), "none": (0.03, 0.1, 0.3, 1.2, 3.0), "signal": (0.03, 0.1, 0.3, 1.2, 3.0),
         "neighbor": (0.003, 0.01, 0.03, 0.1, 0.3, 1.2)}
RATE_CANDIDATES = ((3, (4, 8), 6), (6, (8, 16), 12), (8, (12, 24), 16))  # pixels; module docstring
LAYER_LOSS_WEIGHTS = (0.01, 0.03, 0.1, 0.3, 1.0)  # the last study's 0.1 was the grid's edge
LR_GROUPINGS = (1.0, 10.0)  # train.pretrained_lr_scale: backbones x1 (new layers x10), or one rate x10 everywhere
# Time estimates where no finished run of a variant was measured (DifNet-18's synthetic step, 2 threads: 0.33 s).
DEFAULT_SECONDS_PER_STEP = 0.6
SECONDS_PER_RUN = 60.0  # process start, data, compilation: not in metrics.jsonl's 'time'
SECONDS_PER_PROPAGATION = 180.0  # experiments.evaluate with the propagation heads over 300 scenes
SECONDS_TO_PRETRAIN = 300.0  # the synthetic ImageNet ResNet-18, once
MIN_STEPS_TO_MEASURE = 100  # shorter runs' time per step is mostly compilation


@dataclasses.dataclass(frozen=True)
class Selected:
    """An override whose value the sweep named `sweep` selects on held-out train data."""

    sweep: str


@dataclasses.dataclass(frozen=True)
class Run:
    """One configuration of the study, trained once per seed: `VARIANT,MODIFIERS` and `--config.KEY=VALUE` overrides."""

    name: str  # the workdir's stem
    label: str
    variant: str
    modifiers: str  # SCRATCH or PRETRAINED
    overrides: tuple[tuple[str, Any], ...] = ()  # (key under config, value or Selected)
    propagate: bool = False  # evaluated after training with own and ground-truth affinity propagation

    @property
    def arg(self) -> str:
        return f"{self.variant},{self.modifiers}"

    @property
    def sweeps(self) -> tuple[str, ...]:
        return tuple(value.sweep for _, value in self.overrides if isinstance(value, Selected))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A hyper-parameter the paper cross-validated: `base` trained on HELD_OUT with each value of `key`, one seed."""

    name: str
    short: str  # the key's name in workdir names ("beta")
    key: str
    values: tuple[Any, ...]
    base: Run
    labels: tuple[tuple[Any, str], ...] = ()  # (value, what it means) where the value alone does not say

    def run(self, value) -> Run:
        return dataclasses.replace(self.base, name=f"{self.name}_{self.short}{_text(value)}",
                                   label=f"{self.base.label}, {self.short} {value}, held out",
                                   overrides=(*self.base.overrides, (self.key, value), *HELD_OUT), propagate=False)

    def label(self, value) -> str:
        return dict(self.labels).get(value, _text(value))


@dataclasses.dataclass(frozen=True)
class PropagationSweep:
    """lambda and the self-term reading of Eq. 6, chosen by evaluating the held-out run `source` selects."""

    name: str
    source: str  # the sweep whose selected held-out run is evaluated

    def evaluate_flags(self) -> list[str]:
        return [f"--propagate={','.join(map(str, SWEEP_PASSES))}",
                f"--propagate_lambda={','.join(f'{lam:g}' for lam in PROPAGATION_LAMBDAS)}",
                f"--propagate_self_term={','.join(affinity.SELF_TERMS)}"]

    @staticmethod
    def head(passes: int, lam: float, term: str, oracle: bool = False) -> str:
        """The evaluator's head name (`report.propagation_refinements` with a lambda / self-term sweep)."""
        return f"{'oracle' if oracle else 'propagate'}_T{passes}_lam{lam:g}_{term}"


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A run group's final evaluation metric: `val/miou`, a head's `val/miou_<head>` (PDN's layers); `passes` (with
    `reading`, a self term) is a propagation head at the lambda `da_propagation` selected for that reading."""

    run: str
    key: str = "val/miou"
    passes: int | None = None  # None: `key`; 0: no propagation (`val/miou`); > 0: that many passes
    reading: str = ""  # affinity.SELF_TERMS
    oracle: bool = False

    def metric(self, selected: dict[str, Any]) -> str | None:
        """The metrics.jsonl key; None while the lambda of its reading is unselected."""
        if self.passes is None or self.passes == 0 and not self.oracle:
            return self.key
        lams = selected.get("da_propagation")
        if lams is None:
            return None
        return "val/miou_" + PropagationSweep.head(self.passes, lams[self.reading], self.reading, self.oracle)

    def text(self) -> str:
        return self.run + (f" {self.key}" if self.passes is None else
                           f" {'oracle' if self.oracle else 'own'} {self.passes} pass(es), {self.reading}")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The paper's claim `better` > `worse` (>= when `at_least`), with the paper's figures; `key` is the row's stable
    name (`claims_report.PREVIOUS_VERDICTS`)."""

    key: str
    statement: str
    paper: str
    better: Quantity
    worse: Quantity
    at_least: bool = False

    @property
    def paired(self) -> bool:
        """Two metrics of the same runs (seed i gives both): a paired test; else two groups, Welch's."""
        return self.better.run == self.worse.run


@dataclasses.dataclass(frozen=True)
class Claim:
    name: str  # what --only takes
    title: str
    source: str
    comparisons: tuple[Comparison, ...]
    note: str = ""
    changes: str = ""  # what changed in its runs since the last table (claims_report's "what changed" list)


@dataclasses.dataclass(frozen=True)
class Study:
    runs: dict[str, Run]
    sweeps: dict[str, Sweep]
    propagation: PropagationSweep
    claims: tuple[Claim, ...]

    def runs_of(self, claims: Iterable[Claim]) -> list[Run]:
        """The runs the claims compare, in order of first use."""
        names = dict.fromkeys(q.run for c in claims for comp in c.comparisons for q in (comp.better, comp.worse))
        return [self.runs[name] for name in names]

    def sweeps_of(self, runs: Iterable[Run]) -> list[Sweep]:
        """The sweeps the runs need, each after the sweeps its own base needs."""
        order: dict[str, None] = {}

        def add(name: str) -> None:
            if name == self.propagation.name:
                add(self.propagation.source)
                return
            for dependency in self.sweeps[name].base.sweeps:
                add(dependency)
            order.setdefault(name)

        for run in runs:
            for name in run.sweeps:
                add(name)
            if run.propagate:
                add(self.propagation.name)
        return [self.sweeps[name] for name in order]


def _text(value) -> str:
    """A value as workdir names and command lines write it: 0.3, (1,3,5), True."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _da(weighting: str, beta=None) -> tuple[tuple[str, Any], ...]:
    """A Dilated Affinity run's overrides: the weighting, the loss's mean over pairs, the selected rates, beta."""
    overrides = (("model.deeplabv3plus.affinity_weighting", weighting),
                 ("model.deeplabv3plus.affinity_reduction", "mean_over_pairs"),
                 ("model.deeplabv3plus.affinity_rates", Selected("da_rates")))
    return overrides + ((("model.deeplabv3plus.affinity_beta", beta),) if beta is not None else ())


def runs() -> list[Run]:
    """The study's run configurations (the claims compare them, `claims_list`)."""
    lr = lambda family: (("train.pretrained_lr_scale", Selected(f"{family}_lr")),)  # noqa: E731
    pdn_init = ("model.pdn.init", Selected("pdn_init"))
    pdn_llw = ("model.pdn.layer_loss_weight", Selected("pdn_layer_loss_weight"))
    return [
        Run("difnet18_scratch", "DifNet-18", "difnet18", SCRATCH),
        Run("simdeeplab18_scratch", "Sim-DeepLab-18", "simdeeplab18", SCRATCH),
        Run("difnet18_walks135_scratch", "DifNet-18 without walks 2 and 4", "difnet18", SCRATCH,
            (("model.difnet.walks", (1, 3, 5)),)),
        Run("difnet18_transitions_scratch", "DifNet-18 + affinity on its transitions", "difnet18", SCRATCH,
            (("model.difnet.affinity_on_transitions", True),)),
        Run("simdeeplab18_pretrained", "Sim-DeepLab-18", "simdeeplab18", PRETRAINED, lr("simdeeplab")),
        Run("difnet18_pretrained", "DifNet-18", "difnet18", PRETRAINED, lr("difnet")),
        *[Run(f"pdn18_{n}nb_{m}m_pretrained", f"PDN-18 {n}NB-{m}M", f"pdn18_{n}nb_{m}m", PRETRAINED,
              (pdn_init, pdn_llw, *lr("pdn")))
          for n, m in ((8, 1), (24, 1), (24, 2))],
        Run("deeplabv3plus18_pretrained", "DeepLabv3+-18", "deeplabv3plus18", PRETRAINED),
        *[Run(f"deeplabv3plus18_affinity_{w}_pretrained", f"DeepLabv3+-18 + dilated affinity, {w} weighting",
              "deeplabv3plus18_affinity", PRETRAINED,
              _da(w, Selected("da_beta" if w == "sqrt" else f"da_beta_{w}")), propagate=w == "sqrt")
          for w in WEIGHTINGS],
    ]


def sweeps() -> list[Sweep]:
    """The held-out sweeps (module docstring)."""
    da_base = lambda w: Run(f"da_beta_{w}" if w != "sqrt" else "da_beta",  # noqa: E731
                            f"DeepLabv3+-18 + dilated affinity, {w} weighting", "deeplabv3plus18_affinity", PRETRAINED,
                            _da(w))
    pdn = Run("pdn_layer_loss_weight", "PDN-18 24NB-1M", "pdn18_24nb_1m", PRETRAINED)
    lr_labels = ((1.0, "1.0 (backbones x1, new layers x10)"), (10.0, "10.0 (one rate, x10 everywhere: main.sh)"))
    return [
        Sweep("da_rates", "rates", "model.deeplabv3plus.affinity_rates", RATE_CANDIDATES,
              dataclasses.replace(da_base("sqrt"), name="da_rates", overrides=_da("sqrt")[:2])),
        Sweep("da_beta", "beta", "model.deeplabv3plus.affinity_beta", BETAS["sqrt"], da_base("sqrt")),
        *[Sweep(f"da_beta_{w}", "beta", "model.deeplabv3plus.affinity_beta", BETAS[w], da_base(w))
          for w in WEIGHTINGS if w != "sqrt"],
        Sweep("pdn_init", "init", "model.pdn.init", ("caffe_std", "literal_variance"),
              dataclasses.replace(pdn, name="pdn_init"),
              (("caffe_std", "caffe_std (std 0.01)"), ("literal_variance", "literal_variance (std 0.1)"))),
        Sweep("pdn_layer_loss_weight", "llw", "model.pdn.layer_loss_weight", LAYER_LOSS_WEIGHTS,
              dataclasses.replace(pdn, overrides=(("model.pdn.init", Selected("pdn_init")),))),
        *[Sweep(f"{family}_lr", "lrs", "train.pretrained_lr_scale", LR_GROUPINGS,
                Run(f"{family}_lr", label, f"{family}18", PRETRAINED), lr_labels)
          for family, label in (("difnet", "DifNet-18"), ("simdeeplab", "Sim-DeepLab-18"))],
        Sweep("pdn_lr", "lrs", "train.pretrained_lr_scale", LR_GROUPINGS,
              dataclasses.replace(pdn, name="pdn_lr", overrides=(
                  ("model.pdn.init", Selected("pdn_init")),
                  ("model.pdn.layer_loss_weight", Selected("pdn_layer_loss_weight")))), lr_labels),
    ]


def chosen_claims(study_: Study, only: Sequence[str] | None) -> list[Claim]:
    """The claims `--only` names (all without it); ArgumentError naming an unknown one and the known ones."""
    if not only:
        return list(study_.claims)
    known = [claim.name for claim in study_.claims]
    for name in only:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ArgumentError(f"--only: {name!r} is not a claim of the study{hint}; the claims: {', '.join(known)}")
    return [claim for claim in study_.claims if claim.name in only]


@dataclasses.dataclass
class Job:
    """One training (and evaluation) of a run at one seed; `workdir` None while a sweep it needs is unselected."""

    run: Run
    seed: int
    steps: int
    workdir: str | None
    overrides: tuple[tuple[str, Any], ...]  # resolved: Selected replaced by the sweep's value
    evaluate_flags: tuple[str, ...] = ()  # experiments.evaluate's flags after training; () nothing to evaluate
    heads: tuple[str, ...] = ()  # the heads its propagation report must hold

    @property
    def pending(self) -> list[str]:
        return [value.sweep for _, value in self.overrides if isinstance(value, Selected)]

    def planned(self) -> tuple[tuple[str, Any], ...]:
        """The keys the study sets, as config.json must hold them."""
        return (("arg", self.run.arg), ("train.num_steps", self.steps), ("train.seed", self.seed), *self.overrides)

    def train_argv(self) -> list[str]:
        """`python -m experiments.voc`'s arguments (after the module)."""
        return [f"--config={CONFIG_FILE}:{self.run.arg}", f"--workdir={self.workdir}",
                f"--config.train.num_steps={self.steps}", f"--config.train.seed={self.seed}",
                *[f"--config.{key}={_text(value)}" for key, value in self.overrides]]

    def evaluate_argv(self) -> list[str]:
        return [f"--workdir={self.workdir}", *self.evaluate_flags]


def make_job(run: Run, seed: int, steps: int, runs_dir: str, selected: dict[str, Any], short: dict[str, str],
             folder: str = "") -> Job:
    """The job of `run` at `seed`; its workdir RUNS_DIR[/FOLDER]/NAME[_<short><selected value>...]_steps<N>_seed<S>."""
    overrides, suffix = [], ""
    for key, value in run.overrides:
        if isinstance(value, Selected) and value.sweep in selected:
            suffix += f"_{short[value.sweep]}{_text(selected[value.sweep])}"
            value = selected[value.sweep]
        overrides.append((key, value))
    job = Job(run, seed, steps, None, tuple(overrides))
    if not job.pending:
        job.workdir = os.path.join(runs_dir, folder, f"{run.name}{suffix}_steps{steps}_seed{seed}")
    return job


def _saved(document: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


def _canonical(value):
    return tuple(_canonical(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_workdir(job: Job) -> None:
    """ConfigError when JOB's workdir holds a run of other settings (config.json disagrees with `job.planned()`)."""
    path = os.path.join(job.workdir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    for key, value in job.planned():
        if _canonical(_saved(saved, key)) != _canonical(value):
            raise ConfigError(f"{path} has {key}={_saved(saved, key)!r} where the study plans {value!r}: that "
                              "workdir holds another run; move it away or pass another --runs_dir")


def trained(workdir: str, load_config: compare.ConfigLoader = trained_run.load_config) -> compare.RunRecord | None:
    """The run's record when it is finished: metrics.jsonl holds the evaluation at config.train.num_steps."""
    try:
        record = compare.read_run(workdir, load_config)
    except compare.SkippedRun:
        return None
    return record if record.evals[-1]["step"] >= record.config.train.num_steps else None


def propagation_report(record: compare.RunRecord) -> str:
    """Where `python -m experiments.evaluate --propagate=...` writes the final checkpoint's report."""
    config = record.config
    name = report_basename(config.data.eval_split, config.train.num_steps, (1.0,), False, False,
                           config.data.eval_mode) + "_propagate.json"
    return os.path.join(record.workdir, name)


def _report_heads(record: compare.RunRecord) -> dict[str, float]:
    path = propagation_report(record)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f).get("heads", {})


def done(job: Job, load_config: compare.ConfigLoader = trained_run.load_config) -> tuple[bool, bool]:
    """(trained, evaluated): whether JOB's training is finished and its propagation report holds `job.heads`."""
    if job.workdir is None:
        return False, False
    record = trained(job.workdir, load_config)
    if record is None:
        return False, False
    return True, set(job.heads) <= set(_report_heads(record))


def read_record(job: Job, load_config: compare.ConfigLoader = trained_run.load_config) -> compare.RunRecord | None:
    """JOB's finished run, its propagation report's heads added to the final evaluation as `val/miou_<head>`."""
    record = trained(job.workdir, load_config) if job.workdir else None
    if record is not None and (heads := _report_heads(record)):
        record.evals[-1] = {**record.evals[-1], **{f"val/miou_{name}": value for name, value in heads.items()}}
    return record


class Plan:
    """The jobs of the chosen claims at a budget: their sweeps' first, then the claims' (seeds 0..seeds-1)."""

    def __init__(self, study_: Study, claims: Sequence[Claim], steps: int, seeds: int, runs_dir: str,
                 load_config: compare.ConfigLoader = trained_run.load_config, scratch_steps: int | None = None):
        """`steps` for the fine-tuning runs (and the sweeps), `scratch_steps` (default `steps`) for those trained from
        scratch, which need longer to learn (DifNet-18 at 400 steps: 0.37 mIoU with a std of 0.04; 0.67 at 1,000)."""
        scratch_steps = steps if scratch_steps is None else scratch_steps
        if min(steps, scratch_steps) < 1 or seeds < 1:
            raise ArgumentError(f"--steps={steps}, --scratch_steps={scratch_steps} and --seeds={seeds} must all be at "
                                "least 1")
        self.study, self.claims, self.steps, self.seeds = study_, list(claims), steps, seeds
        self.scratch_steps = scratch_steps
        self.runs_dir, self.load_config = runs_dir, load_config
        self.runs = study_.runs_of(self.claims)
        self.sweeps = study_.sweeps_of(self.runs)
        self.evaluates_propagation = any(run.propagate for run in self.runs)
        self.short = {name: sweep.short for name, sweep in study_.sweeps.items()}

    def sweep_jobs(self, sweep: Sweep, selected: dict[str, Any] | None = None) -> list[Job]:
        selected = self.selected() if selected is None else selected
        return [make_job(sweep.run(v), 0, self.steps_of(sweep.base), self.runs_dir, selected, self.short, "sweeps")
                for v in sweep.values]

    def sweep_results(self, sweep: Sweep, selected: dict[str, Any] | None = None) -> list[tuple[Any, float | None]]:
        """(value, final held-out mIoU or None while unfinished) for each value of the sweep."""
        results = []
        for value, job in zip(sweep.values, self.sweep_jobs(sweep, selected)):
            record = trained(job.workdir, self.load_config) if job.workdir else None
            results.append((value, None if record is None else record.evals[-1]["val/miou"]))
        return results

    def selected(self) -> dict[str, Any]:
        """Each finished sweep's value of the best held-out final mIoU (the first on a tie), a sweep after those its
        base needs; 'da_propagation' -> {self term: lambda} once the propagation sweep is evaluated."""
        chosen: dict[str, Any] = {}
        for sweep in self.study.sweeps_of(self.study.runs.values()):
            results = self.sweep_results(sweep, chosen)
            if all(miou is not None for _, miou in results):
                chosen[sweep.name] = max(results, key=lambda r: r[1])[0]
        if (table := self.propagation_results(chosen)) is not None:
            chosen["da_propagation"] = {term: max(PROPAGATION_LAMBDAS, key=lambda lam: table[term, lam])
                                        for term in affinity.SELF_TERMS}
        return chosen

    def propagation_job(self, selected: dict[str, Any]) -> Job | None:
        """The held-out run of the source sweep's selection, to be evaluated with the lambda / self-term sweep."""
        source = self.study.propagation.source
        if source not in selected:
            return None
        sweep = self.study.sweeps[source]
        job = self.sweep_jobs(sweep, selected)[sweep.values.index(selected[source])]
        job.evaluate_flags = tuple(self.study.propagation.evaluate_flags())
        job.heads = tuple(PropagationSweep.head(t, lam, term) for t in SWEEP_PASSES for lam in PROPAGATION_LAMBDAS
                          for term in affinity.SELF_TERMS)
        return job

    def propagation_results(self, selected: dict[str, Any]) -> dict[tuple[str, float], float] | None:
        """(self term, lambda) -> mean held-out mIoU over SWEEP_PASSES; None until evaluated."""
        job = self.propagation_job(selected)
        if job is None or not done(job, self.load_config)[1]:
            return None
        heads = _report_heads(trained(job.workdir, self.load_config))
        return {(term, lam): sum(heads[PropagationSweep.head(t, lam, term)] for t in SWEEP_PASSES) / len(SWEEP_PASSES)
                for term in affinity.SELF_TERMS for lam in PROPAGATION_LAMBDAS}

    def steps_of(self, run: Run) -> int:
        return self.scratch_steps if run.modifiers == SCRATCH else self.steps

    def claim_jobs(self, runs: Iterable[Run] | None = None, selected: dict[str, Any] | None = None) -> list[Job]:
        selected = self.selected() if selected is None else selected
        jobs = [make_job(run, seed, self.steps_of(run), self.runs_dir, selected, self.short)
                for run in (self.runs if runs is None else runs) for seed in range(self.seeds)]
        for job in jobs:
            if job.run.propagate:
                job.evaluate_flags, job.heads = claim_evaluation(selected.get("da_propagation"))
        return jobs

    def ledger_jobs(self) -> list[Job]:
        """Every job whose finished run the ledger keeps: all jobs and the propagation sweep's evaluation."""
        selected = self.selected()
        job = self.propagation_job(selected) if self.evaluates_propagation else None
        return self.all_jobs() + ([job] if job else [])

    def all_jobs(self) -> list[Job]:
        selected = self.selected()
        return [job for sweep in self.sweeps for job in self.sweep_jobs(sweep, selected)] + self.claim_jobs(None,
                                                                                                           selected)

    def work(self) -> list[tuple[Job, str]]:
        """What can run now, in order: (job, 'train' | 'evaluate'), sweeps (and the propagation sweep's evaluation)
        first, then the claim runs, the shorter first; a job waiting for a selection is left out."""
        selected = self.selected()
        jobs = [job for sweep in self.sweeps for job in self.sweep_jobs(sweep, selected)]
        if self.evaluates_propagation and (job := self.propagation_job(selected)) is not None:
            jobs.append(job)
        jobs += sorted(self.claim_jobs(None, selected), key=lambda job: job.steps)
        ready = []
        for job in jobs:
            if job.workdir is None:
                continue
            is_trained, is_evaluated = done(job, self.load_config)
            if not is_trained:
                ready.append((job, "train"))
            elif not is_evaluated and job.evaluate_flags:
                ready.append((job, "evaluate"))
        return ready


def claim_evaluation(lams: dict[str, float] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(experiments.evaluate flags, heads) of a propagation claim run at the selected lambda per reading; ((), ())
    while unselected (the run trains, its evaluation waits)."""
    if lams is None:
        return (), ()
    passes = ",".join(map(str, PROPAGATION_PASSES))
    flags = (f"--propagate={passes}", f"--propagate_oracle={passes}",
             f"--propagate_lambda={','.join(f'{lam:g}' for lam in dict.fromkeys(lams.values()))}",
             f"--propagate_self_term={','.join(lams)}")
    heads = tuple(PropagationSweep.head(t, lam, term, oracle) for t in PROPAGATION_PASSES
                  for term, lam in lams.items() for oracle in (False, True))
    return flags, heads


class StudyStopped(Exception):
    """A run ended unfinished (stopped or failed); the message says which and what to do."""


def run_one(job: Job, action: str, train: Callable[[Job], None], evaluate: Callable[[Job], None],
            load_config: compare.ConfigLoader = trained_run.load_config) -> None:
    """Trains or evaluates JOB; StudyStopped when it is still unfinished afterwards."""
    check_workdir(job)
    if action == "train":
        train(job)
        if not done(job, load_config)[0]:
            raise StudyStopped(f"{job.workdir} is unfinished after its training: run the same command to resume")
    else:
        evaluate(job)
        if not done(job, load_config)[1]:
            raise StudyStopped(f"{job.workdir}: the propagation evaluation wrote no report with the heads "
                               f"{', '.join(job.heads[:2])}, ...")


def check_workdirs(plan: Plan) -> None:
    """ConfigError when a workdir of the plan holds another run (`check_workdir`)."""
    for job in plan.all_jobs():
        if job.workdir is not None:
            check_workdir(job)


def execute(plan: Plan, train: Callable[[Job], None], evaluate: Callable[[Job], None],
            announce: Callable[[Job, str], None] = lambda job, action: None) -> None:
    """Runs the plan's work one job at a time until nothing is left (`experiments.claims` runs several at once)."""
    check_workdirs(plan)
    while work := plan.work():
        job, action = work[0]
        announce(job, action)
        run_one(job, action, train, evaluate, plan.load_config)


# --- the ledger: finished runs kept across sessions ----------------------------------------------------------------


class Ledger:
    """docs/results/claims_runs.jsonl: one line per finished run (its workdir relative to the runs folder, config.json,
    last train record, final evaluation and propagation report), committed so that the study's numbers survive the
    runs folder. `restore` writes a missing workdir back (config.json, metrics.jsonl, the report: no checkpoints)."""

    def __init__(self, path: str):
        self.path = path

    def entries(self) -> dict[str, dict]:
        if not os.path.isfile(self.path):
            return {}
        with open(self.path) as f:
            return {entry["workdir"]: entry for entry in map(json.loads, filter(str.strip, f))}

    def add(self, job: Job, runs_dir: str, load_config: compare.ConfigLoader = trained_run.load_config) -> None:
        self.update([job], runs_dir, load_config)

    def update(self, jobs: Iterable[Job], runs_dir: str,
               load_config: compare.ConfigLoader = trained_run.load_config) -> int:
        """Adds (or refreshes) each finished job's entry, in one write; returns how many the ledger holds."""
        entries = self.entries()
        for job in jobs:
            record = trained(job.workdir, load_config) if job.workdir else None
            if record is None:
                continue
            with open(os.path.join(job.workdir, "config.json")) as f:
                config = json.load(f)
            relative = os.path.relpath(job.workdir, runs_dir)
            entries[relative] = {"workdir": relative, "config": config, "final": record.evals[-1],
                                 "train": record.train[-1] if record.train else None,
                                 "propagation": _report_heads(record)}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.writelines(json.dumps(e, sort_keys=True) + "\n" for _, e in sorted(entries.items()))
        os.replace(temporary, self.path)
        return len(entries)

    def restore(self, runs_dir: str) -> int:
        """Writes back each ledger run whose workdir is missing under RUNS_DIR; returns how many."""
        restored = 0
        for relative, entry in self.entries().items():
            workdir = os.path.join(runs_dir, relative)
            if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
                continue
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(entry["config"], f, indent=1)
            with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in (entry["train"], entry["final"]) if r)
            if entry["propagation"]:
                record = trained(workdir)
                with open(propagation_report(record), "w") as f:
                    json.dump({"heads": entry["propagation"], "restored_from": self.path}, f)
            restored += 1
        return restored


# --- time estimate -------------------------------------------------------------------------------------------------


def measured_seconds_per_step(directories: Iterable[str]) -> dict[str, float]:
    """Variant -> median seconds per step ('time' of the last record / its step) of the finished runs found in
    `directories` and their sub-folders (two levels), runs shorter than MIN_STEPS_TO_MEASURE left out."""
    rates: dict[str, list[float]] = {}
    for directory in directories:
        candidates = [directory] + [os.path.join(directory, name) for name in _listdir(directory)]
        candidates += [os.path.join(c, name) for c in candidates[1:] for name in _listdir(c)]
        for workdir in candidates:
            try:
                with open(os.path.join(workdir, "config.json")) as f:
                    variant = str(json.load(f).get("arg", "")).split(",")[0]
                last = max((r for r in MetricsLog.read(workdir) if "time" in r and "step" in r),
                           key=lambda r: r["step"], default=None)
            except (OSError, ValueError):
                continue
            if variant and last is not None and last["step"] >= MIN_STEPS_TO_MEASURE:
                rates.setdefault(variant, []).append(last["time"] / last["step"])
    return {variant: sorted(values)[len(values) // 2] for variant, values in rates.items()}


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(name for name in os.listdir(directory) if os.path.isdir(os.path.join(directory, name)))
    except OSError:
        return []


def estimate_seconds(job: Job, rates: dict[str, float]) -> float:
    seconds = SECONDS_PER_RUN + job.steps * rates.get(job.run.variant, DEFAULT_SECONDS_PER_STEP)
    return seconds + (SECONDS_PER_PROPAGATION if job.run.propagate else 0.0)


def pretraining_missing(plan: Plan) -> bool:
    """Whether a pretrained run will first make the synthetic ImageNet ResNet-18 (width 16)."""
    needs = any(run.modifiers == PRETRAINED for run in plan.runs + [s.base for s in plan.sweeps])
    return needs and not os.path.isfile(pretraining.default_weights_path(18, 16))


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
