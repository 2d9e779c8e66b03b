"""ImageNet ResNets in torchvision's layout -> the Flax `ResNet`, and into DifNet's or Sim-DeepLab's backbones.

torchvision name -> Flax variable (the ResNet's module names were chosen to match):
  conv1.weight, layer{s}.{i}.conv{k}.weight     params/.../kernel, (O, I, kh, kw) -> (kh, kw, I, O)
  bn1.{weight, bias}, layer{s}.{i}.bn{k}.*       params/.../{scale, bias}
  *.running_mean, *.running_var                  batch_stats/.../{mean, var}
  layer{s}.{i}.downsample.0 / .1                 layer{s}_{i}/downsample_conv / downsample_bn
  fc.*, *.num_batches_tracked                    dropped
Every expected name must be present with the expected shape; anything else is refused
with the names and shapes at fault. After the import, the network's features on a
fixed input are compared with a reference forward pass of the same tensors (stored in
the file by `experiments.convert_weights`, else computed now by the numpy reference).
The weights expect RGB images normalised with ImageNet's mean and std, as the data
pipeline's `normalize` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from difnet_jax.backbone_weights import files, reference
from difnet_jax.backbone_weights.files import read_tensors
from difnet_jax.models.resnet import BOTTLENECK_DEPTHS, STAGE_SIZES, ResNet

log = logging.getLogger(__name__)

# torchvision's ImageNet weights (IMAGENET1K_V1), which the DeepLab family fine-tunes from.
TORCHVISION_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
REFERENCE_INPUT = "__reference__.input"  # (1, H, W, 3) float32, stored by experiments.convert_weights
REFERENCE_OUTPUT = "__reference__.layer4"  # the reference forward's layer4 features of that input
VERIFY_TOLERANCE = 1e-4  # max |flax - reference| / max |reference|, float32 against float64
_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


class WeightImportError(ValueError):
    """A state dict that does not fit the chosen ResNet, named with its file."""


def torchvision_name(collection: str, path: tuple[str, ...]) -> str:
    """The torchvision state-dict key of the Flax variable `collection/path`."""
    parts = []
    for module in path[:-1]:
        if module.startswith("layer"):
            parts += module.split("_")  # layer3_1 -> layer3.1
        elif module in ("downsample_conv", "downsample_bn"):
            parts += ["downsample", "0" if module == "downsample_conv" else "1"]
        else:
            parts.append(module)
    return ".".join([*parts, _LEAF_NAMES[(collection, path[-1])]])


def _torch_shape(collection: str, path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if collection == "params" and path[-1] == "kernel":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return tuple(shape)


def _expected_variables(depth: int, width: int) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """{torchvision name: (collection, Flax path, Flax shape)} of ResNet-`depth`."""
    shapes = jax.eval_shape(
        lambda: ResNet(depth, width).init(jax.random.PRNGKey(0), jnp.zeros((1, 33, 33, 3)), train=False)
    )
    expected = {}
    for collection in ("params", "batch_stats"):
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(shapes[collection]):
            path = tuple(k.key for k in key_path)
            expected[torchvision_name(collection, path)] = (collection, path, tuple(leaf.shape))
    return expected


def infer_depth(tensors: Mapping[str, np.ndarray]) -> int | None:
    """The ResNet depth whose block counts (and bottleneck or not) the keys show, or None."""
    counts = tuple(
        len({name.split(".")[1] for name in tensors if name.startswith(f"layer{s}.")}) for s in range(1, 5)
    )
    bottleneck = "layer1.0.conv3.weight" in tensors
    for depth, sizes in STAGE_SIZES.items():
        if sizes == counts and (depth in BOTTLENECK_DEPTHS) == bottleneck:
            return depth
    return None


def _is_ignored(name: str) -> bool:
    return name.startswith(("fc.", "__reference__.")) or name.endswith(".num_batches_tracked")


def import_resnet(tensors: Mapping[str, np.ndarray], depth: int, width: int = 64, source: str = "the state dict",
                  ) -> dict[str, dict]:
    """{'params', 'batch_stats'} of `ResNet(depth, width)` from a torchvision state dict (float32)."""
    expected = _expected_variables(depth, width)
    hint = ""
    found = infer_depth(tensors)
    if found is not None and found != depth:
        hint = f" The file's keys look like ResNet-{found}: set config.model.depth={found} or use other weights."
    for name in tensors:  # in the file's order, torchvision's is the network's
        if name not in expected:
            continue
        collection, path, shape = expected[name]
        want = _torch_shape(collection, path, shape)
        if tuple(tensors[name].shape) != want:
            raise WeightImportError(
                f"{source}: {name} has shape {tuple(tensors[name].shape)} but ResNet-{depth} of width {width} "
                f"needs {want}.{hint}"
            )
    given = {name for name in tensors if not _is_ignored(name)}
    missing, unexpected = sorted(expected.keys() - given), sorted(given - expected.keys())
    if missing or unexpected:
        raise WeightImportError(
            f"{source} does not match ResNet-{depth}: {len(missing)} missing key(s) {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, {len(unexpected)} unexpected key(s) {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}.{hint}"
        )
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name, (collection, path, _) in expected.items():
        value = np.asarray(tensors[name], np.float32)
        if collection == "params" and path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)
        node = variables[collection]
        for module in path[:-1]:
            node = node.setdefault(module, {})
        node[path[-1]] = value
    return variables


def fixed_input(size: int = 65) -> np.ndarray:
    """The verification input: a fixed (1, size, size, 3) normalised-image-like array."""
    return np.random.default_rng(20181203).normal(size=(1, size, size, 3)).astype(np.float32)


def reference_output(tensors: Mapping[str, np.ndarray], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, layer4 features) to verify against: stored in the file, else the numpy reference's."""
    if REFERENCE_INPUT in tensors and REFERENCE_OUTPUT in tensors:
        return np.asarray(tensors[REFERENCE_INPUT]), np.asarray(tensors[REFERENCE_OUTPUT])
    x = fixed_input()
    return x, reference.resnet_features(tensors, x, depth)["layer4"]


def verify_import(variables: Mapping[str, dict], tensors: Mapping[str, np.ndarray], depth: int, width: int = 64,
                  source: str = "the state dict") -> float:
    """Relative max error of the imported network's layer4 features against the reference; raises above tolerance."""
    x, want = reference_output(tensors, depth)
    got = jax.jit(lambda v, x: ResNet(depth, width).apply(v, x, train=False)["layer4"])(variables, x)
    error = float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-12))
    if not error <= VERIFY_TOLERANCE:
        raise WeightImportError(
            f"{source}: the imported ResNet-{depth} gives features that differ from the reference forward pass of "
            f"the same weights (relative max error {error:.2e} > {VERIFY_TOLERANCE:.0e}); the file's tensors are "
            "not laid out as torchvision's."
        )
    log.info("%s: ResNet-%d imported; layer4 features match the reference to %.1e (relative max error).",
             source, depth, error)
    return error


def load_resnet(path: str, depth: int, width: int = 64, verify: bool = True) -> dict[str, dict]:
    """Reads, imports and (optionally) verifies the ResNet-`depth` weights in `path`."""
    tensors = read_tensors(path)
    variables = import_resnet(tensors, depth, width, source=path)
    if verify:
        verify_import(variables, tensors, depth, width, source=path)
    return variables


def initialise_backbones(params: dict, batch_stats: dict, resnet: Mapping[str, dict], names: tuple[str, ...],
                         ) -> tuple[dict, dict]:
    """`params`, `batch_stats` with the subtrees `names` replaced by the imported ResNet variables (numpy)."""
    params, batch_stats = dict(params), dict(batch_stats)
    for name in names:
        for tree, collection in ((params, "params"), (batch_stats, "batch_stats")):
            old, new = tree[name], resnet[collection]
            if jax.tree.structure(old) != jax.tree.structure(new):
                raise WeightImportError(f"the model's {name} does not have the imported ResNet's structure")
            tree[name] = jax.tree.map(lambda o, n: np.asarray(n, o.dtype), old, new)
    return params, batch_stats


# The one-time conversion (experiments/convert_weights.py is its command line).


def _read_with_torch(path: str) -> dict[str, np.ndarray]:
    import torch  # only here, on request

    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {name.removeprefix("module."): value.detach().float().numpy() if value.is_floating_point()
            else value.numpy() for name, value in state.items() if isinstance(value, torch.Tensor)}


def convert(input_path: str, output_path: str, depth: int | None = None, force: bool = False,
            trusted_torch_load: bool = False) -> dict[str, float | int]:
    """`python -m experiments.convert_weights`: a torchvision ResNet file -> a verified `.npz` with its reference.

    Reads the tensors (safely, or with `torch.load` when `trusted_torch_load`), finds the depth
    from the keys unless given, imports and checks them, runs the reference forward pass on a
    fixed input, compares, and writes the tensors plus that reference. An existing output is
    kept unless `force`. Returns {'depth', 'width', 'tensors', 'relative_error'}.
    """
    if not output_path.endswith(".npz"):
        raise ValueError(f"--output={output_path!r} must end in .npz")
    if os.path.exists(output_path) and not force:
        raise FileExistsError(f"{output_path} exists; pass --force to overwrite it")
    tensors = _read_with_torch(input_path) if trusted_torch_load else files.read_tensors(input_path)
    if depth is None:
        depth = infer_depth(tensors)
        if depth is None:
            raise WeightImportError(
                f"{input_path}: the keys match no ResNet depth of {tuple(STAGE_SIZES)}; pass --depth to see which "
                "keys differ")
    width = int(tensors["conv1.weight"].shape[0]) if "conv1.weight" in tensors else 64
    variables = import_resnet(tensors, depth, width, source=input_path)
    x = fixed_input()
    tensors = {name: value for name, value in tensors.items() if not name.startswith("__reference__.")}
    tensors[REFERENCE_INPUT] = x
    tensors[REFERENCE_OUTPUT] = reference.resnet_features(tensors, x, depth)["layer4"]
    error = verify_import(variables, tensors, depth, width, source=input_path)
    files.write_npz(output_path, tensors)
    return {"depth": depth, "width": width, "tensors": len(tensors) - 2, "relative_error": error}
