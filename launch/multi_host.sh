#!/usr/bin/env bash
# Several hosts, one process per host: a TPU pod slice or a SLURM GPU cluster.
# Run this same script on every host (e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`,
# or `srun --ntasks-per-node=1 launch/multi_host.sh`). Edit DATA_DIR, CONFIG and WORKDIR:
# DATA_DIR must hold the prepared dataset on every host (a shared filesystem or a copy per host),
# and WORKDIR must be one shared directory (NFS, GCS fuse): Orbax saves and restores collectively.
#
# jax.distributed.initialize() finds the coordinator by itself on TPU VMs and under SLURM
# (--distributed). Elsewhere set COORDINATOR=host0:1234 NUM_PROCESSES=N PROCESS_ID=i per host.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-/shared/tensorflow_datasets}
CONFIG=${CONFIG:-difnet101}
WORKDIR=${WORKDIR:-/shared/runs/$CONFIG}
PYTHON=${PYTHON:-.venv/bin/python}   # install once per host: requirements.txt, then jax[tpu] or jax[cuda12]

if [ -n "${COORDINATOR:-}" ]; then
  DIST=(--coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES" --process_id="$PROCESS_ID")
else
  DIST=(--distributed)
fi
# Only process 0 logs progress and writes metrics.jsonl; all processes write their checkpoint shards.
exec "$PYTHON" -m experiments.voc "${DIST[@]}" --config="experiments/configs/voc.py:$CONFIG" \
  --config.data.data_dir="$DATA_DIR" --workdir="$WORKDIR" "$@"
