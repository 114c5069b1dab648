#!/usr/bin/env bash
# GLUE, paper profile (GPUs): the five methods × seeds 1,2,3 on RoBERTa-base (override with e.g.
# `model=roberta_large` or `model=deberta_v3_base`), all eight tasks, every GPU of this machine through the
# DeepSpeed launcher, then the table. First the plan (python -m mtllora.plan: data, memory, hours; it stops here
# when the preflight fails). Extra arguments are Hydra overrides applied to every run.
# Knobs (environment): METHODS, SEEDS, NGPUS, RUNS_DIR (results/runs), TABLES_DIR (results/tables); the rehearsal
# (make rehearse) sets them.
# Rerunning continues a stopped profile (trainer.resume=true): finished runs return at once, an interrupted one goes
# on from its last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPUS=${NGPUS:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
METHODS=${METHODS:-lora dora multilora moelora mtl_lora}
SEEDS=${SEEDS:-1 2 3}
RUNS_DIR=${RUNS_DIR:-results/runs}
TABLES_DIR=${TABLES_DIR:-results/tables}
read -r -a methods <<< "$METHODS"
read -r -a seeds <<< "$SEEDS"
"$PY" -m mtllora.plan --gpus "$NGPUS" --seeds "${#seeds[@]}" ${methods[@]/#/--run=method=} experiment=glue "$@"
for method in "${methods[@]}"; do
  for seed in "${seeds[@]}"; do
    "$(dirname "$PY")/deepspeed" --num_gpus "$NGPUS" --module mtllora.train experiment=glue method=$method seed=$seed \
      paths.runs_dir="$RUNS_DIR" trainer.resume=true "$@"
  done
done
"$PY" -m mtllora.tables --runs "$RUNS_DIR" --out "$TABLES_DIR"
echo "Table: $TABLES_DIR/glue.md"
