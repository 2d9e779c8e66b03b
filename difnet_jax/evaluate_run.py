"""Evaluation of a trained run from its workdir: `evaluate_workdir` (`python -m experiments.evaluate`).

Above both training (the run is restored through `trained_run`) and evaluation (`evaluation.report` builds
the reports, `evaluation.evaluator` evaluates): evaluation itself does not depend on training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from difnet_jax import checkpointing, timing, trained_run
from difnet_jax.data import pipeline
from difnet_jax.evaluation import crf
from difnet_jax.evaluation.evaluator import EvalOptions, Evaluator, head_mious
from difnet_jax.evaluation.report import (
    build_report,
    check_propagation_options,
    check_propagation_sweep,
    crf_postprocess,
    crf_timing,
    propagation_refinements,
    report_basename,
    save_predictions,
    write_report,
)

log = logging.getLogger(__name__)


def evaluate_workdir(workdir: str, *, config: ml_collections.ConfigDict | None = None, step: int | None = None,
                     split: str | None = None, scales: Sequence[float] = (1.0,), flip: bool = False,
                     mode: str | None = None, stride: int | None = None,
                     crf_params: crf.CRFParams | None = None,
                     propagate: Sequence[int] = (), propagate_oracle: Sequence[int] = (),
                     propagate_lambda: Sequence[float] = (), propagate_self_term: Sequence[str] = (),
                     save_predictions_npz: bool = False, batch_size: int | None = None, log_every: int = 5,
                     output_dir: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Restores a run, evaluates `split` (default: config.data.eval_split) and writes the report.

    The reports go to `output_dir` (default: the workdir), which must be writable before
    anything is loaded (ConfigError naming it otherwise). The workdir is only read: a run
    still training there (holding its lock) can be evaluated.

    `mode`/`stride` override config.data.eval_mode/eval_stride; `propagate` and
    `propagate_oracle` list iteration counts of affinity propagation, each reported as a
    head (`propagation_refinements`), per lambda of `propagate_lambda` and self term of
    `propagate_self_term` when given (checked before anything loads). The same `Evaluator` as
    the training loop's, so the default settings reproduce the in-training mIoU.
    Returns (report, written paths). The report's 'heads' holds the mIoU of every extra
    head (PDN's layers) and refinement. With `crf_params` its 'timing' holds the dense
    CRF's time per image and, for comparison, the time of the part the model's family times
    (`Family.timed_part`: DifNet's cascade of random walks on the seed grid of the same canvas).
    """
    output_dir = output_dir or workdir
    if output_dir != workdir or os.path.isdir(workdir):  # (no workdir at all: load_run says so, creating nothing)
        checkpointing.check_writable(output_dir, "report folder", "--output_dir", keep=False)
    if propagate or propagate_oracle:
        check_propagation_options((config if config is not None else trained_run.load_config(workdir)).model,
                                  propagate, propagate_oracle, scales, flip)
    check_propagation_sweep(propagate_lambda, propagate_self_term, propagate, propagate_oracle)
    run = trained_run.load_run(workdir, config, step)
    config = run.config
    split = split or config.data.eval_split
    batch_size = batch_size or config.train.eval_batch_size
    data_source = pipeline.source(config.data.name, split, config.data.data_dir)
    options = EvalOptions.from_config(config.data, scales=scales, flip=flip, mode=mode, stride=stride)
    refinements = propagation_refinements(config.model, propagate, propagate_oracle, lams=propagate_lambda,
                                          self_terms=propagate_self_term)
    evaluator = Evaluator(run.model, run.trainer.family, len(run.class_names), options,
                          data_sharding=run.trainer.data_sharding, refinements=refinements,
                          postprocess=crf_postprocess(crf_params, options.normalization) if crf_params else None)
    log.info("Evaluating %s step %d on %s/%s (%d images), %s canvas, scales %s%s%s.", workdir, run.step,
             config.data.name, split, len(data_source), options.mode, options.scales, ", flip" if flip else "",
             ", dense CRF" if crf_params else "")
    result = evaluator.evaluate(run.variables, data_source, batch_size=batch_size,
                                keep_predictions=save_predictions_npz, log_every=log_every)
    report = build_report(
        result.confusion, run.class_names, workdir=os.path.abspath(workdir),
        model=f"{config.model.name}-{config.model.depth}", dataset=config.data.name, split=split, step=run.step,
        num_images=result.num_images, eval_size=options.eval_size, eval_mode=options.mode,
        window=options.window, stride=options.stride, scales=list(options.scales), flip=flip,
        crf=crf_params.as_dict() if crf_params else None, seconds=result.seconds,
        device=timing.device_description(), heads=head_mious(result),
    )
    if crf_params:
        report["timing"] = crf_timing(crf_params, options, len(run.class_names), data_source, model=config.model)
    basename = report_basename(split, run.step, options.scales, flip, crf_params is not None, options.mode)
    if refinements:
        basename += "_propagate"
    os.makedirs(output_dir, exist_ok=True)  # checked above, created only now: a failed evaluation leaves none
    paths = list(write_report(report, output_dir, basename))
    if save_predictions_npz and result.predictions is not None:
        paths.append(os.path.join(output_dir, basename + "_predictions.npz"))
        save_predictions(result, paths[-1])
    log.info("%s: mIoU %.4f, pixel accuracy %.4f; wrote %s", basename, report["miou"], report["pixel_accuracy"],
             ", ".join(paths))
    return report, paths
