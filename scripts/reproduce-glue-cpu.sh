#!/usr/bin/env bash
# GLUE, offline CPU profile: LoRA, LoRA at MTL-LoRA's parameter count (r=16), DoRA, MultiLoRA, MoELoRA and
# MTL-LoRA × seeds 1,2,3 on MiniLM-L6 with the local GLUE copy, then the table. Extra arguments are Hydra
# overrides applied to every run (e.g. `seed=1`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ -z "${MTLLORA_DATA_DIR:-}" ]; then
  echo "MTLLORA_DATA_DIR is not set: GLUE will be loaded from the Hugging Face hub (nyu-mll/glue)." >&2
fi
start=$(date +%s)
"$PY" -m mtllora.train -m experiment=glue_cpu method=lora,lora_r16,dora,multilora,moelora,mtl_lora seed=1,2,3 "$@"
"$PY" -m mtllora.tables
minutes=$(( ($(date +%s) - start + 59) / 60 ))
echo "GLUE CPU profile finished in ${minutes} min. Table: results/tables/glue.md (also .csv, .tex, .png)"
