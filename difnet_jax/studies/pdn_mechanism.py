"""PDN's mechanism figures: each diffusion layer's prediction (Table 2's reading) and valid receptive fields (Fig. 4).

- `layer_predictions`: the argmax of every diffusion layer's classifier (upsampled to the image)
  and of the final output, for a few validation images of a trained PDN run.
- Valid receptive fields: the gradient magnitude of one output site's predicted class score
  (ASPP scores on the feature grid) with respect to the input image (`receptive_field`), for
  the trained run and, at the run's depth and width with random weights (the figure is about
  architecture), the backbone without a module (Sim-DeepLab), with an 8NB and with a 24NB module.
- `run_pdn_study`: both figures for a restored run, written to WORKDIR/mechanism/.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax import visualize
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


def run_pdn_study(run, *, num_images: int = 4, split: str | None = None, site: tuple[int, int] | None = None,
                  output_dir: str | None = None) -> dict[str, Any]:
    """Writes pdn_layers.png (each layer's prediction) and pdn_receptive_fields.png (+ .json of the fields'
    extents) for a restored PDN `run`; `site` is a cell of the feature grid (default: the first image's centre)."""
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
    log.info("PDN study written to %s (receptive-field radius, px: %s)", output_dir, extents)
    return {"paths": paths, "radius_px": extents, "layer_predictions": predictions}


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
