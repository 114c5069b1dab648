#!/usr/bin/env bash
# GLUE, paper profile (GPUs): the five methods × seeds 1,2,3 on RoBERTa-base (override with e.g.
# `model=roberta_large` or `model=deberta_v3_base`), all eight tasks, every GPU of this machine through the
# DeepSpeed launcher, then the table. Extra arguments are Hydra overrides applied to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPUS=${NGPUS:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
for method in lora dora multilora moelora mtl_lora; do
  for seed in 1 2 3; do
    "$(dirname "$PY")/deepspeed" --num_gpus "$NGPUS" --module mtllora.train experiment=glue method=$method seed=$seed "$@"
  done
done
"$PY" -m mtllora.tables
echo "Table: results/tables/glue.md"
