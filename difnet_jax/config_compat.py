"""Old config keys keep working: the one mapping from DifNet's former flat keys to `model.difnet.*`.

Until the family table, DifNet's own keys sat directly in `config.model` (`model.walks`, ...).
They now live in the family's sub-dict. Two places still meet the old names, and both go
through `LEGACY_KEYS` here: command lines (`--config.model.walks=(1,3,5)`, rewritten by
`rewrite_argv` before absl parses them) and the config.json files of earlier runs
(`upgrade_saved`, used by `trained_run.load_config` and the resume check).

Keys whose current default would change what an old run was (`AS_RAN`, and a family's own `LEGACY` table)
are written into an old config.json by `upgrade_saved` with the value it ran with, before any default fills
the gaps: DifNet's variants now default to the authors' ResNet and input, older runs used torchvision's;
DeepLabv3+ now has the reference's multi-grid, BatchNorm decays and dropout, older runs had none.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

LEGACY_KEYS = {
    "model.aspp": "model.difnet.aspp",
    "model.walks": "model.difnet.walks",
    "model.psi_channels": "model.difnet.psi_channels",
    "model.diffusion_backend": "model.difnet.diffusion_backend",
    "model.backbone_init_branches": "model.difnet.backbone_init_branches",
}

# dotted key -> the value every run saved before the key existed ran with (set only where its parent dict exists:
# a family's keys only in that family's runs).
AS_RAN = {
    "model.resnet_layout": "torchvision",
    "model.logits_upsampling": "align_corners",
    "data.normalization": "imagenet",
}


def _as_ran_table() -> dict[str, Any]:
    """AS_RAN plus each family's own record of what its older runs ran with (DeepLabv3+'s `LEGACY`)."""
    from difnet_jax.models import deeplabv3plus  # the family's table stays with the family

    return {**AS_RAN, **{f"model.deeplabv3plus.{key}": value for key, value in deeplabv3plus.LEGACY.items()}}


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """`--config.model.walks=...` -> `--config.model.difnet.walks=...` (also the `--flag value` form)."""
    rewritten = []
    for arg in argv:
        for old, new in LEGACY_KEYS.items():
            prefix = f"--config.{old}"
            if arg == prefix or arg.startswith(prefix + "="):
                arg = f"--config.{new}" + arg[len(prefix):]
                break
        rewritten.append(arg)
    return rewritten


def _as_ran(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with each missing key of the as-ran table set to the value the run ran with."""
    def parent(tree: dict[str, Any], dotted: str):
        for part in dotted.split(".")[:-1]:
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree if isinstance(tree, dict) else None

    table = _as_ran_table()
    missing = [key for key in table
               if parent(saved, key) is not None and key.rsplit(".", 1)[1] not in parent(saved, key)]
    if not missing:
        return saved
    upgraded = copy.deepcopy(saved)
    for key in missing:
        parent(upgraded, key)[key.rsplit(".", 1)[1]] = table[key]
    log.info("config.json predates %s: set to the values it ran with", {key: table[key] for key in missing})
    return upgraded


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.json dict as the current code reads it: the flat DifNet keys moved into `model.difnet`
    (dropped for other models), and the keys of AS_RAN it lacks set to the values it ran with.

    Sim-DeepLab configs used to carry DifNet's keys without using them; they are dropped.
    A current file is returned unchanged.
    """
    model = saved.get("model")
    if not isinstance(model, dict):
        return saved
    saved = _as_ran(saved)
    model = saved["model"]
    legacy = {old.split(".", 1)[1]: new.split(".")[-1] for old, new in LEGACY_KEYS.items()}
    if not any(key in model for key in legacy):
        return saved
    upgraded = copy.deepcopy(saved)
    model = upgraded["model"]
    moved = {legacy[key]: model.pop(key) for key in list(model) if key in legacy}
    if model.get("name") == "difnet":
        model.setdefault("difnet", {}).update({k: v for k, v in moved.items() if k not in model.get("difnet", {})})
        log.info("config.json: moved the flat keys %s into model.difnet", sorted(moved))
    return upgraded
