"""Old config keys keep working: the one place that maps a family's former flat keys to `model.<name>.*`.

Until the family table, DifNet's own keys sat directly in `config.model` (`model.walks`, ...).
They now live in the family's sub-dict. Two places still meet the old names, and both go
through `legacy_keys()` here (each family's `Family.renamed_keys`): command lines
(`--config.model.walks=(1,3,5)`, rewritten by `rewrite_argv` before absl parses them) and the config.json
files of earlier runs (`upgrade_saved`, used by `trained_run.load_config` and the resume check).

Keys whose current default would change what an old run was (`AS_RAN`, and a family's own `Family.as_ran`)
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

# dotted key -> the value every run saved before the key existed ran with (set only where its parent dict exists:
# a family's keys only in that family's runs). Each family adds its own (`Family.as_ran`).
AS_RAN = {
    "model.resnet_layout": "torchvision",
    "model.logits_upsampling": "align_corners",
    "data.normalization": "imagenet",
}


def _families():
    from difnet_jax.models.families import FAMILIES  # noqa: PLC0415  (the CLI rewrites argv before JAX loads)

    return FAMILIES


def legacy_keys() -> dict[str, str]:
    """{old flat key: its place now}, e.g. 'model.walks' -> 'model.difnet.walks' (each family's `renamed_keys`)."""
    return {f"model.{old}": f"model.{name}.{new}" for name, family in _families().items()
            for old, new in family.renamed_keys.items()}


def _as_ran_table() -> dict[str, Any]:
    """AS_RAN plus each family's own record of what its older runs ran with (`Family.as_ran`)."""
    return {**AS_RAN, **{f"model.{name}.{key}": value for name, family in _families().items()
                         for key, value in family.as_ran.items()}}


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """`--config.model.walks=...` -> `--config.model.difnet.walks=...` (also the `--flag value` form)."""
    rewritten, renamed = [], legacy_keys()
    for arg in argv:
        for old, new in renamed.items():
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
    """A config.json dict as the current code reads it: a family's old flat keys moved into `model.<name>`
    (dropped for other models), and the keys of AS_RAN it lacks set to the values it ran with.

    Sim-DeepLab configs used to carry DifNet's keys without using them; they are dropped.
    A current file is returned unchanged.
    """
    model = saved.get("model")
    if not isinstance(model, dict):
        return saved
    saved = _as_ran(saved)
    model = saved["model"]
    families = _families()
    legacy = {old for family in families.values() for old in family.renamed_keys}
    if not any(key in model for key in legacy):
        return saved
    upgraded = copy.deepcopy(saved)
    model = upgraded["model"]
    moved = {key: model.pop(key) for key in list(model) if key in legacy}
    family = families.get(model.get("name"))
    own = {family.renamed_keys[key]: value for key, value in moved.items()
           if family is not None and key in family.renamed_keys}
    if own:
        target = model.setdefault(model["name"], {})
        target.update({k: v for k, v in own.items() if k not in target})
        log.info("config.json: moved the flat keys %s into model.%s", sorted(own), model["name"])
    return upgraded
