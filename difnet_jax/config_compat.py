"""Old config keys keep working: the one mapping from DifNet's former flat keys to `model.difnet.*`.

Until the family table, DifNet's own keys sat directly in `config.model` (`model.walks`, ...).
They now live in the family's sub-dict. Two places still meet the old names, and both go
through `LEGACY_KEYS` here: command lines (`--config.model.walks=(1,3,5)`, rewritten by
`rewrite_argv` before absl parses them) and the config.json files of earlier runs
(`upgrade_saved`, used by `trained_run.load_config` and the resume check).
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


def upgrade_saved(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.json dict with the flat DifNet keys moved into `model.difnet` (dropped for other models).

    Sim-DeepLab configs used to carry DifNet's keys without using them; they are dropped.
    A file that already has the sub-dict is returned unchanged.
    """
    model = saved.get("model")
    if not isinstance(model, dict):
        return saved
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
