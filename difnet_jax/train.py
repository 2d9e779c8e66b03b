"""Training and evaluation: `train_and_evaluate(config, workdir)`.

One jit-compiled, pure train step (cross-entropy with ignore label 255 on the final
output; SGD with momentum, L2 weight decay and poly learning-rate decay, Sec. 5.1),
run under a device mesh with a 'data' axis: the state is replicated, the global
batch is sharded over the devices, and BatchNorm statistics, computed by jit over
the whole global batch, are synchronised for free. Orbax checkpoints hold the
train state and the data iterator's position; a run resumes from its workdir.
Every logged step and every evaluation is appended to WORKDIR/metrics.jsonl and to
TensorBoard event files in WORKDIR, with pictures of a few validation images at each evaluation.
One training per workdir (`workdir_lock`); SIGTERM/Ctrl-C stop it cleanly wherever they
come (`preemption`). The train step is compiled ahead of step 1 and timed; a session's
first step is always reported, steps/s and the ETA leave the compilation out, and the ETA counts the evaluations
still to come at the measured duration of the last one.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from difnet_jax import checkpointing, xla_cpu
from difnet_jax.backbone_weights import loading
from difnet_jax.checkpointing import checkpoint_manager
from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import normalization, pipeline
from difnet_jax.data.normalization import Normalization
from difnet_jax.drawing.pictures import ValidationPictures
from difnet_jax.evaluation import metrics
from difnet_jax.evaluation.evaluator import EvalOptions, EvalResult, Evaluator, head_mious
from difnet_jax.models import dataset_facts, family_of, pretrained_backbones
from difnet_jax.models.family import Facts
from difnet_jax.optimizer import learning_rate_schedule, make_optimizer
from difnet_jax.preemption import Interrupted, StopRequests
from difnet_jax.run_log import MetricsLog, Progress
from difnet_jax.user_errors import ConfigError, MissingPathError
from difnet_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)


LossFn = Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params), rng=state_rng,
    )


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, loss_fn: LossFn,
               tx: optax.GradientTransformation, skip_nonfinite: bool = False,
               normalization: Normalization) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the model family's loss (`Family.loss`: its total and named terms).

    batch['image'] uint8 RGB (the train loader's) is normalised here, on the device, by `normalization`
    (`Normalization.apply_on_device`: the host pipeline's values exactly); float images are taken as normalised.

    The model gets a per-step rng, `fold_in(state.rng, step)`, as its 'dropout' stream (no
    current family draws from it; one that does gets a different key every step, the same
    on every device and after a resume). `metrics['nonfinite']` is 1 when the loss or the
    gradient is not finite; with `skip_nonfinite` such a step leaves params, BN statistics
    and optimizer state as they were (the step counter still advances, staying in line with
    the data). Metrics: 'loss' (the total), 'loss/<term>' for every term, pixel accuracy of
    the final output, gradient and parameter norms.
    """
    step_rng = jax.random.fold_in(state.rng, state.step)
    images = batch["image"]
    if images.dtype == jnp.uint8:
        images = normalization.apply_on_device(images)

    def objective(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"], rngs={"dropout": step_rng},
        )
        total, terms = loss_fn(outputs, batch)
        return total, (updates["batch_stats"], outputs[0], terms)

    (loss, (batch_stats, logits, terms)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    valid = batch["label"] != IGNORE_LABEL
    correct = (logits.argmax(-1) == batch["label"]) & valid
    step_metrics = {
        "loss": loss,
        **{f"loss/{name}": value for name, value in terms.items()},
        "pixel_accuracy": correct.sum() / jnp.maximum(valid.sum(), 1),
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(params),
        "nonfinite": 1 - finite.astype(jnp.int32),
    }
    updated = (params, batch_stats, opt_state)
    if skip_nonfinite:
        kept = (state.params, state.batch_stats, state.opt_state)
        updated = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    params, batch_stats, opt_state = updated
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
    )
    return new_state, step_metrics


class Trainer:
    """The compiled pieces of a run on a mesh: init, train step, eval step.

    facts: what the family's build and loss read from the train set (`models.dataset_facts(config.model)`, which
    the training session and the trained-run loader pass); None: asked of the family here.
    """

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, mesh: Mesh | None = None,
                 facts: Facts | None = None):
        self.config = config
        self.num_classes = num_classes
        self.mesh = mesh or Mesh(np.array(jax.devices()), ("data",))
        self.family = family_of(config.model)
        self.facts = dataset_facts(config.model) if facts is None else facts
        self.model = self.family.build(config.model, num_classes, self.facts)
        self.pretrained = pretrained_backbones(config.model)
        self.tx = make_optimizer(config.train, self.pretrained, frozen_bn=config.model.get("frozen_backbone_bn", False))
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        crop = config.data.crop_size
        init = functools.partial(create_train_state, self.model, self.tx, image_shape=(crop, crop, 3))
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))  # Shapes first, then shardings.
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
        self.abstract_state = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract, self.state_sharding,
        )
        self.init = jax.jit(init, out_shardings=self.state_sharding)

        def loss_fn(outputs, batch):
            return self.family.loss(outputs, batch, config.model, self.facts)

        self.train_step = jax.jit(
            functools.partial(train_step, model=self.model, tx=self.tx, skip_nonfinite=config.train.skip_nonfinite,
                              normalization=normalization.of_config(config.data), loss_fn=loss_fn),
            in_shardings=(self.state_sharding, self.data_sharding),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=0,
            compiler_options=xla_cpu.compiler_options(config.model),  # XLA CPU's library fusions (issue 31)
        )
        self.evaluator = Evaluator(self.model, self.family, num_classes, EvalOptions.from_config(config.data),
                                   data_sharding=self.data_sharding)

    def initial_state(self, rng: jax.Array) -> TrainState:
        """A fresh state; backbones listed by `model.backbone_init_branches` start from `model.backbone_init`."""
        state = self.init(rng)
        if not self.pretrained:
            return state
        model_cfg = self.config.model
        resnet = loading.load_resnet(model_cfg.backbone_init, model_cfg.depth, model_cfg.width,
                                        verify=model_cfg.verify_backbone_init)
        params, batch_stats = loading.initialise_backbones(state.params, state.batch_stats, resnet, self.pretrained)

        def to_global(leaf, sharding):  # every host read the same file: each supplies its own shards
            if isinstance(leaf, np.ndarray):
                return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])
            return leaf

        params, batch_stats = jax.tree.map(to_global, (params, batch_stats),
                                           (self.state_sharding.params, self.state_sharding.batch_stats))
        log.info("Initialised %s from %s.", ", ".join(self.pretrained), model_cfg.backbone_init)
        return state.replace(params=params, batch_stats=batch_stats)

    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assembles the global batch, sharded over 'data', from this host's part."""
        return {
            key: jax.make_array_from_process_local_data(self.data_sharding, value)
            for key, value in local_batch.items()
        }

    def evaluate(self, state: TrainState, data_source, *, batch_size: int) -> EvalResult:
        """The evaluator's confusion matrices (final output and extra heads) over a whole split."""
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return self.evaluator.evaluate(variables, data_source, batch_size=batch_size, log_progress=False)


def stop_agreed(stop: StopRequests, step: int, previous_metrics: Any, log_every: int, num_steps: int) -> bool:
    """Whether the run stops after `step`, read after its report and save (a signal that came while they waited
    counts).

    One process: once the previous step has run (the loop waits for it here, so at most one step is queued behind
    the running one: the host prepares the next batch while a step runs; waiting for each step instead cost 18 %
    of the synthetic DifNet-18 steps/s), so a signal stops the run after the running step or the one queued
    behind it. Several processes: the hosts must stop after the same
    step, so they agree at each logged step (and the last): one small all-gather of their requests there, none
    in between (a collective per step would cost every step; the hosts already wait for the logged step's metrics).
    """
    if jax.process_count() == 1:
        jax.block_until_ready(previous_metrics)
        return stop.requested
    if step % log_every and step != num_steps:
        return False
    agreed = bool(np.max(multihost_utils.process_allgather(np.int32(stop.requested))))
    if agreed and not stop.requested:
        stop.signal_name = "another process's signal"
    return agreed


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates it.

    Returns the last evaluation: {'step', 'val/miou', 'val/pixel_accuracy', 'val/iou'}; or
    {'step', 'stopped_by'} (the signal's name, 'step' the last checkpointed step) when
    SIGTERM/SIGINT stopped the run. Process 0 holds the workdir's lock (`workdir_lock`) for
    the whole run: a second training on the same workdir stops at once, naming this one.
    """
    train_cfg = config.train
    num_devices = jax.device_count()
    for key in ("batch_size", "eval_batch_size"):
        if train_cfg[key] % num_devices:
            raise ConfigError(f"config.train.{key}={train_cfg[key]} must be divisible by the {num_devices} devices")
    checkpointing.check_resume_config(workdir, config)
    created = not os.path.exists(workdir)
    checkpointing.check_writable(workdir)
    lock = WorkdirLock.acquire(workdir) if jax.process_index() == 0 else None
    try:
        with StopRequests() as stop:
            return _train_and_evaluate(config, workdir, stop)
    finally:
        if lock is not None:
            lock.release()
        if created and jax.process_count() == 1 and not os.listdir(workdir):  # failed before writing anything
            os.rmdir(workdir)


def train_loader_of(config: ml_collections.ConfigDict, source):
    """The config's train loader over `source` (its data.* augmentation and reading keys, train.batch_size and
    train.seed): what `experiments.voc` trains on, and what `benchmarks.step_profile --loop` times."""
    data = config.data
    return pipeline.train_loader(
        source, global_batch_size=config.train.batch_size, crop_size=data.crop_size,
        scale_range=tuple(data.scale_range), seed=config.train.seed, num_workers=data.num_workers,
        read_threads=data.get("read_threads", 2),
        normalization=normalization.of_config(data), scale_step=data.get("scale_step", 0.0),
    )


def _require_backbone_weights(model: ml_collections.ConfigDict) -> None:
    """A fresh run starts from `model.backbone_init`: the entry point makes the synthetic-ImageNet ones first
    (`pretraining.ensure_weights`, the `pretrained` modifier); training only reads them."""
    path = model.get("backbone_init", "")
    if path and model.get("backbone_pretraining", "") and not os.path.isfile(path):
        raise MissingPathError(f"config.model.backbone_init={path!r} is missing: make it first with "
                               "`python -m experiments.pretrain` (experiments.voc makes it when missing)")


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, stop: StopRequests) -> dict[str, Any]:
    """The run, under the lock. A stop request is honoured wherever it comes (`preemption`):

    while setting up or compiling (after that stage; nothing to save), after any step (the step
    is reported and checkpointed), or during an evaluation (before its next image: abandoned,
    its step checkpointed; a complete one is recorded first). A restored
    checkpoint at an evaluation step whose evaluation metrics.jsonl lacks (a stopped one) is
    evaluated before training goes on; a run already trained to num_steps only evaluates, and
    appends that evaluation to metrics.jsonl only if it is not there yet.
    """
    session = _Session(config, workdir, stop)
    try:
        with stop.stage():  # Nothing of this session to save yet: a stop ends the run after each stage.
            session.set_up()
        return session.train()
    except Interrupted:
        return session.stopped()
    finally:  # However the run ends, pending checkpoint writes finish: the last good one is kept.
        if session.manager is not None:
            session.manager.wait_until_finished()
            session.manager.close()


class _Session:
    """One session of `_train_and_evaluate`: set up (data, model, restored or initial state), then train."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, stop: StopRequests):
        self.config, self.workdir, self.stop = config, workdir, stop
        self.data, self.train_cfg = config.data, config.train
        self.num_steps = config.train.num_steps
        self.manager = self.trainer = self.state = self.data_iter = self.progress = self.metrics_log = None
        self.pictures = self.val_source = self.class_names = None
        self.first_step = self.step = self.saved_step = self.evaluating = None

    def is_eval_step(self, n: int) -> bool:
        return n > 0 and (n % self.train_cfg.eval_every == 0 or n >= self.num_steps)

    def checkpoint(self) -> None:
        """Reports the steps not yet reported (raising on a non-finite one first), then saves `step` once."""
        if self.progress is not None and self.progress.pending:
            self.progress.report(self.step)
        if self.saved_step != self.step:
            self.manager.save(self.step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(self.state), data=grain.checkpoint.CheckpointSave(self.data_iter),
            ))
            self.saved_step = self.step

    def evaluate(self, n: int) -> dict[str, Any]:
        """Evaluates the state (at step n); the record goes to metrics.jsonl unless one for n is there."""
        self.evaluating, start = n, time.perf_counter()
        record_it = n not in self.metrics_log.eval_steps
        variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
        # Stops before reading an image (a stopped evaluation is repeated by the resumed run); once complete
        # it is recorded, and the loop stops after it.
        result = self.trainer.evaluate(self.state, self.stop.checked(self.val_source),
                                       batch_size=self.train_cfg.eval_batch_size)
        self.evaluating = None
        summary = metrics.summarize(result.confusion, self.class_names)
        heads = head_mious(result)
        rendered = self.pictures.render(variables) if record_it else None
        record = {"step": n, "val/miou": summary["miou"], "val/pixel_accuracy": summary["pixel_accuracy"],
                  "val/iou": summary["iou"], **{f"val/miou_{name}": value for name, value in heads.items()}}
        if record_it:
            self.metrics_log.write(record, pictures=rendered)
        log.info("eval step %d: mIoU %.4f, pixel accuracy %.4f (%d images, %.1fs)%s%s", n, summary["miou"],
                 summary["pixel_accuracy"], len(self.val_source), time.perf_counter() - start,
                 "".join(f"; {name} {value:.4f}" for name, value in heads.items()),
                 "" if record_it else " (metrics.jsonl already holds this evaluation: not appended)")
        return record

    def stopped(self) -> dict[str, Any]:
        step, evaluating, manager = self.step, self.evaluating, self.manager
        if step is not None and step != self.saved_step:
            self.checkpoint()
        if manager is not None:
            manager.wait_until_finished()
        trained = step is not None and step != self.first_step
        if evaluating is not None:
            where = f"during the evaluation of step {evaluating}"
        else:
            where = f"after step {step}" if trained else "before training"
        saved = f"checkpoint saved in {manager.directory}" if trained else "nothing new to save"
        if evaluating is not None and evaluating >= self.num_steps:
            then = "evaluate it"
        elif evaluating is not None:
            then = f"resume (it evaluates step {evaluating} first)"
        else:
            then = "resume"
        log.warning("Stopped by %s %s; %s. Run the same command to %s.", self.stop.signal_name, where, saved, then)
        return {"step": step if step is not None else 0, "stopped_by": self.stop.signal_name}

    def set_up(self) -> None:
        """The data, the trainer, the input pipeline, and the state: restored from the workdir, else initialised."""
        config, data, train_cfg, stop = self.config, self.data, self.train_cfg, self.stop
        log.info("Preparing the data: %s in %s ...", data.name, data.data_dir or "the default TFDS data_dir")
        builder = pipeline.prepare(data.name, data.data_dir, data.manual_dir)
        self.class_names = pipeline.class_names(builder)
        # TFDS split strings: data.train_split="train[:90%]" with data.eval_split="train[90%:]" holds out part of
        # the train split for choosing hyper-parameters (never the validation split)
        train_source = pipeline.source(data.name, data.get("train_split", "train"), data.data_dir)
        self.val_source = pipeline.source(data.name, data.eval_split, data.data_dir)
        stop.check()

        facts = dataset_facts(config.model)  # e.g. the affinity head's statistics, counted the first time
        self.trainer = trainer = Trainer(config, len(self.class_names), facts=facts)
        checkpointing.check_workdir(self.workdir, trainer.abstract_state, train_cfg.keep_checkpoints)
        self.data_iter = iter(train_loader_of(config, train_source))
        self.manager = checkpoint_manager(self.workdir, config)
        self.state, restored_step = checkpointing.restore_latest(self.manager, trainer.abstract_state, self.data_iter)
        if self.state is None:
            _require_backbone_weights(config.model)
            log.info("Initialising %s-%d (compiling its initialiser) ...", config.model.name, config.model.depth)
            start = time.perf_counter()
            self.state = jax.block_until_ready(trainer.initial_state(jax.random.PRNGKey(train_cfg.seed)))
            log.info("Initialised in %.1fs.", time.perf_counter() - start)
            stop.check()
            checkpointing.write_config(self.workdir, config)
        else:
            log.info("Resumed from %s at step %d.", self.manager.directory, restored_step)
        self.first_step = self.step = self.saved_step = int(self.state.step)
        self.metrics_log = MetricsLog(self.workdir)
        self.pictures = ValidationPictures(trainer.model, trainer.family, self.val_source, trainer.evaluator.options,
                                           mesh=trainer.mesh)

    def train(self) -> dict[str, Any]:
        """Evaluates a stopped evaluation first, then trains to num_steps; the last evaluation's record."""
        config, train_cfg, stop, trainer = self.config, self.train_cfg, self.stop, self.trainer
        first_step, num_steps = self.first_step, self.num_steps
        if first_step >= num_steps:
            log.info("%s is already trained to step %d (config.train.num_steps=%d): evaluating that checkpoint.",
                     self.workdir, first_step, num_steps)
            return self.evaluate(first_step)
        if self.is_eval_step(first_step) and first_step not in self.metrics_log.eval_steps:
            log.info("The evaluation of step %d was stopped: evaluating it now.", first_step)
            self.evaluate(first_step)
        if stop.requested:
            return self.stopped()
        log.info("Training %s-%d on %s: steps %d..%d, global batch %d on %d device(s) of %d process(es).",
                 config.model.name, config.model.depth, self.data.name, first_step + 1, num_steps,
                 train_cfg.batch_size, jax.device_count(), jax.process_count())
        with stop.stage():  # A signal during the compilation is honoured when it is done.
            first_batch = trainer.global_batch(next(self.data_iter))
            log.info("Compiling the train step ...")
            start = time.perf_counter()
            train_step = trainer.train_step.lower(self.state, first_batch).compile()
            log.info("Compiled the train step in %.1fs.", time.perf_counter() - start)
        # The clock starts now: steps/s and the ETA exclude the compilation.
        self.progress = progress = Progress(self.metrics_log, learning_rate_schedule(train_cfg), num_steps,
                                            train_cfg.skip_nonfinite, first_step, eval_every=train_cfg.eval_every)
        last_eval, previous_metrics = None, None
        for step in range(first_step + 1, num_steps + 1):
            self.step = step
            batch = first_batch if step == first_step + 1 else trainer.global_batch(next(self.data_iter))
            self.state, step_metrics = train_step(self.state, batch)
            progress.add(step_metrics)
            if step == first_step + 1 or step % train_cfg.log_every == 0:  # the first line: compiled and running
                progress.report(step)
            if step % train_cfg.checkpoint_every == 0 or step == num_steps:
                self.checkpoint()
            if stop_agreed(stop, step, previous_metrics, train_cfg.log_every, num_steps):
                return self.stopped()
            previous_metrics = step_metrics
            if self.is_eval_step(step):
                start = time.perf_counter()
                last_eval = self.evaluate(step)
                progress.eval_seconds = time.perf_counter() - start
                progress.restart_clock()
                if stop.requested:
                    return self.stopped()
        return last_eval
