"""A trained run as a Python object, for notebooks and scripts: `difnet_jax.load(workdir)`.

    import difnet_jax
    model = difnet_jax.load("runs/difnet18_synthetic")    # the latest checkpoint; step=N for another
    labels = model.predict(image)                          # (H, W) uint8 class indices of an (H, W, 3) uint8 image
    probabilities = model.probabilities(image)             # (H, W, K) float32
    walks = model.intermediates(image)["walks"]            # DifNet's y_1..y_T on the seed grid

Images are RGB uint8 arrays, one (H, W, 3) or a batch (B, H, W, 3) of one size; each call pads
them (mean colour, bottom/right) to the network size 8k + 1 of each side
(`evaluator.network_size`), runs `evaluator.model_probabilities` (the evaluation's own
arithmetic, optionally multi-scale and flipped) and crops back. It runs on whatever devices
JAX has; a new image size compiles once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from difnet_jax import restore
from difnet_jax.data import pipeline
from difnet_jax.evaluator import model_probabilities, network_size


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """(B, H, W, 3) uint8 and whether a single image was given; ValueError naming the shape or dtype."""
    array = np.asarray(images)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"images must be (H, W, 3) or (B, H, W, 3) RGB arrays, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got dtype {array.dtype}")
    return (array[None], True) if array.ndim == 3 else (array, False)


class TrainedModel:
    """A restored run (`load`): segments images, exposes the model's intermediates.

    Attributes: `config` (the run's ConfigDict), `class_names`, `step` (the checkpoint's),
    `model` (the Linen module), `variables` ({'params', 'batch_stats'}), `run` (the
    `restore.Run`, for code that takes one, e.g. `mechanism.run_study`).
    """

    def __init__(self, run: restore.Run):
        self.run = run
        self._forward = jax.jit(lambda variables, images: run.model.apply(variables, images, train=False))

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.run.config

    @property
    def class_names(self) -> list[str]:
        return self.run.class_names

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def model(self):
        return self.run.model

    @property
    def variables(self) -> dict[str, Any]:
        return self.run.variables

    @property
    def num_parameters(self) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(self.run.state.params))

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.model.name}-{self.config.model.depth} on {self.config.data.name}, "
                f"step {self.step}, {len(self.class_names)} classes, workdir {self.run.workdir!r})")

    def _network_input(self, batch: np.ndarray) -> jax.Array:
        height, width = batch.shape[1:3]
        blank = np.zeros((height, width), np.uint8)
        padded = [pipeline.pad_to(image, blank, network_size(height), network_size(width))[0] for image in batch]
        return jnp.asarray(pipeline.normalize(np.stack(padded)))

    def probabilities(self, images: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = False
                      ) -> np.ndarray:
        """Softmax probabilities (H, W, K) or (B, H, W, K) float32, averaged over `scales` (and flips)."""
        batch, single = _as_batch(images)
        height, width = batch.shape[1:3]
        probabilities = model_probabilities(self.model, self.variables, self._network_input(batch),
                                            tuple(float(s) for s in scales), flip)
        probabilities = np.asarray(jax.device_get(probabilities[:, :height, :width]), np.float32)
        return probabilities[0] if single else probabilities

    def predict(self, images: np.ndarray, *, scales: Sequence[float] = (1.0,), flip: bool = False) -> np.ndarray:
        """Class indices (H, W) or (B, H, W) uint8: the argmax of `probabilities`."""
        return self.probabilities(images, scales=scales, flip=flip).argmax(-1).astype(np.uint8)

    def intermediates(self, images: np.ndarray) -> dict[str, Any]:
        """The model's intermediates dict as numpy arrays (single scale), e.g. DifNet's 'seed', 'walks', 'mu',
        'beta', PDN's 'layer_logits', DeepLabv3+'s 'affinity_logits'.

        Maps cover the padded input, network_size(H) x network_size(W), the image in its
        top-left corner (a stride-8 grid: (network_size - 1) / 8 + 1 cells a side). For one
        image the per-image maps (arrays of 3 or more axes) lose their batch axis.
        """
        batch, single = _as_batch(images)
        _, intermediates = jax.device_get(self._forward(self.variables, self._network_input(batch)))
        if single:
            intermediates = jax.tree.map(lambda x: x[0] if np.ndim(x) >= 3 else x, intermediates)
        return intermediates


def load(workdir: str, step: int | None = None, *, config: ml_collections.ConfigDict | None = None
         ) -> TrainedModel:
    """The run in `workdir` at checkpoint `step` (default: the latest), with its config.json unless `config`."""
    return TrainedModel(restore.load_run(workdir, config, step))
