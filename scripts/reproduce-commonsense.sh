#!/usr/bin/env bash
# Commonsense, paper profile (GPUs; never run on this project's CPU machines): LLaMA-2-7B, the five methods with
# their official recipes, every GPU of this machine through the DeepSpeed launcher, then the tables. First the plan
# (python -m mtllora.plan: data, memory, hours; it stops here when the preflight fails). Needs the LLM-Adapters
# data under MTLLORA_DATA_DIR (see docs/commonsense.md#data); extra arguments are Hydra overrides for every run, e.g.
# `benchmark.train_file=/data/commonsense_170k_taskid.json` or `model=llama3_8b`.
# Knobs (environment): METHODS, SEEDS, NGPUS, RUNS_DIR (results/runs), TABLES_DIR (results/tables); the rehearsal
# (make rehearse) sets them.
# Rerunning continues a stopped profile (trainer.resume=true): finished runs return at once, an interrupted one goes
# on from its last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPUS=${NGPUS:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
METHODS=${METHODS:-zero_shot lora dora multilora moelora mtl_lora}
SEEDS=${SEEDS:-1}
RUNS_DIR=${RUNS_DIR:-results/runs}
TABLES_DIR=${TABLES_DIR:-results/tables}
read -r -a methods <<< "$METHODS"
read -r -a seeds <<< "$SEEDS"
"$PY" -m mtllora.plan --gpus "$NGPUS" --seeds "${#seeds[@]}" ${methods[@]/#/--run=method=} experiment=commonsense "$@"
for method in "${methods[@]}"; do
  for seed in "${seeds[@]}"; do
    "$(dirname "$PY")/deepspeed" --num_gpus "$NGPUS" --module mtllora.train experiment=commonsense method=$method \
      seed=$seed paths.runs_dir="$RUNS_DIR" trainer.resume=true "$@"
  done
done
"$PY" -m mtllora.tables --runs "$RUNS_DIR" --out "$TABLES_DIR"
echo "Table: $TABLES_DIR/commonsense.md"
