#!/usr/bin/env bash
# GLUE CPU, 2-epoch profile (experiment=glue_cpu_2ep), resumable: runs every missing run of the set, one at a time,
# skipping those whose metrics.json exists, so the set can be finished across several sessions; then the tables.
# Headline rows first (LoRA r=8, LoRA r=16 = MTL-LoRA's parameter count, MTL-LoRA; seeds 1-3), then DoRA, MultiLoRA,
# MoELoRA (seed 1) and single-task LoRA references (one run per task, seed 1). Runs are deterministic: a run
# restarted from scratch gives the same numbers. Extra arguments are Hydra overrides applied to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=results/runs/glue_cpu_2ep
TASKS=(cola sst2 mrpc stsb rte)

specs=()
for seed in 1 2 3; do
  for method in lora lora_r16 mtl_lora; do
    specs+=("glue-$method-minilm-l6-s$seed|method=$method seed=$seed")
  done
done
for method in dora multilora moelora; do
  specs+=("glue-$method-minilm-l6-s1|method=$method seed=1")
done
for task in "${TASKS[@]}"; do
  specs+=("glue-lora_single_$task-minilm-l6-s1|method=lora seed=1 benchmark.tasks=[$task] \"method.label='LoRA (single-task)'\"")
done

start=$(date +%s)
for spec in "${specs[@]}"; do
  name=${spec%%|*}
  if [ -f "$RUNS/$name/metrics.json" ]; then
    echo "[reproduce-glue-cpu-full] $name: done, skipped"
    continue
  fi
  echo "[reproduce-glue-cpu-full] $name: $(date -u +%H:%M:%S) start"
  eval "overrides=(${spec#*|})"
  "$PY" -m mtllora.train experiment=glue_cpu_2ep "${overrides[@]}" run_name="$name" "$@"
done
"$PY" -m mtllora.tables
echo "GLUE CPU 2-epoch set finished in $(( ($(date +%s) - start + 59) / 60 )) min. Tables: results/tables/glue.*"
