#!/usr/bin/env bash
# GLUE CPU, 2-epoch profile (experiment=glue_cpu_2ep), resumable: runs every missing run of the set, skipping those
# whose metrics.json exists, so the set can be finished across several sessions; then the tables.
# Every row has seeds 1-3. Headline rows first (LoRA r=8, LoRA r=16 = MTL-LoRA's parameter count, MTL-LoRA), then
# seed 1 of DoRA, MultiLoRA, MoELoRA, the single-task LoRA reference (one run per task; all of it costs about one
# multi-task run) with seeds 1-3, then seeds 2-3 of DoRA, MultiLoRA, MoELoRA.
# Extra arguments are Hydra overrides applied to every run. JOBS=N runs N runs at a time (default 1), each with its
# lock and, with JOBS>1, one thread and its log in outputs/reproduce-glue-cpu-full/ (scripts/glue-cpu-2ep-set.sh,
# which runs the set, shared with reproduce-ablations-cpu.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/glue-cpu-2ep-set.sh
SET=reproduce-glue-cpu-full
TITLE="GLUE CPU 2-epoch set"
TASKS=(cola sst2 mrpc stsb rte)

# add_single_task_runs SEED: one LoRA run per task.
add_single_task_runs() {
  local task
  for task in "${TASKS[@]}"; do
    specs+=("glue-lora_single_$task-minilm-l6-s$1|method=lora seed=$1 benchmark.tasks=[$task] \"method.label='LoRA (single-task)'\"")
  done
}
for seed in 1 2 3; do add_multi_task_runs "$seed" lora lora_r16 mtl_lora; done
add_multi_task_runs 1 dora multilora moelora
for seed in 1 2 3; do add_single_task_runs "$seed"; done
for seed in 2 3; do add_multi_task_runs "$seed" dora multilora moelora; done

run_set "$@"
