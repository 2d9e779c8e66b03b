"""Evaluates a trained run's checkpoint: the paper's protocol, or multi-scale + flip, or + dense CRF.

  python -m experiments.evaluate --workdir=runs/difnet18_synthetic
  python -m experiments.evaluate --workdir=runs/difnet18_synthetic --scales=0.5,0.75,1.0,1.25,1.5,1.75 --flip
  python -m experiments.evaluate --workdir=runs/simdeeplab18_synthetic --crf
  python -m experiments.evaluate --workdir=runs/city50 --mode=sliding --stride=513
  python -m experiments.evaluate --workdir=runs/dl3p18_affinity --propagate=1,3,6,10 --propagate_oracle=1,3,10
  python -m experiments.evaluate --workdir=runs/dl3p18_affinity --propagate=1,3,10 --propagate_lambda=6,24,100 \
      --propagate_self_term=current,original

The run's config comes from WORKDIR/config.json unless --config is given. Writes
WORKDIR/eval_<split>_step<N>[_whole|_sliding][_ms][_flip][_crf][_propagate].{json,md} (and _predictions.npz
with --save_predictions; --output_dir=DIR writes them to DIR instead, checked for writing before the
evaluation) and prints the per-class IoU, ending with the mIoU and pixel accuracy. The workdir is only
read: a run still training there can be evaluated.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from difnet_jax.constants import EVAL_MODES
from experiments import cli
from experiments.run_config import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :ARG); default WORKDIR/config.json.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate; default config.data.eval_split.")
_SCALES = cli.define_number_list("scales", "1.0", "Input scales whose softmax probabilities are averaged.")
_FLIP = flags.DEFINE_bool("flip", False, "Also average over horizontally flipped inputs.")
_MODE = flags.DEFINE_enum("mode", None, list(EVAL_MODES),
                          "Canvas: pad (every image to data.eval_size), whole (each batch to its largest image) or "
                          "sliding (crop-sized windows over it); default config.data.eval_mode.")
_PROPAGATE = cli.define_number_list("propagate", "", "Iteration counts T of affinity propagation with the model's own "
                                     "affinity (Dilated Affinity Eq. 6; *_affinity variants), e.g. 1,3,6,10.", int)
_PROPAGATE_ORACLE = cli.define_number_list("propagate_oracle", "", "Iteration counts T of propagation with the "
                                           "ground-truth affinity (the paper's oracle; any model), e.g. 1,3,6,10.",
                                           int)
_PROPAGATE_LAMBDA = cli.define_number_list("propagate_lambda", "", "Eq. 6's lambdas to sweep (numbers >= 0), e.g. "
                                           "6,24,100: one head per T, lambda and self term, named "
                                           "propagate_T<T>_lam<lambda>_<self term>; default "
                                           "model.deeplabv3plus.propagation_lambda.", positive=False)
_PROPAGATE_SELF_TERM = flags.DEFINE_list("propagate_self_term", [], "Eq. 6's self terms to sweep: current (on the "
                                         "current iterate) and/or original (on the original prediction each "
                                         "iteration), e.g. current,original; default "
                                         "model.deeplabv3plus.propagation_self_term.")
_STRIDE = flags.DEFINE_integer("stride", None, "Pixels between sliding windows; default config.data.eval_stride.")
_CRF = flags.DEFINE_bool("crf", False, "Dense-CRF post-processing (Sim-DeepLab + CRF of Table 1).")
_CRF_ITERATIONS = flags.DEFINE_integer("crf_iterations", 10, "Mean-field iterations of the dense CRF.")
_CRF_MAX_SENDERS = flags.DEFINE_integer("crf_max_senders", 4096,
                                        "Appearance-kernel senders per image (the sender grid's stride follows).")
_SAVE_PREDICTIONS = flags.DEFINE_bool("save_predictions", False, "Also write the predictions as .npz.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per batch; default config.train.eval_batch_size.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir (the TFDS data_dir).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 5, "Log progress every this many batches.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the reports; default the workdir.")
flags.mark_flags_as_required(["workdir"])
cli.mark_flags_as_nonempty(["workdir"])


def main():
    from difnet_jax.evaluate_run import evaluate_workdir
    from difnet_jax.evaluation import crf  # here: a mistyped flag costs no import
    from difnet_jax.evaluation.report import report_text

    config = run_config(_WORKDIR.value, _CONFIG.value, _DATA_DIR.value)
    crf_params = crf.CRFParams(iterations=_CRF_ITERATIONS.value, max_senders=_CRF_MAX_SENDERS.value) if _CRF.value \
        else None
    report, paths = evaluate_workdir(
        _WORKDIR.value, config=config, step=_STEP.value, split=_SPLIT.value,
        scales=[float(s) for s in _SCALES.value], flip=_FLIP.value, mode=_MODE.value, stride=_STRIDE.value,
        propagate=[int(t) for t in _PROPAGATE.value], propagate_oracle=[int(t) for t in _PROPAGATE_ORACLE.value],
        propagate_lambda=_PROPAGATE_LAMBDA.value, propagate_self_term=_PROPAGATE_SELF_TERM.value,
        crf_params=crf_params,
        save_predictions_npz=_SAVE_PREDICTIONS.value, batch_size=_BATCH_SIZE.value, log_every=_LOG_EVERY.value,
        output_dir=_OUTPUT_DIR.value,
    )
    print("Wrote " + ", ".join(paths))
    print(report_text(report))


def run() -> None:
    cli.run(main, outputs=(lambda: _OUTPUT_DIR.value,))


if __name__ == "__main__":
    run()
