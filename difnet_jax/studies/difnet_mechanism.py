"""The mechanism and efficiency study of DifNet (Sec. 5.3-5.4): figure data, Tables 3 and 4.

- `extract`: one eval-mode forward pass returning x, E = sum_k |x_k|, M, s, y_1..y_T
  and Psi_1..Psi_T (captured from the `psi{w}` submodules, `capture_intermediates`).
- `transition_rows`: rows P_t[i, :] = softmax(Psi_t Psi_t^T)[i, :] of chosen nodes
  (`diffusion.transition_matrix`), reshaped to the seed grid (Fig. 3).
- `select_nodes`: nodes deep inside regions of different ground-truth classes.
- `mu_beta_table`: the learned mu_t, beta_t (Table 3).
- `transition_spread`: how far each walk spreads a node's scores: the mean over the images' own nodes of the
  row maximum of P_t and of the row's effective number of nodes, exp(entropy) (1: P_t is the identity; N: uniform).
- `seed_branch`, `similarity_branch`, `diffusion_branch`: DifNet's forward pass cut
  into its three parts (the model's own methods, `apply(..., method=...)`), with the
  trained variables, for `time_branches` (Table 4),
  which also times Sim-DeepLab of the same depth and width.
- `run_study`: all of it for a restored run, written to WORKDIR/mechanism/.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from difnet_jax import timing
from difnet_jax.constants import OUTPUT_STRIDE
from difnet_jax.data import normalization, pipeline
from difnet_jax.drawing import visualize
from difnet_jax.evaluation import crf
from difnet_jax.models import DifNet, SimDeepLab, diffusion

log = logging.getLogger(__name__)

TAP_NAMES = {1: "image", 2: "layer1", 3: "layer2", 4: "layer3", 5: "layer4"}
# Table 3 of the paper: DifNet-50 on Pascal VOC.
PAPER_MU_BETA = ((0.4159, 0.4159), (0.4193, 0.4825), (0.4077, 0.5104), (0.6520, 0.6570), (0.8956, 0.8451))
# Table 4 of the paper: seconds at 505x505 on a GTX 1080 (DifNet-50 branches, Sim-DeepLab-101).
PAPER_TIMES = {"seed": 0.018, "similarity": 0.015, "diffusion": 0.006, "simdeeplab": 0.036}


def _is_psi(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and module.name is not None and module.name.startswith("psi")


@functools.partial(jax.jit, static_argnames=("model",))
def extract(model: DifNet, variables: dict[str, Any], images: jax.Array) -> dict[str, Any]:
    """Everything Figs. 2-4 show, for normalised `images` (B, H, W, 3)."""
    (logits, inter), captured = model.apply(variables, images, train=False, capture_intermediates=_is_psi)
    batch, height, width, _ = inter["seed"].shape
    psis = [captured["intermediates"][f"psi{w}"]["__call__"][0].reshape(batch, height * width, -1)
            for w in model.walks]
    return {
        "score_map": inter["score_map"],
        "influence": jnp.abs(inter["score_map"]).sum(-1),
        "importance": inter["importance"][..., 0],
        "seed": inter["seed"],
        "walks": jnp.stack(inter["walks"]),
        "psis": jnp.stack(psis),
        "prediction": jnp.argmax(logits, axis=-1),
    }


def transition_rows(psis: jax.Array, nodes: Sequence[tuple[int, int]], grid: tuple[int, int]) -> np.ndarray:
    """Rows P_t[i, :] of one image for nodes i = (y, x): psis (T, N, C) -> (num_nodes, T, h', w').

    Row i holds the weights with which node i gathers every node's scores in a walk,
    (P_t y)_i = sum_j P_t[i, j] y_j; it sums to 1.
    """
    index = np.asarray([y * grid[1] + x for y, x in nodes])
    rows = [np.asarray(diffusion.transition_matrix(psi[None])[0, index]) for psi in psis]
    return np.stack(rows, axis=1).reshape(len(nodes), len(psis), *grid)


def transition_spread(psis: np.ndarray, cells: Sequence[tuple[int, int]], grid: tuple[int, int],
                      taps: Sequence[str]) -> list[dict[str, Any]]:
    """Per walk t: {'walk', 'tap', 'row_max', 'effective_nodes'}, means over the nodes inside each image's own
    `cells` (rows, cols) of max_j P_t[i, j] and exp(-sum_j P_t[i, j] log P_t[i, j]); psis (T, B, N, C)."""
    rows = []
    for t, tap in enumerate(taps):
        transitions = np.asarray(diffusion.transition_matrix(jnp.asarray(psis[t])), np.float64)  # (B, N, N)
        peaks, spreads = [], []
        for b, (height, width) in enumerate(cells):
            own = (np.arange(grid[0])[:, None] < height) & (np.arange(grid[1])[None, :] < width)
            p = transitions[b][own.reshape(-1)]
            peaks.append(p.max(-1))
            spreads.append(np.exp(-(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)))
        rows.append({"walk": t + 1, "tap": tap, "row_max": float(np.concatenate(peaks).mean()),
                     "effective_nodes": float(np.concatenate(spreads).mean())})
    return rows


def transition_spread_markdown(rows: Sequence[dict[str, Any]], num_nodes: int) -> str:
    lines = ["| walk | tap | mean row max of P_t | mean effective nodes exp(H) |", "| --- | --- | ---: | ---: |"]
    lines += [f"| RW{r['walk']} | {r['tap']} | {r['row_max']:.3f} | {r['effective_nodes']:.2f} |" for r in rows]
    note = f"Out of {num_nodes} nodes of the seed grid (1: no diffusion; {num_nodes}: uniform)."
    return "\n".join(lines) + f"\n\n{note}\n"


def label_grid(labels: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Ground truth at the pixels the grid cells sit over, (stride*y, stride*x)."""
    rows = np.minimum(np.arange(grid[0]) * OUTPUT_STRIDE, labels.shape[0] - 1)
    cols = np.minimum(np.arange(grid[1]) * OUTPUT_STRIDE, labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def select_nodes(grid_labels: np.ndarray, num_nodes: int, ignore_label: int = 255) -> list[tuple[int, int]]:
    """Up to `num_nodes` (y, x) spread over classes: the deepest cell of each object class
    (largest first), then of the background (class 0), then cells farthest from those chosen."""
    classes, counts = np.unique(grid_labels[grid_labels != ignore_label], return_counts=True)
    objects = [c for _, c in sorted(zip(-counts, classes)) if c != 0]
    order = objects + ([0] if 0 in classes else [])
    nodes = []
    for cls in order[:num_nodes]:
        depth = ndimage.distance_transform_edt(np.pad(grid_labels == cls, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        nodes.append((int(y), int(x)))
    candidates = np.argwhere(grid_labels != ignore_label)
    if not len(candidates):
        candidates = np.argwhere(np.ones_like(grid_labels, bool))
    while len(nodes) < num_nodes and len(nodes) < len(candidates):
        if nodes:
            distance = np.min(np.linalg.norm(candidates[:, None] - np.asarray(nodes)[None], axis=-1), axis=1)
        else:
            distance = -np.linalg.norm(candidates - np.asarray(grid_labels.shape) / 2, axis=-1)
        y, x = candidates[int(np.argmax(distance))]
        nodes.append((int(y), int(x)))
    return nodes


def mu_beta_table(params: dict[str, Any], walks: Sequence[int]) -> list[dict[str, Any]]:
    """Table 3: per walk t, its tap and the learned mu_t = sigmoid(a_t), beta_t = sigmoid(b_t)."""
    mus = np.asarray(jax.nn.sigmoid(params["mu_logits"]))
    betas = np.asarray(jax.nn.sigmoid(params["beta_logits"]))
    rows = []
    for t, w in enumerate(walks):
        row = {"walk": t + 1, "tap": TAP_NAMES[w], "mu": float(mus[t]), "beta": float(betas[t])}
        if tuple(walks) == tuple(TAP_NAMES):
            row["paper_mu"], row["paper_beta"] = PAPER_MU_BETA[t]
        rows.append(row)
    return rows


def mu_beta_markdown(rows: Sequence[dict[str, Any]]) -> str:
    paper = "paper_mu" in rows[0]
    lines = ["| walk | tap | mu_t | beta_t |" + (" paper mu_t | paper beta_t |" if paper else ""),
             "| --- | --- | ---: | ---: |" + (" ---: | ---: |" if paper else "")]
    for r in rows:
        line = f"| RW{r['walk']} | {r['tap']} | {r['mu']:.4f} | {r['beta']:.4f} |"
        lines.append(line + (f" {r['paper_mu']:.4f} | {r['paper_beta']:.4f} |" if paper else ""))
    return "\n".join(lines) + "\n"


# Table 4: DifNet's forward pass in three separately jitted parts, each the model's own method.


@functools.partial(jax.jit, static_argnames=("model",))
def seed_branch(model: DifNet, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """`DifNet.seed_branch`: seed backbone + ASPP (or the noASPP conv) + importance map; the seed (B, h', w', K)."""
    return model.apply(variables, images, train=False, method=DifNet.seed_branch)["seed"]


@functools.partial(jax.jit, static_argnames=("model",))
def similarity_branch(model: DifNet, variables: dict[str, Any], images: jax.Array) -> jax.Array:
    """`DifNet.similarity_branch`: similarity backbone + the Psi heads, (T, B, N, C) on the seed grid."""
    return jnp.stack(model.apply(variables, images, train=False, method=DifNet.similarity_branch))


@functools.partial(jax.jit, static_argnames=("model",))
def diffusion_branch(model: DifNet, variables: dict[str, Any], seed: jax.Array, psis: jax.Array) -> jax.Array:
    """`DifNet.diffuse`: the cascade of random walks (Eq. 4-5), y_T (B, h', w', K)."""
    return model.apply(variables, seed, list(psis), method=DifNet.diffuse)[0]


def time_branches(model: DifNet, variables: dict[str, Any], *, size: int = 505, runs: int = 10, warmup: int = 2,
                  crf_params: crf.CRFParams | None = None) -> list[dict[str, Any]]:
    """Table 4: median seconds of each part of DifNet and of Sim-DeepLab at size x size, batch 1.

    Sim-DeepLab has the run's depth and width and random weights (timing only). With
    `crf_params`, the dense CRF on Sim-DeepLab's output is timed too.
    """
    images = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 3))
    seed_fn = functools.partial(seed_branch, model)
    similarity_fn = functools.partial(similarity_branch, model)
    diffusion_fn = functools.partial(diffusion_branch, model)
    whole_fn = functools.partial(timing.forward, model)
    seed, psis = seed_fn(variables, images), similarity_fn(variables, images)
    simdeeplab = SimDeepLab(model.num_classes, depth=model.depth, width=model.width, aspp_rates=model.aspp_rates,
                            dtype=model.dtype, resnet_layout=model.resnet_layout)
    sim_variables = timing.random_variables(simdeeplab, images)
    simdeeplab_fn = functools.partial(timing.forward, simdeeplab)
    name = f"DifNet-{model.depth}"
    rows = [  # (part, key of the paper's time, function, arguments, runs)
        (f"{name} seed branch (backbone + {'ASPP' if model.use_aspp else 'conv'} + importance)", "seed",
         seed_fn, (variables, images), runs),
        (f"{name} similarity branch (backbone + Psi heads)", "similarity", similarity_fn, (variables, images), runs),
        (f"{name} diffusion ({len(model.walks)} random walks)", "diffusion", diffusion_fn, (variables, seed, psis),
         runs),
        (f"{name} whole forward pass (one jit, with upsampling)", None, whole_fn, (variables, images), runs),
        (f"Sim-DeepLab-{model.depth} (random weights)", "simdeeplab", simdeeplab_fn, (sim_variables, images), runs),
    ]
    if crf_params is not None:
        probabilities = jax.nn.softmax(simdeeplab_fn(sim_variables, images)[0], axis=-1)
        colours = jnp.full((size, size, 3), 128.0) + 20.0 * images[0]
        stride = crf.sender_stride(size, size, crf_params.max_senders)
        rows.append((f"dense CRF on Sim-DeepLab's output ({crf_params.iterations} iterations, sender stride {stride})",
                     None, lambda p, c: crf.dense_crf(p, c, params=crf_params), (probabilities, colours),
                     max(runs // 3, 2)))
    results = []
    for label, key, fn, args, num_runs in rows:
        measured = timing.time_function(fn, *args, warmup=warmup, runs=num_runs)
        log.info("%s: %.2f ms (std %.2f ms)", label, 1000 * measured.median_s, 1000 * measured.std_s)
        results.append({"part": label, **measured.as_dict(), "paper_s": PAPER_TIMES.get(key)})
    return results


def timing_markdown(rows: Sequence[dict[str, Any]], device: str, size: int) -> str:
    lines = [f"Inference time at {size}x{size}, batch 1, on {device}; median of the runs after warm-up.", "",
             "| part | median (ms) | std (ms) | runs | paper, GTX 1080 (ms) |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        paper = "" if r["paper_s"] is None else f"{1000 * r['paper_s']:.0f}"
        lines.append(f"| {r['part']} | {1000 * r['median_s']:.1f} | {1000 * r['std_s']:.1f} | {r['runs']} | {paper} |")
    lines.append("")
    lines.append("The paper's row for the branches is DifNet-50 and for Sim-DeepLab its depth 101.")
    return "\n".join(lines) + "\n"


def study_images(config, split: str | None, num_images: int):
    """The first `num_images` of the split padded to the eval canvas: (raw uint8, normalised, labels, sizes)."""
    eval_size = config.data.eval_size
    norm = normalization.of_config(config.data)
    data_source = pipeline.source(config.data.name, split or config.data.eval_split, config.data.data_dir)
    raw, canvases, labels, sizes = [], [], [], []
    for index in range(min(num_images, len(data_source))):
        element = data_source[index]
        image, label = element["image"], element["label"][..., 0] if element["label"].ndim == 3 else element["label"]
        if max(image.shape[:2]) > eval_size:
            raise ValueError(f"image {index} of the split is {image.shape[:2]}, larger than eval_size={eval_size}")
        sizes.append(image.shape[:2])
        image, label = pipeline.pad_to(image, label, eval_size, eval_size, norm)
        raw.append(image)
        labels.append(label)
        canvases.append(pipeline.normalize(image, norm))
    return raw, canvases, labels, sizes


def _display(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    return image[: size[0], : size[1]], label[: size[0], : size[1]]


def run_study(run, *, num_images: int = 4, nodes: Sequence[tuple[int, int]] | None = None, num_nodes: int = 4,
              split: str | None = None, timing_size: int = 505, timing_runs: int = 10,
              crf_params: crf.CRFParams | None = None, skip_timing: bool = False,
              output_dir: str | None = None) -> dict[str, Any]:
    """Figs. 2-4 and Tables 3-4 for a restored DifNet `run` (`trained_run.load_run`), in WORKDIR/mechanism/.

    Returns {'paths': [...], 'nodes': per-image nodes, 'transition_rows': per-image
    (num_nodes, T, h', w') arrays, 'mu_beta': Table 3 rows, 'timing': Table 4 rows}.
    """
    config, model = run.config, run.model
    if not isinstance(model, DifNet):
        raise ValueError(f"the mechanism study needs a DifNet run, got {config.model.name!r}")
    output_dir = output_dir or os.path.join(run.workdir, "mechanism")
    os.makedirs(output_dir, exist_ok=True)
    raw, canvases, labels, sizes = study_images(config, split, num_images)
    count = len(raw)
    data = jax.device_get(extract(model, run.variables, jnp.asarray(np.stack(canvases))))
    grid = data["seed"].shape[1:3]
    cells = [(timing.seed_grid_size(h), timing.seed_grid_size(w)) for h, w in sizes]
    crop = lambda array, i: array[i, : cells[i][0], : cells[i][1]]
    paths = []

    shown = [_display(raw[i], labels[i], sizes[i]) for i in range(count)]
    paths.append(visualize.plot_seed_maps(
        [s[0] for s in shown], [s[1] for s in shown], [crop(data["score_map"], i).argmax(-1) for i in range(count)],
        [crop(data["influence"], i) for i in range(count)], [crop(data["importance"], i) for i in range(count)],
        os.path.join(output_dir, "fig2_seed_influence_importance.png")))

    walk_names = [TAP_NAMES[w] for w in model.walks]
    chosen_nodes, all_rows = [], []
    for i in range(count):
        grid_labels = label_grid(labels[i], grid)[: cells[i][0], : cells[i][1]]
        image_nodes = list(nodes) if nodes else select_nodes(grid_labels, num_nodes)
        for y, x in image_nodes:
            if not (0 <= y < grid[0] and 0 <= x < grid[1]):
                raise ValueError(f"node ({y},{x}) is outside the {grid[0]}x{grid[1]} seed grid")
        rows = transition_rows(data["psis"][:, i], image_nodes, grid)  # whole grid: each row sums to 1
        names = [run.class_names[int(c)] if c < len(run.class_names) else "void"
                 for c in (label_grid(labels[i], grid)[y, x] for y, x in image_nodes)]
        paths.append(visualize.plot_transition_rows(
            shown[i][0], image_nodes, rows[:, :, : cells[i][0], : cells[i][1]], walk_names,
            os.path.join(output_dir, f"fig3_transition_rows_{i}.png"),
            node_names=names))
        chosen_nodes.append(image_nodes)
        all_rows.append(rows)

    walks = [[crop(data["walks"][t], i).argmax(-1) for t in range(len(model.walks))] for i in range(count)]
    paths.append(visualize.plot_walks(
        [s[0] for s in shown], [s[1] for s in shown], [crop(data["seed"], i).argmax(-1) for i in range(count)], walks,
        os.path.join(output_dir, "fig4_seed_and_walks.png")))

    table3 = mu_beta_table(run.state.params, model.walks)
    paths += _write_table(output_dir, "table3_mu_beta", {"step": run.step, "walks": table3},
                          f"# Table 3: learned mu_t and beta_t (step {run.step})\n\n" + mu_beta_markdown(table3))
    spread = transition_spread(data["psis"], cells, grid, walk_names)
    paths += _write_table(output_dir, "transition_spread", {"step": run.step, "walks": spread},
                          f"# How far each walk spreads (step {run.step}, {count} images)\n\n"
                          + transition_spread_markdown(spread, grid[0] * grid[1]))
    table4 = None
    if not skip_timing:
        device = timing.device_description()
        table4 = time_branches(model, run.variables, size=timing_size, runs=timing_runs, crf_params=crf_params)
        paths += _write_table(output_dir, "table4_timing", {"device": device, "size": timing_size, "rows": table4},
                              "# Table 4: inference time\n\n" + timing_markdown(table4, device, timing_size))
    log.info("Mechanism study written to %s", output_dir)
    return {"paths": paths, "nodes": chosen_nodes, "transition_rows": all_rows, "mu_beta": table3,
            "transition_spread": spread, "timing": table4}


def _write_table(directory: str, name: str, data: dict[str, Any], markdown: str) -> list[str]:
    json_path, md_path = os.path.join(directory, name + ".json"), os.path.join(directory, name + ".md")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=2)
    with open(md_path, "w") as f:
        f.write(markdown)
    return [json_path, md_path]
