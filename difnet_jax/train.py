"""Training and evaluation: `train_and_evaluate(config, workdir)`.

One jit-compiled, pure train step (cross-entropy with ignore label 255 on the final
output; SGD with momentum, L2 weight decay and poly learning-rate decay, Sec. 5.1),
run under a device mesh with a 'data' axis: the state is replicated, the global
batch is sharded over the devices, and BatchNorm statistics, computed by jit over
the whole global batch, are synchronised for free. Orbax checkpoints hold the
train state and the data iterator's position; a run resumes from its workdir.
Every logged step and every evaluation is appended to WORKDIR/metrics.jsonl and to
TensorBoard event files in WORKDIR, with pictures of a few validation images at each evaluation.
"""

from __future__ import annotations

import functools
import logging
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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from difnet_jax import checkpointing, pretrained
from difnet_jax.checkpointing import checkpoint_manager
from difnet_jax.constants import IGNORE_LABEL
from difnet_jax.data import pipeline
from difnet_jax.evaluation import metrics
from difnet_jax.evaluation.evaluator import EvalOptions, EvalResult, Evaluator, head_mious
from difnet_jax.models import family_of, pretrained_backbones
from difnet_jax.optimizer import learning_rate_schedule, make_optimizer
from difnet_jax.pictures import ValidationPictures
from difnet_jax.preemption import StopRequests
from difnet_jax.run_log import MetricsLog, Progress

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
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on the model family's loss (`Family.loss`: its total and named terms).

    The model gets a per-step rng, `fold_in(state.rng, step)`, as its 'dropout' stream (no
    current family draws from it; one that does gets a different key every step, the same
    on every device and after a resume). `metrics['nonfinite']` is 1 when the loss or the
    gradient is not finite; with `skip_nonfinite` such a step leaves params, BN statistics
    and optimizer state as they were (the step counter still advances, staying in line with
    the data). Metrics: 'loss' (the total), 'loss/<term>' for every term, pixel accuracy of
    the final output, gradient and parameter norms.
    """
    step_rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
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
    """The compiled pieces of a run on a mesh: init, train step, eval step."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, mesh: Mesh | None = None):
        self.config = config
        self.num_classes = num_classes
        self.mesh = mesh or Mesh(np.array(jax.devices()), ("data",))
        self.family = family_of(config.model)
        self.model = self.family.build(config.model, num_classes)
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
        self.train_step = jax.jit(
            functools.partial(train_step, model=self.model, tx=self.tx, skip_nonfinite=config.train.skip_nonfinite,
                              loss_fn=lambda outputs, batch: self.family.loss(outputs, batch, config.model)),
            in_shardings=(self.state_sharding, self.data_sharding),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=0,
        )
        self.evaluator = Evaluator(self.model, self.family, num_classes, EvalOptions.from_config(config.data),
                                   data_sharding=self.data_sharding)

    def initial_state(self, rng: jax.Array) -> TrainState:
        """A fresh state; backbones listed by `model.backbone_init_branches` start from `model.backbone_init`."""
        state = self.init(rng)
        if not self.pretrained:
            return state
        model_cfg = self.config.model
        resnet = pretrained.load_resnet(model_cfg.backbone_init, model_cfg.depth, model_cfg.width,
                                        verify=model_cfg.verify_backbone_init)
        params, batch_stats = pretrained.initialise_backbones(state.params, state.batch_stats, resnet, self.pretrained)

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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming from its latest checkpoint) and evaluates it.

    Returns the last evaluation: {'step', 'val/miou', 'val/pixel_accuracy', 'val/iou'},
    plus 'stopped_by' (the signal's name) when SIGTERM/SIGINT ended the run early.
    """
    data, train_cfg = config.data, config.train
    num_devices = jax.device_count()
    for key in ("batch_size", "eval_batch_size"):
        if train_cfg[key] % num_devices:
            raise ValueError(f"config.train.{key}={train_cfg[key]} must be divisible by the {num_devices} devices")
    checkpointing.check_resume_config(workdir, config)
    builder = pipeline.prepare(data.name, data.data_dir, data.manual_dir)
    class_names = pipeline.class_names(builder)
    train_source = pipeline.source(data.name, "train", data.data_dir)
    val_source = pipeline.source(data.name, data.eval_split, data.data_dir)

    trainer = Trainer(config, len(class_names))
    checkpointing.check_workdir(workdir, trainer.abstract_state, train_cfg.keep_checkpoints)
    loader = pipeline.train_loader(
        train_source, global_batch_size=train_cfg.batch_size, crop_size=data.crop_size,
        scale_range=tuple(data.scale_range), seed=train_cfg.seed, num_workers=data.num_workers,
    )
    data_iter = iter(loader)
    manager = checkpoint_manager(workdir, config)
    state, restored_step = checkpointing.restore_latest(manager, trainer.abstract_state, data_iter)
    if state is None:
        state = trainer.initial_state(jax.random.PRNGKey(train_cfg.seed))
        checkpointing.write_config(workdir, config)
    else:
        log.info("Resumed from %s at step %d.", manager.directory, restored_step)

    def save(step: int) -> None:
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter),
        ))

    def evaluate(step: int) -> dict[str, Any]:
        start = time.perf_counter()
        result = trainer.evaluate(state, val_source, batch_size=train_cfg.eval_batch_size)
        summary = metrics.summarize(result.confusion, class_names)
        heads = head_mious(result)
        record = {"step": step, "val/miou": summary["miou"], "val/pixel_accuracy": summary["pixel_accuracy"],
                  "val/iou": summary["iou"], **{f"val/miou_{name}": value for name, value in heads.items()}}
        seconds = time.perf_counter() - start
        metrics_log.write(record, pictures=pictures.render({"params": state.params, "batch_stats": state.batch_stats}))
        log.info("eval step %d: mIoU %.4f, pixel accuracy %.4f (%d images, %.1fs)%s", step, summary["miou"],
                 summary["pixel_accuracy"], len(val_source), seconds,
                 "".join(f"; {name} {value:.4f}" for name, value in heads.items()))
        return record

    metrics_log = MetricsLog(workdir)
    pictures = ValidationPictures(trainer.model, trainer.family, val_source, trainer.evaluator.options,
                                  mesh=trainer.mesh)
    first_step = int(state.step)
    num_steps = train_cfg.num_steps
    log.info("Training %s-%d on %s: steps %d..%d, global batch %d on %d device(s) of %d process(es).",
             config.model.name, config.model.depth, data.name, first_step + 1, num_steps, train_cfg.batch_size,
             num_devices, jax.process_count())
    last_eval = None
    progress = Progress(metrics_log, learning_rate_schedule(train_cfg), num_steps, train_cfg.skip_nonfinite,
                        first_step)
    try:  # However the loop ends, pending checkpoint writes finish: the last good one is kept.
        with StopRequests() as stop:
            for step in range(first_step + 1, num_steps + 1):
                state, step_metrics = trainer.train_step(state, trainer.global_batch(next(data_iter)))
                progress.add(step_metrics)
                stopping = stop.requested  # read once: a signal may arrive at any point of the step
                must_save = step % train_cfg.checkpoint_every == 0 or step == num_steps or stopping
                if step % train_cfg.log_every == 0 or must_save:  # A checkpoint is only written after this check.
                    progress.report(step)
                if must_save:
                    save(step)
                if stopping:
                    manager.wait_until_finished()
                    log.warning("Stopped by %s after step %d; checkpoint saved in %s. Run the same command to resume.",
                                stop.signal_name, step, manager.directory)
                    return {"step": step, "stopped_by": stop.signal_name}
                if step % train_cfg.eval_every == 0 or step == num_steps:
                    last_eval = evaluate(step)
                    progress.restart_clock()
    finally:
        manager.wait_until_finished()
        manager.close()
    if last_eval is None:  # Already trained to num_steps: evaluate the restored state.
        last_eval = evaluate(first_step)
    return last_eval
