#!/usr/bin/env bash
# Ablations of MTL-LoRA's parts (issue 21) on the GLUE CPU 2-epoch profile (experiment=glue_cpu_2ep), resumable
# like reproduce-glue-cpu-full.sh and with its options (JOBS=N, Hydra overrides as arguments; locks and logs in
# outputs/reproduce-ablations-cpu/): runs every missing run, skipping those whose metrics.json exists; then the tables.
# Seeds 1-3 of each variant (configs/method/mtl_lora_*.yaml), one variant after the other, in this order: no Λ_t,
# n = 1, n = 5, τ = 0.5, τ = 1, shared Λ, diagonal Λ_t, and last the uniform mixture (which trains its up-projections
# as n = 1 does: docs/method.md#ablations). A set stopped early thus holds whole variants: when time is short, drop
# variants, not seeds. ABLATIONS="mtl_lora_no_lambda mtl_lora_n1" runs only
# those (in the set's order). First come the full MTL-LoRA runs they are compared with (seeds 1-3, from the full set:
# skipped where committed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/glue-cpu-2ep-set.sh
SET=reproduce-ablations-cpu
TITLE="GLUE CPU 2-epoch ablation set"
VARIANTS=(
  mtl_lora_no_lambda mtl_lora_n1 mtl_lora_n5 mtl_lora_tau0.5
  mtl_lora_tau1 mtl_lora_shared_lambda mtl_lora_diag mtl_lora_uniform_mix
)
read -r -a selected <<< "${ABLATIONS:-${VARIANTS[*]}}"
for variant in "${selected[@]}"; do
  if [[ " ${VARIANTS[*]} " != *" $variant "* ]]; then
    echo "ABLATIONS: unknown variant '$variant'; expected some of: ${VARIANTS[*]}" >&2
    exit 2
  fi
done

for seed in 1 2 3; do add_multi_task_runs "$seed" mtl_lora; done
for variant in "${VARIANTS[@]}"; do
  if [[ " ${selected[*]} " == *" $variant "* ]]; then
    for seed in 1 2 3; do add_multi_task_runs "$seed" "$variant"; done
  fi
done

run_set "$@"
