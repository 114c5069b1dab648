#!/usr/bin/env bash
# The small sweep that fixed the CPU profile's learning rate and loss balance (one setting for every method):
# LoRA and MTL-LoRA, seed 1, per setting, at the profile's step budget; tables in results/tables/sweeps/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m mtllora.train -m experiment=glue_cpu method=lora,mtl_lora seed=1 trainer.learning_rate=5e-4,1e-3,2e-3 \
  'profile=sweep/lr${trainer.learning_rate}' paths.runs_dir=results/sweeps "$@"
"$PY" -m mtllora.train -m experiment=glue_cpu method=lora,mtl_lora seed=1 benchmark.loss_balance=task_mean \
  "benchmark.task_weights={stsb:0.2}" 'profile=sweep/lr${trainer.learning_rate}-task_mean-stsb0.2' \
  paths.runs_dir=results/sweeps "$@"
"$PY" -m mtllora.tables --runs results/sweeps --out results/tables/sweeps
