"""Valid receptive fields (Zhao et al.; PDN paper Fig. 4): where one output site looks in the image.

`valid_receptive_field` is the gradient magnitude of one output site's score with respect to
the input image, summed over the image's channels. The score is the site's predicted (argmax)
class: the score that decides the site's label, as in Fig. 4. (The sum over classes would
mostly measure what moves all logits together, which softmax ignores.) `plot_receptive_fields`
draws Fig. 4's comparison (e.g. ResNet alone, with the 8NB and the 24NB module) to a PNG.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def valid_receptive_field(apply_fn: Callable[[jax.Array], jax.Array], image, site: Sequence[int]) -> np.ndarray:
    """(H, W) float32: |d score(site) / d image| summed over channels.

    apply_fn: images (1, H, W, C) -> class scores (1, h, w, K) (e.g. a score map on the 1/8
    grid); image (H, W, C); site (row, col) on the scores' grid. The score is the class the
    site predicts (argmax, held fixed while differentiating).
    """
    image = jnp.asarray(image, jnp.float32)[None]
    row, col = site
    scores = jax.jit(apply_fn)(image)
    if scores.ndim != 4 or scores.shape[0] != 1:
        raise ValueError(f"apply_fn must return (1, h, w, K) scores, got {scores.shape}")
    if not (0 <= row < scores.shape[1] and 0 <= col < scores.shape[2]):
        raise ValueError(f"site {tuple(site)} is outside the {scores.shape[1:3]} score grid")
    k = int(jnp.argmax(scores[0, row, col]))
    grad = jax.jit(jax.grad(lambda x: apply_fn(x)[0, row, col, k].astype(jnp.float32)))(image)
    return np.asarray(jnp.abs(grad[0]).sum(-1), np.float32)


def model_scores(model, variables, key: str | None = "score_map") -> Callable[[jax.Array], jax.Array]:
    """apply_fn for a family's model in eval mode: its intermediates[key] (None: the final logits)."""

    def apply_fn(images):
        logits, intermediates = model.apply(variables, images, train=False)
        return logits if key is None else intermediates[key]

    return apply_fn


def plot_receptive_fields(maps: Mapping[str, np.ndarray], path: str, image: np.ndarray | None = None,
                          point: Sequence[int] | None = None, cell_inches: float = 2.2) -> str:
    """Fig. 4: optionally the image, then one panel per named map (each normalised to its maximum).

    image: (H, W, 3) on the 0..255 scale. point: (row, col) in image pixels, marked with a
    red dot on every panel. Returns `path`.
    """
    panels = ([("image", None)] if image is not None else []) + list(maps.items())
    if not panels:
        raise ValueError("nothing to draw: no maps and no image")
    figure = Figure(figsize=(len(panels) * cell_inches, cell_inches + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(1, len(panels), squeeze=False)[0])
    for ax, (name, field) in zip(axes, panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if field is None:
            ax.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
        else:
            field = np.asarray(field, np.float32)
            ax.imshow(field / max(float(field.max()), 1e-12), cmap="magma", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
        if point is not None:
            ax.plot([point[1]], [point[0]], "o", color="red", markersize=4)
        ax.set_title(name, fontsize=9)
    figure.tight_layout(pad=0.3)
    figure.savefig(path, format="png")
    return path
