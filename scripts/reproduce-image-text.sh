#!/usr/bin/env bash
# Image-text, paper profile (experiment=image_text; GPUs, never run on this project's CPU machines): VL-BART on
# VQAv2, GQA, NLVR2 and COCO Caption, five methods, seed 1, each with its official script's values, then the tables.
# Data: a VL-T5 datasets/ folder with the CLIP-RN101 features (docs/image-text.md#data): MTLLORA_DATA_DIR (a root
# holding image_text/, or that folder), or benchmark.data_dir=... among the extra Hydra overrides, which apply to
# every run; every run checks its files before the model loads.
# Every GPU of this machine through the DeepSpeed launcher (NGPUS= to choose); the global batch stays the recipe's.
# Rerunning continues a stopped profile (trainer.resume=true): finished runs return at once, an interrupted one goes
# on from its last complete checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
NGPUS=${NGPUS:-$("$PY" -c "import torch; print(max(torch.cuda.device_count(), 1))")}
declare -A recipe=(
  [lora]=""
  # DoRA's VL-BART script: r 128, batch 300, warmup 0.1.
  [dora]="method.adapter.r=128 trainer.global_train_batch_size=300 trainer.warmup_ratio=0.1"
  [multilora]=""
  [moelora]=""
  # MTL-LoRA's mlora.sh: n 2 up-projections, τ 0.8 (r 64, T 4 from the experiment).
  [mtl_lora]="method.adapter.num_up=2 method.adapter.temperature=0.8"
)
# Knobs (environment; the rehearsal, make rehearse, sets them): METHODS, NGPUS, RUNS_DIR (results/runs), TABLES_DIR.
read -r -a methods <<< "${METHODS:-lora dora multilora moelora mtl_lora}"
RUNS_DIR=${RUNS_DIR:-results/runs}
TABLES_DIR=${TABLES_DIR:-results/tables}
# The plan first (data, memory, hours of every run); it stops here when the preflight fails.
plan_runs=(); for m in "${methods[@]}"; do plan_runs+=("--run=method=$m ${recipe[$m]}"); done
"$PY" -m mtllora.plan --gpus "$NGPUS" "${plan_runs[@]}" experiment=image_text "$@"
start=$(date +%s)
for method in "${methods[@]}"; do
  name="image_text-$method-vl-bart-base-s1"
  read -r -a extra <<< "${recipe[$method]}"
  echo "[reproduce-image-text] $name: $(date -u +%H:%M:%S) start"
  "$(dirname "$PY")/deepspeed" --num_gpus "$NGPUS" --module mtllora.train experiment=image_text method=$method seed=1 \
    run_name="$name" paths.runs_dir="$RUNS_DIR" trainer.resume=true "${extra[@]}" "$@"
done
"$PY" -m mtllora.tables --runs "$RUNS_DIR" --out "$TABLES_DIR"
echo "Image-text paper profile finished in $(( ($(date +%s) - start + 59) / 60 )) min. Table: $TABLES_DIR/image_text.md"
