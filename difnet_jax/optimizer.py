"""The optimizer: SGD (the paper's, Sec. 5.1) or AdamW, poly decay, per-parameter-group rates and decay.

Parameter groups (labels of `parameter_groups`):
  pretrained_decay / pretrained_no_decay   backbones initialised from ImageNet weights
  new_decay / new_no_decay                 everything else: ASPP, importance map, Psi, mu/beta, and
                                           backbones trained from scratch
  frozen                                   BatchNorm scale/bias of pretrained backbones when
                                           `model.frozen_backbone_bn` (statistics frozen too)
The learning rate of a group is lr * train.{pretrained,new}_lr_scale (DeepLab fine-tunes with
x1 / x10). `train.weight_decay_on` = "all" decays every parameter, BatchNorm and the mu/beta
logits included (the DifNet authors' single-rate SGD); "kernels" decays only convolution
kernels: BatchNorm scale/bias, biases and the mu/beta logits are not pulled towards 0, the
usual choice when fine-tuning (decaying the logits pulls mu and beta towards 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import optax

OPTIMIZERS = ("sgd", "adamw")
WEIGHT_DECAY_ON = ("all", "kernels")
GROUPS = ("pretrained_decay", "pretrained_no_decay", "new_decay", "new_no_decay", "frozen")


def learning_rate_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
    """lr_t = lr * (1 - t / num_steps) ** power (DeepLab's "poly" policy)."""
    return optax.polynomial_schedule(train.lr, 0.0, train.lr_power, train.num_steps)


def parameter_groups(params, train: ml_collections.ConfigDict, pretrained: Sequence[str] = (),
                     frozen_bn: bool = False):
    """A tree like `params` holding each parameter's group label (see the module docstring).

    `pretrained` names the top-level modules initialised from ImageNet weights. A ResNet's
    only parameters besides convolution kernels are its BatchNorm scales and biases.
    """
    decay_on = train.get("weight_decay_on", "all")  # .get: configs saved before the key existed
    if decay_on not in WEIGHT_DECAY_ON:
        raise ValueError(f"config.train.weight_decay_on must be one of {WEIGHT_DECAY_ON}, got {decay_on!r}")

    def label(path, _):
        names = [k.key for k in path]
        is_pretrained, is_kernel = names[0] in pretrained, names[-1] == "kernel"
        if is_pretrained and frozen_bn and not is_kernel:
            return "frozen"
        decayed = decay_on == "all" or is_kernel
        return f"{'pretrained' if is_pretrained else 'new'}_{'decay' if decayed else 'no_decay'}"

    return jax.tree_util.tree_map_with_path(label, params)


def _group_optimizer(train: ml_collections.ConfigDict, lr_scale: float, weight_decay: float):
    base = learning_rate_schedule(train)
    schedule = lambda step: lr_scale * base(step)
    if train.optimizer == "sgd":  # L2 decay added to the gradient, as torch.optim.SGD
        return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=train.momentum))
    if train.optimizer == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019)
        return optax.adamw(schedule, weight_decay=weight_decay)
    raise ValueError(f"config.train.optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}")


def make_optimizer(train: ml_collections.ConfigDict, pretrained: Sequence[str] = (),
                   frozen_bn: bool = False) -> optax.GradientTransformation:
    """The run's optimizer; with the defaults every parameter gets lr and weight decay alike.

    "sgd": momentum SGD with L2 weight decay, the paper's. "adamw": Adam with decoupled
    weight decay; it learns a from-scratch network within the few hundred steps a CPU
    run affords (the synthetic configs).
    """
    scales = {"pretrained": train.get("pretrained_lr_scale", 1.0), "new": train.get("new_lr_scale", 1.0)}
    transforms = {
        f"{group}_{kind}": _group_optimizer(train, scales[group], train.weight_decay if kind == "decay" else 0.0)
        for group in scales for kind in ("decay", "no_decay")
    }
    transforms["frozen"] = optax.set_to_zero()
    return optax.multi_transform(
        transforms, lambda params: parameter_groups(params, train, pretrained, frozen_bn)
    )
