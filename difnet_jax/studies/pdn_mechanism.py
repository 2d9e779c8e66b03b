"""PDN's mechanism figures: each diffusion layer's prediction (Table 2's reading) and valid receptive fields (Fig. 4).

- `layer_predictions`: the argmax of every diffusion layer's classifier (upsampled to the image)
  and of the final output, for a few validation images of a trained PDN run.
- Valid receptive fields: the gradient magnitude of one output site's predicted class score
  (ASPP scores on the feature grid) with respect to the input image (`receptive_field`), for
  the trained run and, at the run's depth and width with random weights (the figure is about
  architecture), the backbone without a module (Sim-DeepLab), with an 8NB and with a 24NB module.
- `module_statistics`: how much of the image each diffusion module carries, layer by layer: the spatial
  spread of its input (the 1x1 reduction) against its common offset, and of every layer's depth map. A module whose
  depth maps are nearly constant over the image (gates and candidates saturated by a large offset, or a signal
  attenuated by small weights) leaves its layer classifiers only the class prior (Table 2's reading fails).
- `run_pdn_study`: the figures and the statistics for a restored run, written to WORKDIR/mechanism/.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.drawing import visualize
from difnet_jax.evaluation.evaluator import head_logits
from difnet_jax.models import FAMILIES, PDN, SimDeepLab
from difnet_jax.studies import receptive_field
from difnet_jax.studies.difnet_mechanism import study_images
from difnet_jax.timing import random_variables

log = logging.getLogger(__name__)


def layer_predictions(run, canvases: np.ndarray) -> dict[str, np.ndarray]:
    """{'layer1'.., 'final'}: (B, H, W) argmax of each head of a PDN run on normalised `canvases`."""
    heads = jax.jit(lambda v, x: head_logits(run.model, FAMILIES["pdn"], v, x))(run.variables, jnp.asarray(canvases))
    ordered = [name for name in heads if name != "final"] + ["final"]
    return {name: np.asarray(heads[name].argmax(-1)) for name in ordered}


def receptive_field_maps(model: PDN, variables: dict[str, Any], canvas: np.ndarray,
                         site: tuple[int, int]) -> dict[str, np.ndarray]:
    """Fig. 4's panels for one normalised canvas (H, W, 3) and a site on the feature grid."""
    image = jnp.asarray(canvas)[None]
    models = {
        f"trained PDN-{model.depth} {model.neighbors}NB": (model, variables),
        "ResNet + ASPP, no module (random)": SimDeepLab(model.num_classes, depth=model.depth, width=model.width,
                                                         aspp_rates=model.aspp_rates, dtype=model.dtype,
                                                         resnet_layout=model.resnet_layout),
        "8NB module (random)": model.clone(neighbors=8, num_modules=1),
        "24NB module (random)": model.clone(neighbors=24, num_modules=1),
    }
    maps = {}
    for name, entry in models.items():
        net, net_variables = entry if isinstance(entry, tuple) else (entry, random_variables(entry, image))
        maps[name] = receptive_field.valid_receptive_field(
            receptive_field.model_scores(net, net_variables), canvas, site)
    return maps


def module_statistics(run, canvases: np.ndarray, sizes) -> dict[str, dict[str, Any]]:
    """{block: {'input_offset', 'input_spatial_std', 'layers': [{'spatial_std', 'mean_abs', 'memory_mean_abs'}]}}.

    Over the feature-grid cells of each image's own extent (no canvas padding): 'input_offset' is the mean over
    channels of |the channel's mean|, '*spatial_std' the mean over images and channels of the std over cells, of
    the reduction's output (the module's input) and of each layer's depth hidden map H^d_t.
    """
    _, state = run.model.apply(run.variables, jnp.asarray(canvases), train=False, capture_intermediates=True,
                               mutable=["intermediates"])
    cells = [((height - 1) // 8 + 1, (width - 1) // 8 + 1) for height, width in sizes]

    def per_image(maps) -> list[np.ndarray]:
        maps = np.asarray(maps, np.float32)
        return [maps[i, :rows, :cols] for i, (rows, cols) in enumerate(cells)]

    def image_mean(maps: list[np.ndarray], statistic) -> float:
        return float(np.mean([statistic(m) for m in maps]))

    spatial_std = lambda m: m.std(axis=(0, 1)).mean()  # noqa: E731
    statistics = {}
    for name, block in state["intermediates"].items():
        if not name.startswith("diffusion_"):
            continue
        # the module's input: the 1x1 reduction, or its BatchNorm under model.pdn.reduction=conv_bn
        reduced = per_image(block.get("reduce_bn", block["reduce"])["__call__"][0])
        layers = []
        for t in range(1, sum(key.startswith("layer") for key in block["module"]) + 1):
            hidden, memory = block["module"][f"layer{t}"]["__call__"][0]
            depth = per_image(hidden[0])
            layers.append({"spatial_std": image_mean(depth, spatial_std),
                           "mean_abs": image_mean(depth, lambda m: np.abs(m).mean()),
                           "memory_mean_abs": image_mean(per_image(memory), lambda m: np.abs(m[..., 0]).mean())})
        statistics[name] = {
            "input_offset": image_mean(reduced, lambda m: np.abs(m.mean(axis=(0, 1))).mean()),
            "input_spatial_std": image_mean(reduced, spatial_std),
            "layers": layers,
        }
    return statistics


def statistics_table(statistics: dict[str, dict[str, Any]]) -> str:
    """The statistics as a markdown table, one row per module."""
    num_layers = max(len(s["layers"]) for s in statistics.values())
    header = ["module", "input: channel offset", "input: spatial std"] + [
        f"layer {t}: spatial std" for t in range(1, num_layers + 1)]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, s in statistics.items():
        values = [s["input_offset"], s["input_spatial_std"]] + [layer["spatial_std"] for layer in s["layers"]]
        rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(rows)


def run_pdn_study(run, *, num_images: int = 4, split: str | None = None, site: tuple[int, int] | None = None,
                  output_dir: str | None = None) -> dict[str, Any]:
    """Writes pdn_layers.png (each layer's prediction), pdn_receptive_fields.png (+ .json of the fields' extents)
    and pdn_module.json / .md (`module_statistics`) for a restored PDN `run`; `site` is a cell of the feature grid
    (default: the first image's centre)."""
    output_dir = output_dir or os.path.join(run.workdir, "mechanism")
    os.makedirs(output_dir, exist_ok=True)
    raw, canvases, labels, sizes = study_images(run.config, split, num_images)
    predictions = layer_predictions(run, np.stack(canvases))
    shown = [(raw[i][: h, : w], labels[i][: h, : w]) for i, (h, w) in enumerate(sizes)]
    columns = {name: [p[i][: h, : w] for i, (h, w) in enumerate(sizes)] for name, p in predictions.items()}
    paths = [visualize.plot_prediction_columns([s[0] for s in shown], [s[1] for s in shown], columns,
                                               os.path.join(output_dir, "pdn_layers.png"))]
    grid = [(side - 1) // 8 + 1 for side in canvases[0].shape[:2]]
    site = site or ((sizes[0][0] - 1) // 16, (sizes[0][1] - 1) // 16)
    if not (0 <= site[0] < grid[0] and 0 <= site[1] < grid[1]):
        raise ValueError(f"site {site} is outside the {grid[0]}x{grid[1]} feature grid")
    maps = receptive_field_maps(run.model, run.variables, canvases[0], site)
    point = (site[0] * 8, site[1] * 8)
    paths.append(receptive_field.plot_receptive_fields(
        maps, os.path.join(output_dir, "pdn_receptive_fields.png"), image=raw[0], point=point))
    extents = {name: _extent(field, point) for name, field in maps.items()}
    with open(os.path.join(output_dir, "pdn_receptive_fields.json"), "w") as f:
        json.dump({"site": list(site), "pixel": list(point), "radius_px": extents}, f, indent=2)
    paths.append(os.path.join(output_dir, "pdn_receptive_fields.json"))
    statistics = module_statistics(run, np.stack(canvases), sizes)
    with open(os.path.join(output_dir, "pdn_module.json"), "w") as f:
        json.dump(statistics, f, indent=2)
    with open(os.path.join(output_dir, "pdn_module.md"), "w") as f:
        f.write(f"# The diffusion modules of {run.workdir}: how much of the image they carry\n\n"
                f"Over {len(sizes)} images of the split; `difnet_jax.studies.pdn_mechanism.module_statistics`.\n\n"
                + statistics_table(statistics) + "\n")
    paths += [os.path.join(output_dir, "pdn_module.json"), os.path.join(output_dir, "pdn_module.md")]
    log.info("PDN study written to %s (receptive-field radius, px: %s)", output_dir, extents)
    return {"paths": paths, "radius_px": extents, "layer_predictions": predictions, "module_statistics": statistics}


def _extent(field: np.ndarray, point: tuple[int, int], mass: float = 0.9) -> int:
    """Radius (Chebyshev, pixels) of the smallest square around `point` holding `mass` of the gradient."""
    total = float(field.sum())
    if total <= 0:
        return 0
    rows, cols = np.indices(field.shape)
    distance = np.maximum(np.abs(rows - point[0]), np.abs(cols - point[1]))
    for radius in range(int(distance.max()) + 1):
        if float(field[distance <= radius].sum()) >= mass * total:
            return radius
    return int(distance.max())
