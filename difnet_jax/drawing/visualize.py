"""Colour-coded label maps (the VOC palette), overlays, and the mechanism-study figures 2-4.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state):
- Fig. 2 (`plot_seed_maps`): image, ground truth, argmax of the score map x,
  influence map E_i = sum_k |x_ik| and importance map M.
- Fig. 3 (`plot_transition_rows`): rows P_t[i, :] of selected nodes i reshaped to the
  seed grid, one column per walk t, the node marked.
- Fig. 4 (`plot_walks`): the seed and the output after each random walk, colour-coded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from PIL import Image

VOID = 255


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """(num_colors, 3) uint8: Pascal VOC's colour map (bits of the index spread over R, G, B)."""
    palette = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, red, green, blue = index, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


PALETTE = voc_palette()


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) class indices (255 = void) -> (H, W, 3) uint8 VOC colours."""
    return PALETTE[np.asarray(labels, np.uint8)]


def indexed_image(labels: np.ndarray) -> Image.Image:
    """A palette ("P") PIL image whose pixel values are the class indices."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"class indices must be in 0..255, got {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L"; putpalette turns it into "P", values kept
    image.putpalette(PALETTE.reshape(-1).tolist())
    return image


def side_by_side_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, 2W, 3) uint8: the image | the colour-coded labels blended over the image."""
    image = np.asarray(image, np.uint8)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(labels).astype(np.float32)
    return np.concatenate([image, np.clip(blend + 0.5, 0, 255).astype(np.uint8)], axis=1)


def _figure(rows: int, cols: int, cell_inches: float = 1.6) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(cols * cell_inches, rows * (cell_inches + 0.2) + 0.3), dpi=100)  # room for labels
    FigureCanvasAgg(figure)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figure, axes


def _save(figure: Figure, path: str) -> str:
    figure.tight_layout(pad=0.3)
    figure.savefig(path, format="png")
    return path


def _show_labels(ax, labels: np.ndarray, title: str | None = None) -> None:
    ax.imshow(colorize(labels), interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def _show_heat(ax, values: np.ndarray, title: str | None = None, vmin=None, vmax=None, cmap: str = "inferno",
               norm=None):
    ax.imshow(values, cmap=cmap, vmin=None if norm else vmin, vmax=None if norm else vmax, norm=norm,
              interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def plot_seed_maps(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], score_argmax: Sequence[np.ndarray],
                   influence: Sequence[np.ndarray], importance: Sequence[np.ndarray], path: str) -> str:
    """Fig. 2: one row per image: image, ground truth, argmax x, E(x), M(x)."""
    figure, axes = _figure(len(images), 5)
    titles = ("image", "ground truth", "score map x (argmax)", "influence E(x)", "importance M(x)")
    for row, parts in enumerate(zip(images, labels, score_argmax, influence, importance)):
        image, label, argmax, energy, weight = parts
        axes[row, 0].imshow(image)
        _show_labels(axes[row, 1], label)
        _show_labels(axes[row, 2], argmax)
        _show_heat(axes[row, 3], energy, vmin=0.0)
        _show_heat(axes[row, 4], weight, cmap="viridis")  # its own range, shown below it
        axes[row, 3].set_xlabel(f"0 .. {energy.max():.1f}", fontsize=7)
        axes[row, 4].set_xlabel(f"{weight.min():.2f} .. {weight.max():.2f}", fontsize=7)
        if row == 0:
            for ax, title in zip(axes[0], titles):
                ax.set_title(title, fontsize=8)
    return _save(figure, path)


def plot_transition_rows(image: np.ndarray, nodes: Sequence[tuple[int, int]], rows: np.ndarray,
                         walk_names: Sequence[str], path: str, node_names: Sequence[str] | None = None,
                         stride: int = 8, gamma: float = 0.25) -> str:
    """Fig. 3: per node i (one row), the image with i marked and P_t[i, :] on the seed grid for each walk t.

    `rows` is (num_nodes, T, h', w'); node (y, x) is in seed-grid cells, pixel (stride*y, stride*x).
    Colour follows P ** gamma from 0 to the row's maximum, so that small weights stay visible.
    """
    num_nodes, num_walks = rows.shape[:2]
    figure, axes = _figure(num_nodes, num_walks + 1)
    for n, (y, x) in enumerate(nodes):
        axes[n, 0].imshow(image)
        axes[n, 0].plot([stride * x], [stride * y], marker="+", color="cyan", markersize=12, markeredgewidth=2)
        name = f"node {n + 1} ({y},{x})" + (f"\n{node_names[n]}" if node_names else "")
        axes[n, 0].set_title(name, fontsize=7)
        for t in range(num_walks):
            ax = axes[n, t + 1]
            _show_heat(ax, rows[n, t], norm=PowerNorm(gamma, vmin=0.0, vmax=float(rows[n, t].max())))
            ax.set_xlabel(f"max {rows[n, t].max():.2f}" + (f", colour ~ P^{gamma:g}" if n == 0 else ""), fontsize=7)
            ax.plot([x], [y], marker="+", color="cyan", markersize=10, markeredgewidth=1.5)
            if n == 0:
                ax.set_title(f"P{t + 1} row ({walk_names[t]})", fontsize=8)
    return _save(figure, path)


def plot_walks(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], seeds: Sequence[np.ndarray],
               walks: Sequence[Sequence[np.ndarray]], path: str) -> str:
    """Fig. 4: one row per image: image, ground truth, argmax of the seed, argmax after each walk RW_t."""
    num_walks = len(walks[0])
    figure, axes = _figure(len(images), num_walks + 3)
    titles = ["image", "ground truth", "seed"] + [f"RW{t + 1}" for t in range(num_walks)]
    for row, (image, label, seed, outputs) in enumerate(zip(images, labels, seeds, walks)):
        axes[row, 0].imshow(image)
        _show_labels(axes[row, 1], label)
        _show_labels(axes[row, 2], seed)
        for t, output in enumerate(outputs):
            _show_labels(axes[row, t + 3], output)
        if row == 0:
            for ax, title in zip(axes[0], titles):
                ax.set_title(title, fontsize=8)
    return _save(figure, path)


def plot_prediction_columns(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                            columns: dict[str, Sequence[np.ndarray]], path: str) -> str:
    """One row per image: image, ground truth, then one label map per named column (e.g. PDN's layers)."""
    names = list(columns)
    figure, axes = _figure(len(images), len(names) + 2)
    for row, (image, label) in enumerate(zip(images, labels)):
        axes[row, 0].imshow(image)
        _show_labels(axes[row, 1], label)
        for col, name in enumerate(names):
            _show_labels(axes[row, col + 2], columns[name][row])
        if row == 0:
            for ax, title in zip(axes[0], ["image", "ground truth", *names]):
                ax.set_title(title, fontsize=8)
    return _save(figure, path)
