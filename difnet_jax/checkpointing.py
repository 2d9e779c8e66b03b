"""Orbax checkpoints of a run: the manager, a restore that survives a corrupt latest
checkpoint, the guard against resuming with another model or dataset, and the
pre-flight check that the workdir can hold the checkpoints at all.

A checkpoint holds the train state (params, BatchNorm statistics, optimizer state,
step, rng) and the grain iterator's position, so a resumed run sees exactly the
batches and random numbers an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from difnet_jax import config_compat
from difnet_jax.models.families import FAMILIES
from difnet_jax.user_errors import ConfigError, PathError

log = logging.getLogger(__name__)

# Keys that say where things are or how they are computed, not what is trained: they may change on resume.
# (backbone_init only seeds a fresh run: a resumed run reads its weights from the checkpoint.) Each family adds
# its own (`Family.resumable_keys`, `resumable_changes`).
RESUMABLE_CHANGES = ("data.data_dir", "data.manual_dir", "data.num_workers", "data.read_threads", "data.eval_mode",
                     "data.eval_stride", "data.eval_size", "model.backbone_init", "model.verify_backbone_init")


def resumable_changes() -> tuple[str, ...]:
    """RESUMABLE_CHANGES and every family's `resumable_keys` (as `model.<family>.<key>`)."""
    return RESUMABLE_CHANGES + tuple(f"model.{name}.{key}" for name, family in FAMILIES.items()
                                     for key in family.resumable_keys)


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints, create=True),
        item_names=("state", "data"),
    )


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter) -> tuple[Any, int | None]:
    """(state, step) of the newest checkpoint that restores, or (None, None) if there is none.

    A checkpoint that fails to restore (truncated or corrupt files) is skipped with a
    warning and the one before it is tried; it is not deleted, so nothing is lost.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iter),
            ))
        except Exception as error:  # noqa: BLE001 (any failure to read means: try the previous one)
            log.warning("Checkpoint %s/%d cannot be restored (%s: %s); falling back to the previous one.",
                        manager.directory, step, type(error).__name__, str(error).splitlines()[0][:300])
            continue
        return restored["state"], step
    if manager.all_steps():
        raise RuntimeError(f"No checkpoint in {manager.directory} can be restored (steps {manager.all_steps()}).")
    return None, None


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def check_resume_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses to resume a run whose model or data config differs from the saved config.json.

    Keys the saved file lacks (added to the configs after the run started) are not
    compared; each is logged with the value the resumed run uses.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = config_compat.upgrade_saved(json.load(f))
    saved = _flatten({k: v for k, v in saved.items() if k in ("model", "data")})
    current = _flatten({k: v for k, v in json.loads(config.to_json_best_effort()).items() if k in ("model", "data")})
    resumable = resumable_changes()
    differing = sorted(
        key for key in saved.keys()
        if key not in resumable and saved.get(key) != current.get(key)
    )
    if "model.name" in differing:  # another family: its own keys differ too, the name says it all
        differing = ["model.name"]
    if differing:  # refused before any warning about newer keys: one line
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
        raise ConfigError(
            f"Refusing to resume {workdir}: its checkpoints were trained with another model or data config "
            f"({details}). Use a new --workdir, or restore these values."
        )
    for key in sorted(current.keys() - saved.keys()):
        log.warning("%s/config.json has no %s (a newer key); resuming with %r.", workdir, key, current[key])


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))


def check_writable(directory: str, what: str = "workdir", flag: str = "--workdir", *, keep: bool = True) -> None:
    """Creates `directory` if needed and writes a probe file there; PathError naming it if that fails.

    `keep=False` removes again the folders this check created (the command creates them when it writes); a
    failed check removes them always. (Under several processes they stay: another one may be probing them.)
    """
    if not directory:
        raise PathError(f"{flag} is empty: give the {what}'s path")
    missing = []  # the folders makedirs creates, deepest first
    parent = os.path.abspath(directory)
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    ok = False
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_probe_{jax.process_index()}_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
        ok = True
    except OSError as error:
        raise PathError(f"{what} {directory!r} is not writable ({error.strerror or error}): "
                          f"choose another {flag}") from error
    finally:
        for folder in missing if not (keep and ok) and jax.process_count() == 1 else ():
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def check_workdir(workdir: str, state_shapes: Any, keep: int) -> None:
    """Fails early, with the path, if `workdir` cannot be written or lacks space for `keep + 1` checkpoints."""
    check_writable(workdir)
    state_bytes = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state_shapes))
    needed = (keep + 1) * state_bytes
    free = shutil.disk_usage(workdir).free
    if free < needed:
        raise PathError(
            f"workdir {workdir!r} has {free / 2**20:.0f} MiB free, but {keep + 1} checkpoints of this model need "
            f"about {needed / 2**20:.0f} MiB; free space or lower config.train.keep_checkpoints."
        )
