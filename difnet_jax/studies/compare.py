"""Compares trained runs of one dataset: a Markdown table, training curves and predictions side by side.

  python -m experiments.compare --workdirs=runs/difnet18_synthetic,runs/simdeeplab18_synthetic --out=runs/compare

Writes OUT/compare.md (one row per run: model, variant, depth, dataset, parameters, steps,
train images/s, final and best validation mIoU, pixel accuracy and per-class IoU, the best
value of each metric column in bold), OUT/curves.png (training loss and validation mIoU
against step and against wall time, one line per run) and OUT/examples.png (the same
validation images, those TensorBoard shows, predicted by every run).

Seeds: runs whose config.json are equal but for `train.seed` form a group; compare.md's "Seed groups"
table gives each group's n, seeds, and final validation mIoU and pixel accuracy as mean ± std over
its runs (the sample standard deviation, n - 1), and every pair of groups their difference in mean
final mIoU against the larger of the two spreads: "within noise" when it is no larger, "outside the
spread" when it is, "spread unknown" when a group has a single run. OUT/seed_groups.json holds the
same numbers. The groups need no checkpoint (config.json and metrics.jsonl only).

Everything comes from each workdir's config.json, metrics.jsonl (the last record of a step
counts when a resumed run logged it twice) and latest checkpoint (`difnet_jax.load`). Train
images/s is the median over the logged intervals of steps/s times the global batch; wall
time is metrics.jsonl's 'time' (seconds of training, summed over resumed sessions; runs
logged before it existed are left out of those plots). A workdir that is missing, not a
run, unfinished (trained to fewer steps than its config's) or without an evaluation is
named and skipped; runs of different datasets or evaluation splits are refused (exit code 2).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import difnet_jax
from difnet_jax import checkpointing, trained_run
from difnet_jax.data import pipeline
from difnet_jax.drawing import visualize
from difnet_jax.drawing.pictures import NUM_PICTURES, largest_network_input, validation_examples
from difnet_jax.evaluation.evaluator import EvalOptions
from difnet_jax.run_log import MetricsLog

log = logging.getLogger(__name__)


class SkippedRun(Exception):
    """A workdir that cannot be compared; the message says why."""


class DatasetMismatch(ValueError):
    """Runs of different datasets or evaluation splits."""


@dataclasses.dataclass
class RunRecord:
    """One finished, evaluated run as the comparison needs it."""

    workdir: str
    config: Any  # ml_collections.ConfigDict
    train: list[dict[str, Any]]  # one record per logged step, in step order
    evals: list[dict[str, Any]]  # one record per evaluated step, in step order
    label: str = ""
    num_parameters: int | None = None

    @property
    def dataset(self) -> str:
        return f"{self.config.data.name} ({self.config.data.eval_split})"

    @property
    def steps(self) -> int:
        return self.train[-1]["step"] if self.train else self.evals[-1]["step"]

    @property
    def train_images_per_sec(self) -> float | None:
        rates = [r["steps_per_sec"] for r in self.train if "steps_per_sec" in r]
        return float(np.median(rates)) * self.config.train.batch_size if rates else None


def _last_per_step(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step = {r["step"]: r for r in records}  # later records of a step (a resumed session's) win
    return [by_step[step] for step in sorted(by_step)]


ConfigLoader = Callable[[str], Any]  # workdir -> its ConfigDict


def read_run(workdir: str, load_config: ConfigLoader = trained_run.load_config) -> RunRecord:
    """The run's config and records; SkippedRun naming the workdir and the reason if it cannot be compared."""
    if not os.path.isdir(workdir):
        raise SkippedRun(f"{workdir}: missing (no such directory)")
    for name in ("config.json", "metrics.jsonl"):
        if not os.path.isfile(os.path.join(workdir, name)):
            raise SkippedRun(f"{workdir}: not a trained run (no {name})")
    try:
        config = load_config(workdir)
    except (ValueError, KeyError) as error:  # not JSON, or a config the project cannot read
        raise SkippedRun(f"{workdir}: config.json unreadable ({error})") from error
    records = MetricsLog.read(workdir)
    train = _last_per_step([r for r in records if "loss" in r])
    evals = _last_per_step([r for r in records if "val/miou" in r])
    trained = max([r["step"] for r in records], default=0)
    if trained < config.train.num_steps:
        raise SkippedRun(f"{workdir}: unfinished (trained to step {trained} of {config.train.num_steps})")
    if not evals:
        raise SkippedRun(f"{workdir}: no evaluation in metrics.jsonl")
    return RunRecord(workdir=workdir, config=config, train=train, evals=evals)


def check_same_dataset(runs: Sequence[RunRecord]) -> None:
    """DatasetMismatch listing each run's dataset unless all runs share one dataset and evaluation split."""
    if len({run.dataset for run in runs}) > 1:
        raise DatasetMismatch("runs of different datasets cannot be compared: "
                              + "; ".join(f"{run.workdir}: {run.dataset}" for run in runs))


def run_labels(workdirs: Sequence[str]) -> list[str]:
    """Each workdir's folder name, or its whole path where two names clash."""
    names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
    return [name if names.count(name) == 1 else os.path.normpath(w) for name, w in zip(names, workdirs)]


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _shown_value(cell: str) -> float | None:
    """The number a cell shows ('63.30' -> 63.3), None for 'n/a'."""
    try:
        return float(cell)
    except ValueError:
        return None


def _best_marked(cells: list[str], values: list[float | None]) -> list[str]:
    """The cells of the largest value in bold (all of them on a tie); none when all the values are equal.

    `values` are rounded as the cells show them, so that equal-looking cells are marked alike.
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(set(finite)) < 2:
        return cells
    best = max(finite)
    return [f"**{cell}**" if value == best else cell for cell, value in zip(cells, values)]


def comparison_table(runs: Sequence[RunRecord]) -> str:
    """compare.md's table: one row per run, the best value of each metric column in bold."""
    class_names = list(runs[0].evals[-1]["val/iou"])
    columns: list[tuple[str, list[str], list[float | None] | None]] = []  # (header, cells, values to mark)

    def column(header, values, fmt, mark=True):
        cells = [fmt(v) for v in values]
        columns.append((header, cells, [_shown_value(c) for c in cells] if mark else None))

    column("run", [run.label for run in runs], str, mark=False)
    column("model", [run.config.model.name for run in runs], str, mark=False)
    column("variant", [str(run.config.get("arg", "")).split(",")[0] for run in runs], str, mark=False)
    column("depth", [run.config.model.depth for run in runs], str, mark=False)
    column("dataset", [run.dataset for run in runs], str, mark=False)
    column("parameters", [run.num_parameters for run in runs], lambda v: "?" if v is None else f"{v:,}", mark=False)
    column("steps", [run.steps for run in runs], str, mark=False)
    column("train images/s", [run.train_images_per_sec for run in runs],
           lambda v: "n/a" if v is None else f"{v:.1f}")
    column("final mIoU (%)", [run.evals[-1]["val/miou"] for run in runs], _percent)
    best = [max(run.evals, key=lambda r: r["val/miou"]) for run in runs]
    columns.append(("best mIoU (%) (step)", [f"{_percent(r['val/miou'])} ({r['step']})" for r in best],
                    [_shown_value(_percent(r["val/miou"])) for r in best]))
    column("pixel accuracy (%)", [run.evals[-1]["val/pixel_accuracy"] for run in runs], _percent)
    for name in class_names:
        column(f"IoU {name} (%)", [run.evals[-1]["val/iou"].get(name) for run in runs], _percent)
    headers = [header for header, _, _ in columns]
    cells = [marked if values is None else _best_marked(marked, values) for _, marked, values in columns]
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" if values is None else "---:" for _, _, values in columns) + " |"]
    lines += ["| " + " | ".join(column_cells[row] for column_cells in cells) + " |" for row in range(len(runs))]
    return "\n".join(lines) + "\n"


def config_without_seed(config) -> str:
    """The config as canonical JSON with `train.seed` removed: equal for runs that differ only in seed."""
    document = json.loads(config.to_json_best_effort())
    document.get("train", {}).pop("seed", None)
    return json.dumps(document, sort_keys=True)


@dataclasses.dataclass
class SeedGroup:
    """Runs whose configs differ only in `train.seed`."""

    name: str  # G1, G2, ... in order of first appearance
    runs: list[RunRecord]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return [run.config.train.seed for run in self.runs]

    def values(self, key: str = "val/miou") -> np.ndarray:
        """The final evaluation's `key` of each run."""
        return np.array([run.evals[-1][key] for run in self.runs], np.float64)

    def mean_std(self, key: str = "val/miou") -> tuple[float, float | None]:
        """(mean, sample standard deviation (ddof 1), None for a single run) of the final `key`."""
        values = self.values(key)
        return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def seed_groups(runs: Sequence[RunRecord]) -> list[SeedGroup]:
    """The runs grouped by `config_without_seed`, groups and runs in the order given."""
    by_config: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_config.setdefault(config_without_seed(run.config), []).append(run)
    return [SeedGroup(f"G{i}", members) for i, members in enumerate(by_config.values(), start=1)]


@dataclasses.dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) of a metric, against the larger of the two groups' standard deviations."""

    delta: float
    spread: float | None  # None: a group has one run, its spread is unknown

    @property
    def verdict(self) -> str:
        if self.spread is None:
            return "spread unknown (n = 1)"
        return "within noise" if abs(self.delta) <= self.spread else "outside the spread"


def difference(a: SeedGroup, b: SeedGroup, key: str = "val/miou") -> Difference:
    (mean_a, std_a), (mean_b, std_b) = a.mean_std(key), b.mean_std(key)
    spread = None if std_a is None or std_b is None else max(std_a, std_b)
    return Difference(mean_a - mean_b, spread)


def _mean_std_text(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f} ± {'n/a' if std is None else f'{100 * std:.2f}'}"


def seed_groups_markdown(groups: Sequence[SeedGroup]) -> str:
    """The "Seed groups" table and the difference of every pair of groups."""
    lines = ["| group | config arg | n | seeds | runs | final mIoU (%) mean ± std | pixel accuracy (%) mean ± std |",
             "| --- | --- | ---: | --- | --- | ---: | ---: |"]
    for group in groups:
        repeated = " (repeated)" if len(set(group.seeds)) < group.n else ""
        lines.append(f"| {group.name} | {group.runs[0].config.get('arg', '')} | {group.n} | "
                     f"{', '.join(map(str, group.seeds))}{repeated} | {', '.join(run.label for run in group.runs)} | "
                     f"{_mean_std_text(*group.mean_std())} | {_mean_std_text(*group.mean_std('val/pixel_accuracy'))} |")
    lines.append("")
    for a, b in itertools.combinations(groups, 2):
        d = difference(a, b)
        spread = "n/a" if d.spread is None else f"{100 * d.spread:.2f}"
        lines.append(f"- {a.name} - {b.name}: {100 * d.delta:+.2f} mIoU points (spread {spread}): {d.verdict}")
    return "\n".join(lines) + "\n"


def seed_groups_json(groups: Sequence[SeedGroup]) -> dict[str, Any]:
    """seed_groups.json: each group's runs, seeds and final metrics' mean/std/n, and the pairwise differences."""
    def summary(group, key):
        mean, std = group.mean_std(key)
        return {"mean": mean, "std": std, "n": group.n, "values": group.values(key).tolist()}

    return {
        "groups": [{"name": g.name, "arg": g.runs[0].config.get("arg", ""), "seeds": g.seeds,
                    "workdirs": [run.workdir for run in g.runs], "val/miou": summary(g, "val/miou"),
                    "val/pixel_accuracy": summary(g, "val/pixel_accuracy")} for g in groups],
        "differences": [{"a": a.name, "b": b.name, "delta": (d := difference(a, b)).delta, "spread": d.spread,
                         "verdict": d.verdict} for a, b in itertools.combinations(groups, 2)],
    }


def headline_table(runs: Sequence[RunRecord]) -> str:
    """What `experiments.compare` prints: per run its steps, final and best validation mIoU and pixel accuracy
    (compare.md has the per-class IoU, the seed groups and the figures)."""
    rows = [("run", "steps", "final mIoU (%)", "best mIoU (%) (step)", "pixel accuracy (%)")]
    for run in runs:
        best = max(run.evals, key=lambda r: r["val/miou"])
        rows.append((run.label, str(run.steps), _percent(run.evals[-1]["val/miou"]),
                     f"{_percent(best['val/miou'])} ({best['step']})", _percent(run.evals[-1]["val/pixel_accuracy"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def comparison_markdown(runs: Sequence[RunRecord], skipped: Sequence[str],
                        groups: Sequence[SeedGroup] = ()) -> str:
    lines = [f"# Comparison of {len(runs)} run(s) on {runs[0].dataset}", "",
             "Final: the last evaluation (at the last step); best: the highest validation mIoU of any evaluation. "
             "Train images/s: median over the logged intervals of steps/s x global batch. "
             "Bold: the best value of a metric column.", "",
             comparison_table(runs), "", "![training curves](curves.png)", "",
             "![validation examples](examples.png)", ""]
    if groups:
        lines += ["## Seed groups", "",
                  "Runs whose config.json differ only in train.seed; mean ± sample std (n - 1) of the final "
                  "evaluation. A difference no larger than the larger spread of its two groups is within noise.", "",
                  seed_groups_markdown(groups), ""]
    if skipped:
        lines += ["Skipped:", ""] + [f"- {reason}" for reason in skipped] + [""]
    return "\n".join(lines)


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, np.asarray(figure.subplots(rows, cols, squeeze=False))


def plot_curves(runs: Sequence[RunRecord], path: str) -> str:
    """Training loss and validation mIoU against step and against wall time (minutes), one line per run."""
    figure, axes = _figure(2, 2, 11, 7.5)
    panels = [(axes[0, 0], "train", "loss", "step"), (axes[0, 1], "train", "loss", "time"),
              (axes[1, 0], "evals", "val/miou", "step"), (axes[1, 1], "evals", "val/miou", "time")]
    for ax, source, key, x_key in panels:
        for run in runs:
            records = [r for r in getattr(run, source) if key in r and x_key in r]
            if records:
                xs = [r[x_key] / 60 if x_key == "time" else r[x_key] for r in records]
                marker = "o" if source == "evals" or len(records) == 1 else None
                ax.plot(xs, [r[key] for r in records], marker=marker, markersize=3, label=run.label)
        ax.set_xlabel("wall time (minutes of training)" if x_key == "time" else "step")
        ax.set_ylabel("training loss (total, log scale)" if key == "loss" else "validation mIoU")
        if key == "loss":  # totals of different families differ by orders of magnitude (auxiliary terms)
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def plot_examples(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], predictions: dict[str, list],
                  path: str) -> str:
    """One row per image: image, ground truth, then each run's prediction (column titled by the run)."""
    columns = ["image", "ground truth", *predictions]
    figure, axes = _figure(len(images), len(columns), 1.8 * len(columns), 1.9 * len(images) + 0.3)
    for row, (image, label) in enumerate(zip(images, labels)):
        shown = [image, visualize.colorize(label)] + [visualize.colorize(p[row]) for p in predictions.values()]
        for ax, picture in zip(axes[row], shown):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], columns):
        ax.set_title(title, fontsize=8)
    figure.tight_layout(pad=0.3)
    figure.savefig(path, format="png")
    return path


def compare(workdirs: Sequence[str], out: str, *, num_images: int = NUM_PICTURES,
            data_dir: str | None = None, load_config: ConfigLoader = trained_run.load_config) -> dict[str, Any]:
    """Writes OUT/compare.md, curves.png and examples.png for the comparable runs among `workdirs`.

    `load_config` reads a workdir's config (the CLI fills keys added since the run was trained).
    Returns {'runs': the compared RunRecords, 'skipped': reasons, 'paths': written files}.
    Raises PathError if `out` cannot be written, DatasetMismatch for runs of different datasets, ValueError
    when no run can be compared: all before anything is loaded or written.
    """
    checkpointing.check_writable(out, "output folder", "--out", keep=False)
    runs, skipped = [], []
    for workdir in workdirs:
        try:
            runs.append(read_run(workdir, load_config))
        except SkippedRun as reason:
            log.warning("skipped %s", reason)
            skipped.append(str(reason))
    if not runs:
        raise ValueError("no run to compare: " + "; ".join(skipped))
    check_same_dataset(runs)
    groups = seed_groups(runs)  # before any data_dir override: the configs as they ran
    for run, label in zip(runs, run_labels([run.workdir for run in runs])):
        run.label = label
        if data_dir is not None:
            run.config.data.data_dir = data_dir

    config = runs[0].config
    source = pipeline.source(config.data.name, config.data.eval_split, config.data.data_dir)
    _, images, labels = validation_examples(source, num_images,
                                            largest_network_input(EvalOptions.from_config(config.data)))
    predictions, restored = {}, []
    for run in runs:
        try:
            trained = difnet_jax.load(run.workdir, config=run.config)
        except FileNotFoundError as error:  # no checkpoint left
            log.warning("skipped %s: %s", run.workdir, error)
            skipped.append(f"{run.workdir}: no checkpoint to restore ({error})")
            continue
        run.num_parameters = trained.num_parameters
        predictions[f"{run.label}\nmIoU {_percent(run.evals[-1]['val/miou'])} %"] = [trained.predict(image)
                                                                                  for image in images]
        restored.append(run)
        del trained
    if not restored:
        raise ValueError("no run to compare: " + "; ".join(skipped))
    runs = restored
    os.makedirs(out, exist_ok=True)
    md_path = os.path.join(out, "compare.md")
    with open(md_path, "w") as f:
        f.write(comparison_markdown(runs, skipped, groups))
    paths = [md_path, plot_curves(runs, os.path.join(out, "curves.png")),
             plot_examples(images, labels, predictions, os.path.join(out, "examples.png"))]
    groups_path = os.path.join(out, "seed_groups.json")
    with open(groups_path, "w") as f:
        json.dump(seed_groups_json(groups), f, indent=1)
    paths.append(groups_path)
    log.info("Compared %d run(s); wrote %s", len(runs), ", ".join(paths))
    return {"runs": runs, "skipped": skipped, "paths": paths, "groups": groups}
