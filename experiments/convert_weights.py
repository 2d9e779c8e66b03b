"""Converts a torchvision ResNet checkpoint to a portable, verified `.npz`, once.

  python -m experiments.convert_weights --input=resnet50-0676ba61.pth --output=weights/resnet50.npz

Reads `.pth`/`.pt` (without PyTorch: see difnet_jax/backbone_weights/files.py), `.safetensors` or
`.npz`; finds the depth from the keys (or --depth); checks every key and shape against
the atrous ResNet; runs the imported network and the numpy reference forward pass on a
fixed input and compares them; writes the tensors plus that reference (so that training
verifies the import without recomputing it). An existing output is kept unless --force;
a failure leaves nothing half-written. --trusted_torch_load reads files the safe reader
refuses (PyTorch < 1.6 files, whole pickled models) with PyTorch's own `torch.load`,
which runs the file's pickle: only for files from a source you trust.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags

from difnet_jax.backbone_weights.loading import convert
from experiments import cli

_INPUT = flags.DEFINE_string("input", None, "torchvision ResNet state dict: .pth, .pt, .safetensors or .npz.")
_OUTPUT = flags.DEFINE_string("output", None, "The .npz to write, e.g. weights/resnet50.npz.")
_DEPTH = flags.DEFINE_integer("depth", None, "ResNet depth (18, 34, 50, 101); default: read from the keys.")
_FORCE = flags.DEFINE_bool("force", False, "Overwrite an existing --output.")
_TRUSTED_TORCH_LOAD = flags.DEFINE_bool(
    "trusted_torch_load", False, "Read --input with torch.load(weights_only=False) (needs torch; runs the pickle).")
flags.mark_flags_as_required(["input", "output"])
log = logging.getLogger(__name__)


def main():
    try:
        result = convert(_INPUT.value, _OUTPUT.value, _DEPTH.value, _FORCE.value, _TRUSTED_TORCH_LOAD.value)
    except (OSError, ValueError) as error:  # named file, key or shape at fault
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    size = os.path.getsize(_OUTPUT.value) / 2**20
    print(f"ResNet-{result['depth']} (width {result['width']}): {result['tensors']} tensors from {_INPUT.value} -> "
          f"{_OUTPUT.value} ({size:.1f} MiB); layer4 features of the imported network match the reference "
          f"forward pass to {result['relative_error']:.1e} (relative max error).")


def run() -> None:
    cli.run(main)


if __name__ == "__main__":
    run()
