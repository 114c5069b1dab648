#!/usr/bin/env bash
# Commonsense, CPU profile (experiment=commonsense_cpu): LoRA, DoRA, MultiLoRA, MoELoRA, MTL-LoRA and the zero-shot
# base model, seed 1, on SmolLM2-135M; resumable (runs whose metrics.json exists are skipped); then the tables.
# Extra arguments are Hydra overrides applied to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
start=$(date +%s)
for method in zero_shot lora dora multilora moelora mtl_lora; do
  name="commonsense-$method-smollm2-135m-s1"
  if [ -f "results/runs/commonsense_cpu/$name/metrics.json" ]; then
    echo "[reproduce-commonsense-cpu] $name: done, skipped"
    continue
  fi
  echo "[reproduce-commonsense-cpu] $name: $(date -u +%H:%M:%S) start"
  "$PY" -m mtllora.train experiment=commonsense_cpu method=$method seed=1 run_name="$name" "$@"
done
"$PY" -m mtllora.tables
echo "Commonsense CPU profile finished in $(( ($(date +%s) - start + 59) / 60 )) min. Table: results/tables/commonsense.md"
