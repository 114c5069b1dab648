#!/usr/bin/env bash
# Image-text, paper profile (experiment=image_text; GPUs, never run on this project's CPU machines): VL-BART on
# VQAv2, GQA, NLVR2 and COCO Caption, five methods, seed 1, each with its official script's values; runs whose
# metrics.json exists are skipped; then the tables. Data: a VL-T5 datasets/ folder with the CLIP-RN101 features
# (README, "Image-text"), given as benchmark.data_dir=... among the extra Hydra overrides, which apply to every run;
# launch with several GPUs as the README's Training section says (LAUNCH="deepspeed --num_gpus 8 --module").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
read -r -a launch <<< "${LAUNCH:-$PY -m}"
declare -A recipe=(
  [lora]=""
  # DoRA's VL-BART script: r 128, batch 300, warmup 0.1.
  [dora]="method.adapter.r=128 trainer.per_device_train_batch_size=300 trainer.warmup_ratio=0.1"
  [multilora]=""
  [moelora]=""
  # MTL-LoRA's mlora.sh: n 2 up-projections, τ 0.8 (r 64, T 4 from the experiment).
  [mtl_lora]="method.adapter.num_up=2 method.adapter.temperature=0.8"
)
start=$(date +%s)
for method in lora dora multilora moelora mtl_lora; do
  name="image_text-$method-vl-bart-base-s1"
  if [ -f "results/runs/image_text/$name/metrics.json" ]; then
    echo "[reproduce-image-text] $name: done, skipped"
    continue
  fi
  read -r -a extra <<< "${recipe[$method]}"
  echo "[reproduce-image-text] $name: $(date -u +%H:%M:%S) start"
  "${launch[@]}" mtllora.train experiment=image_text method=$method seed=1 run_name="$name" "${extra[@]}" "$@"
done
"$PY" -m mtllora.tables
echo "Image-text paper profile finished in $(( ($(date +%s) - start + 59) / 60 )) min. Table: results/tables/image_text.md"
