"""Compares trained runs of one dataset: a Markdown table, training curves and predictions side by side.

  python -m experiments.compare --workdirs=runs/difnet18_synthetic,runs/simdeeplab18_synthetic --out=runs/compare

Writes OUT/compare.md (one row per run: model, variant, depth, dataset, parameters, steps,
train images/s, final and best validation mIoU, pixel accuracy and per-class IoU, the best
value of each metric column in bold), OUT/curves.png (training loss and validation mIoU
against step and against wall time, one line per run) and OUT/examples.png (the same
validation images, those TensorBoard shows, predicted by every run).

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
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import difnet_jax
from difnet_jax import trained_run, visualize
from difnet_jax.data import pipeline
from difnet_jax.evaluation.evaluator import EvalOptions
from difnet_jax.pictures import NUM_PICTURES, largest_network_input, validation_examples
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


def comparison_markdown(runs: Sequence[RunRecord], skipped: Sequence[str]) -> str:
    lines = [f"# Comparison of {len(runs)} run(s) on {runs[0].dataset}", "",
             "Final: the last evaluation (at the last step); best: the highest validation mIoU of any evaluation. "
             "Train images/s: median over the logged intervals of steps/s x global batch. "
             "Bold: the best value of a metric column.", "",
             comparison_table(runs), "", "![training curves](curves.png)", "",
             "![validation examples](examples.png)", ""]
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
    Raises DatasetMismatch (nothing written) for runs of different datasets, ValueError
    when no run can be compared.
    """
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
        f.write(comparison_markdown(runs, skipped))
    paths = [md_path, plot_curves(runs, os.path.join(out, "curves.png")),
             plot_examples(images, labels, predictions, os.path.join(out, "examples.png"))]
    log.info("Compared %d run(s); wrote %s", len(runs), ", ".join(paths))
    return {"runs": runs, "skipped": skipped, "paths": paths}
