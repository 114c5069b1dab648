#!/usr/bin/env bash
# Image-text, CPU profile (experiment=image_text_cpu) on a SYNTHETIC set: writes the set, its pixel features and a
# tiny random VL-BART under data/synthetic_image_text (rebuilt when its settings change), then trains and evaluates
# LoRA, DoRA, MultiLoRA, MoELoRA and MTL-LoRA (seed 1; runs whose metrics.json exists are skipped), then the tables.
# Chance and majority levels of the synthetic test splits: data/synthetic_image_text/baselines.json.
# Extra arguments are Hydra overrides applied to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=data/synthetic_image_text
start=$(date +%s)
# The set, its features and the model are rebuilt whenever these settings (or their modules' version) change: the
# tag only names this cache's build; the committed runs (skipped below by their metrics.json) do not record it.
settings="seed 0, train ${TRAIN_PER_TASK:-2000}, eval ${EVAL_PER_TASK:-500}, pixels 9 x 128, d_model 128, $(
  git log -1 --format=%h -- src/mtllora/benchmarks/image_text_synthetic.py \
    src/mtllora/benchmarks/image_text_features.py src/mtllora/vl_bart_tiny.py 2>/dev/null || true)"
if [ "$(cat "$DATA/settings" 2>/dev/null)" != "$settings" ]; then
  rm -rf "$DATA"
  "$PY" -m mtllora.benchmarks.image_text_synthetic --out "$DATA" --seed 0 --train-per-task "${TRAIN_PER_TASK:-2000}" \
    --eval-per-task "${EVAL_PER_TASK:-500}"
  # 9 grid cells: the scenes' 3x3 layout, one object per cell.
  "$PY" -m mtllora.benchmarks.image_text_features --backbone pixels --dim 128 --boxes 9 --output "$DATA/features.h5" \
    --images "$DATA/COCO/images" "$DATA/VG/images" "$DATA/GQA/images" "$DATA/nlvr/images"
  "$PY" -m mtllora.vl_bart_tiny --data "$DATA" --feat-dim 128 --d-model 128 --out "$DATA/tiny-vl-bart"
  echo "$settings" > "$DATA/settings"
fi
for method in lora dora multilora moelora mtl_lora; do
  name="image_text-$method-vl-bart-tiny-s1"
  if [ -f "results/runs/image_text_cpu/$name/metrics.json" ]; then
    echo "[reproduce-image-text-cpu] $name: done, skipped"
    continue
  fi
  extra=()
  # The official MTL-LoRA image-text recipe's n and τ (mlora.sh); T is the number of tasks.
  [ "$method" = mtl_lora ] && extra=(method.adapter.num_up=2 method.adapter.temperature=0.8)
  echo "[reproduce-image-text-cpu] $name: $(date -u +%H:%M:%S) start"
  "$PY" -m mtllora.train experiment=image_text_cpu method=$method seed=1 run_name="$name" "${extra[@]}" "$@"
done
"$PY" -m mtllora.tables
echo "Image-text CPU profile finished in $(( ($(date +%s) - start + 59) / 60 )) min. Table: results/tables/image_text.md"
