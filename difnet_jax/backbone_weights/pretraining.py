"""Pretraining like ImageNet for the synthetic protocol: a ResNet classifier on `synthetic_classes`, in torchvision's
layout.

PDN, Dilated Affinity and DeepLab fine-tune ImageNet ResNets (DA Sec. 4.1, PDN Sec. 4.1); on the
synthetic data the `pretrained` modifier fine-tunes from this instead. The recipe is torchvision's
ImageNet classifier scaled down to minutes on a CPU:
- the network: the project's ResNet (torchvision layout, the one `backbone_init` imports), global
  average pooling of layer4, a linear layer `fc`, cross-entropy over the 20 classes;
- the data: `synthetic_classes` (one object per 64x64 image on the scenes' backgrounds), normalised
  with ImageNet's mean and std as the segmentation input is, random crops of the image padded by
  `pad` pixels (edges replicated) and random horizontal flips;
- the optimizer: SGD with momentum 0.9 and Nesterov, weight decay 1e-4 on the kernels (torchvision's
  value), linear warm-up then cosine decay to 0.
Our choice where ImageNet's recipe cannot carry over: the ResNet runs at output stride 16 (layer4
dilated by 2), the coarsest stride the project's atrous ResNet has, where torchvision's classifiers
run at 32; the parameters are the same, and fine-tuning re-dilates them as it does ImageNet's.

The weights go to a `.npz` with torchvision's state-dict keys (`fc.*` included, `backbone_init`
ignores them) and the reference forward pass `experiments.convert_weights` stores, so the import
verifies them as it verifies converted ImageNet files; a `.json` beside it records the settings,
the held-out accuracy and the time taken. Made once per (depth, width), in `cache_dir()`, by
`python -m experiments.pretrain` or by the first training run that needs it (`ensure_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from difnet_jax.backbone_weights import files, loading, reference
from difnet_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from difnet_jax.models.resnet import ResNet

log = logging.getLogger(__name__)

DATASET = "synthetic_classes"  # the value of `model.backbone_pretraining` that ensure_weights makes
VERSION = 1  # in the file name: a change of the recipe's defaults gets new files
CACHE_ENV = "DIFNET_JAX_CACHE"


@dataclasses.dataclass(frozen=True)
class Settings:
    """One pretraining run; the defaults are `python -m experiments.pretrain`'s (about the README's minutes)."""

    depth: int = 18
    width: int = 16
    dataset: str = DATASET  # a TFDS name with integer `label`s: "synthetic_classes" or "synthetic_classes/tiny"
    steps: int = 1000  # 96 % held-out accuracy at depth 18 (README: python -m experiments.pretrain)
    batch_size: int = 64
    lr: float = 0.1
    warmup_steps: int = 100
    momentum: float = 0.9
    weight_decay: float = 1e-4
    pad: int = 8  # random crops of the image padded by this much on each side
    output_stride: int = 16
    seed: int = 0
    log_every: int = 100


def cache_dir() -> str:
    """$DIFNET_JAX_CACHE, else $XDG_CACHE_HOME/difnet_jax, else ~/.cache/difnet_jax."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    return os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache"), "difnet_jax")


def default_weights_path(depth: int, width: int) -> str:
    """Where the synthetic ResNet-`depth` of `width` lives: made once, read by every `pretrained` run."""
    return os.path.join(cache_dir(), f"{DATASET}_resnet{depth}_w{width}_v{VERSION}.npz")


def default_weights_path_ref(model: ml_collections.ConfigDict) -> ml_collections.FieldReference:
    """`default_weights_path` of `model.depth` and `model.width` as a config reference: it follows their overrides."""
    prefix, suffix = default_weights_path(0, 0).split("resnet0_w0")
    return prefix + "resnet" + model.get_ref("depth").to_str() + "_w" + model.get_ref("width").to_str() + suffix


class Classifier(nn.Module):
    """ResNet -> global average pool of layer4 -> linear `fc`: torchvision's ResNet classifier."""

    num_classes: int
    depth: int
    width: int
    output_stride: int = 16

    @nn.compact
    def __call__(self, x, *, train: bool):
        features = ResNet(self.depth, self.width, output_stride=self.output_stride, name="backbone")(x, train=train)
        pooled = features["layer4"].mean(axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(pooled)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 (x - mean) / std with ImageNet's mean and std (the segmentation input's)."""
    return (images.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def load_split(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), labels int32 (N,)) of a prepared split, all in memory (64x64 images: small)."""
    import tensorflow_datasets as tfds

    import difnet_jax.data  # noqa: F401  (registers the builders)

    source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    records = [source[i] for i in range(len(source))]
    return (np.stack([np.asarray(r["image"]) for r in records]),
            np.array([int(r["label"]) for r in records], np.int32))


def prepare(name: str, data_dir: str | None) -> int:
    """Builds the classification dataset unless it is there; returns its number of classes."""
    import tensorflow_datasets as tfds

    import difnet_jax.data  # noqa: F401  (registers the builders)
    from difnet_jax.data import tfds_side_effects

    builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    with tfds_side_effects.plain_progress():
        builder.download_and_prepare()
    return builder.info.features["label"].num_classes


def augment(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Random crops of the images padded by `pad` (edges replicated) and random horizontal flips, per image."""
    count, height, width = images.shape[:3]
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    tops, lefts = rng.integers(0, 2 * pad + 1, count), rng.integers(0, 2 * pad + 1, count)
    flips = rng.uniform(size=count) < 0.5
    out = np.empty_like(images)
    for i in range(count):
        crop = padded[i, tops[i] : tops[i] + height, lefts[i] : lefts[i] + width]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


def _schedule(settings: Settings) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, settings.lr, min(settings.warmup_steps, settings.steps - 1),
                                              settings.steps)


def _optimizer(settings: Settings) -> optax.GradientTransformation:
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)
    return optax.chain(optax.add_decayed_weights(settings.weight_decay, mask=decay_mask),
                       optax.sgd(_schedule(settings), momentum=settings.momentum, nesterov=True))


def accuracy(model: Classifier, variables: dict, images: np.ndarray, labels: np.ndarray, batch_size: int = 250,
             ) -> float:
    """Top-1 accuracy of the classifier in evaluation mode (running BatchNorm statistics)."""
    predict = jax.jit(lambda v, x: model.apply(v, x, train=False).argmax(-1))
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start : start + batch_size])
        correct += int((np.asarray(predict(variables, batch)) == labels[start : start + batch_size]).sum())
    return correct / max(len(images), 1)


def torchvision_state_dict(variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """The classifier's variables under torchvision's keys and shapes (`loading.torchvision_name`)."""
    tensors = {}
    for collection in ("params", "batch_stats"):
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection]["backbone"]):
            path = tuple(k.key for k in key_path)
            value = np.asarray(leaf, np.float32)
            if collection == "params" and path[-1] == "kernel":
                value = value.transpose(3, 2, 0, 1)  # (kh, kw, I, O) -> (O, I, kh, kw)
            tensors[loading.torchvision_name(collection, path)] = value
    tensors["fc.weight"] = np.asarray(variables["params"]["fc"]["kernel"], np.float32).T  # (classes, channels)
    tensors["fc.bias"] = np.asarray(variables["params"]["fc"]["bias"], np.float32)
    return tensors


def save(path: str, variables: dict[str, Any], settings: Settings, record: dict[str, Any]) -> None:
    """Writes the torchvision-layout `.npz` with its reference forward pass, checked first, and the `.json` record."""
    tensors = torchvision_state_dict(variables)
    x = loading.fixed_input()
    tensors[loading.REFERENCE_INPUT] = x
    tensors[loading.REFERENCE_OUTPUT] = reference.resnet_features(tensors, x, settings.depth)["layer4"]
    imported = loading.import_resnet(tensors, settings.depth, settings.width, source=path)
    loading.verify_import(imported, tensors, settings.depth, settings.width, source=path)
    files.write_npz(path, tensors)
    with open(path + ".json.tmp", "w") as f:
        json.dump({"settings": dataclasses.asdict(settings), **record}, f, indent=1)
    os.replace(path + ".json.tmp", os.path.splitext(path)[0] + ".json")


def pretrain(settings: Settings, output: str, data_dir: str | None = None) -> dict[str, Any]:
    """Trains the classifier of `settings`, writes `output` (see `save`); returns the record written beside it.

    Record: {'val_accuracy', 'train_accuracy' (of the last `log_every` steps), 'seconds', 'steps'}.
    Progress lines (loss, accuracy, steps/s, ETA) every `log_every` steps at INFO.
    """
    start = time.perf_counter()
    num_classes = prepare(settings.dataset, data_dir)
    train_images, train_labels = load_split(settings.dataset, "train", data_dir)
    val_images, val_labels = load_split(settings.dataset, "validation", data_dir)
    model = Classifier(num_classes, settings.depth, settings.width, settings.output_stride)
    variables = model.init(jax.random.PRNGKey(settings.seed), jnp.zeros((1, *train_images.shape[1:]), jnp.float32),
                           train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = _optimizer(settings)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def objective(params):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                          mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (updates["batch_stats"], (logits.argmax(-1) == labels).mean())

        (loss, (batch_stats, acc)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss, acc

    rng = np.random.default_rng(settings.seed)
    order, position = rng.permutation(len(train_images)), 0
    log.info("Pretraining ResNet-%d (width %d) on %s (%d images, %d classes): %d steps of batch %d -> %s",
             settings.depth, settings.width, settings.dataset, len(train_images), num_classes, settings.steps,
             settings.batch_size, output)
    window, window_start = [], time.perf_counter()
    train_accuracy = float("nan")
    for step_index in range(1, settings.steps + 1):
        if position + settings.batch_size > len(order):  # a new epoch: reshuffle
            order, position = rng.permutation(len(train_images)), 0
        indices = order[position : position + settings.batch_size]
        position += settings.batch_size
        images = normalise(augment(train_images[indices], settings.pad, rng))
        params, batch_stats, opt_state, loss, acc = step(params, batch_stats, opt_state, images,
                                                         train_labels[indices])
        window.append((loss, acc))
        if step_index % settings.log_every == 0 or step_index == settings.steps:
            losses, accs = np.asarray(jax.device_get(window)).T
            if not np.all(np.isfinite(losses)):
                raise FloatingPointError(f"pretraining diverged at step {step_index} (loss {losses[-1]})")
            rate = len(window) / (time.perf_counter() - window_start)
            train_accuracy = float(accs.mean())
            log.info("pretrain step %d/%d: loss %.3f, accuracy %.3f, lr %.4f, %.1f steps/s, ETA %.1f min",
                     step_index, settings.steps, losses.mean(), train_accuracy,
                     float(_schedule(settings)(step_index)), rate, (settings.steps - step_index) / rate / 60)
            window, window_start = [], time.perf_counter()
    variables = {"params": params, "batch_stats": batch_stats}
    val_accuracy = accuracy(model, variables, val_images, val_labels)
    record = {"val_accuracy": val_accuracy, "train_accuracy": train_accuracy, "steps": settings.steps,
              "seconds": time.perf_counter() - start, "val_images": len(val_images)}
    save(output, variables, settings, record)
    log.info("Pretrained ResNet-%d (width %d): held-out accuracy %.3f on %d images, %.1f min; wrote %s",
             settings.depth, settings.width, val_accuracy, len(val_images), record["seconds"] / 60, output)
    return record


def ensure_weights(model: ml_collections.ConfigDict, data_dir: str | None = None, **settings) -> bool:
    """Makes `model.backbone_init` by pretraining when `model.backbone_pretraining` names this recipe and the
    file is missing (the `pretrained` modifier); True when it pretrained. Other configs are left alone.

    `settings` override `Settings`' defaults (tests: a tiny dataset and a few steps); depth and width are the model's.
    """
    recipe = model.get("backbone_pretraining", "")
    if not recipe or not model.backbone_init or os.path.isfile(model.backbone_init):
        return False
    if recipe != DATASET:
        raise ValueError(f"config.model.backbone_pretraining={recipe!r}: the only pretraining is {DATASET!r}")
    log.info("%s is missing: pretraining it now on %s, once (a few minutes per ResNet-18 of width 16 on 2 CPU "
             "cores; `python -m experiments.pretrain` makes it ahead of time).", model.backbone_init, DATASET)
    pretrain(Settings(depth=model.depth, width=model.width, **settings), model.backbone_init, data_dir)
    return True
