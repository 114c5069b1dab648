#!/usr/bin/env bash
# Commonsense, paper profile (GPUs; never run on this project's CPU machines): LLaMA-2-7B, the five methods with
# their official recipes, every GPU of this machine through the DeepSpeed launcher, then the tables. Needs the
# LLM-Adapters data under MTLLORA_DATA_DIR (see README); extra arguments are Hydra overrides for every run, e.g.
# `benchmark.train_file=/data/commonsense_170k_taskid.json` or `model=llama3_8b`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPUS=${NGPUS:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
for method in zero_shot lora dora multilora moelora mtl_lora; do
  "$(dirname "$PY")/deepspeed" --num_gpus "$NGPUS" --module mtllora.train experiment=commonsense method=$method seed=1 "$@"
done
"$PY" -m mtllora.tables
echo "Table: results/tables/commonsense.md"
