#!/usr/bin/env bash
# One machine with one (or several) NVIDIA GPUs. Edit DATA_DIR, MANUAL_DIR, CONFIG, WORKDIR.
# Every device of the machine is used: the global batch (config.train.batch_size) is split over them.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}   # where prepared datasets live
MANUAL_DIR=${MANUAL_DIR:-$HOME/downloads/voc}     # VOCtrainval_11-May-2012.tar and benchmark.tgz
CONFIG=${CONFIG:-difnet50}                         # any ARG of experiments/configs/voc.py
WORKDIR=${WORKDIR:-runs/$CONFIG}

if [ ! -d .venv ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q -U "jax[cuda12]==0.10.2"   # jax[cuda13] for a CUDA 13 driver
fi
.venv/bin/python -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu', 'no GPU visible'"
.venv/bin/python -m experiments.prepare_data --dataset=voc_aug --manual_dir="$MANUAL_DIR" --data_dir="$DATA_DIR"
# SIGTERM/Ctrl-C saves a checkpoint and exits 0; running this script again resumes.
exec .venv/bin/python -m experiments.voc --config="experiments/configs/voc.py:$CONFIG" \
  --config.data.data_dir="$DATA_DIR" --config.data.num_workers=8 --workdir="$WORKDIR" "$@"
