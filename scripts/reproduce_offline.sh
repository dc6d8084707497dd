#!/usr/bin/env bash
# Offline reproduction (issue 6): every method on SmolLM2-135M + MiniLM-L6, RTE / MRPC / SST-2, then the tables.
#   bash scripts/reproduce_offline.sh [data_dir]      (about an hour on 2 CPU cores)
# Three sweeps of one experiment (offline_repro): PT, LoPA, LoRA x 3 seeds; the other methods x 1 seed; zero-shot.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:-../shared/data}
export HF_HUB_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
TASKS=${TASKS:-glue/rte,glue/mrpc,glue/sst2}
$PY run.py -m experiment=offline_repro data_dir="$DATA_DIR" hydra.sweeper.params.task="$TASKS"
$PY run.py -m experiment=offline_repro data_dir="$DATA_DIR" hydra.sweeper.params.task="$TASKS" \
  hydra.sweeper.params.method=idpg,full_ft,accept,lowrank_prompt,dept,residual_prompt hydra.sweeper.params.seed=1
$PY run.py -m experiment=offline_repro data_dir="$DATA_DIR" hydra.sweeper.params.task="$TASKS" \
  hydra.sweeper.params.method=zero_shot hydra.sweeper.params.seed=1 mode=evaluate
$PY scripts/collect_results.py --runs multirun/offline_repro --experiment offline_repro --out results
