#!/usr/bin/env bash
# The rehearsal (`make rehearse`, run by CI): each paper profile (experiment=glue, commonsense, image_text) through
# its real entry point, scripts/reproduce-*.sh, with every method at seed 1, on 2 DeepSpeed ranks (the profiles use
# ZeRO-2; DS_ACCELERATOR=cpu here), then `make tables`' builder; the plan prints first, as on the GPUs.
# Swapped, and nothing else (src/mtllora/rehearse.py lists them; tests/test_rehearse.py checks that the rest of
# each config is the paper profile's):
#   model.name_or_path        a tiny random model of the profile's family (BERT-style encoder / Llama / VL-BART)
#   paths.data_dir / benchmark.data_dir, benchmark.features
#                             tiny data in the real layouts, written by `python -m mtllora.rehearse write`
#   benchmark.allow_partial_train, benchmark.cache_dir   (commonsense: tiny train files, their tokenisation cache)
#   trainer.max_steps=2, benchmark.max_eval_samples=2, (commonsense) benchmark.max_new_tokens=4   (steps, eval size)
# Everything goes to a scratch folder (REHEARSE_DIR, default a new temporary one), never results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCRATCH=${REHEARSE_DIR:-$(mktemp -d)}
mkdir -p "$SCRATCH" && SCRATCH=$(cd "$SCRATCH" && pwd)
export PY NGPUS=2 SEEDS=1 RUNS_DIR="$SCRATCH/runs" TABLES_DIR="$SCRATCH/tables"
start=$(date +%s)
"$PY" -m mtllora.rehearse write "$SCRATCH"
for profile in glue commonsense image_text; do
  mapfile -t swapped < <("$PY" -m mtllora.rehearse overrides "$profile" "$SCRATCH")
  echo "[rehearse] $profile: $(date -u +%H:%M:%S) ${swapped[*]}"
  case $profile in
    glue) bash scripts/reproduce-glue.sh "${swapped[@]}" ;;
    commonsense) bash scripts/reproduce-commonsense.sh "${swapped[@]}" ;;
    image_text) bash scripts/reproduce-image-text.sh "${swapped[@]}" ;;
  esac
done
echo "[rehearse] every profile passed in $(( $(date +%s) - start )) s; runs and tables under $SCRATCH"
