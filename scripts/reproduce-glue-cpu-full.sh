#!/usr/bin/env bash
# GLUE CPU, 2-epoch profile (experiment=glue_cpu_2ep), resumable: runs every missing run of the set, skipping those
# whose metrics.json exists, so the set can be finished across several sessions; then the tables.
# Every row has seeds 1-3. Headline rows first (LoRA r=8, LoRA r=16 = MTL-LoRA's parameter count, MTL-LoRA), then
# seed 1 of DoRA, MultiLoRA, MoELoRA, the single-task LoRA reference (one run per task; all of it costs about one
# multi-task run) with seeds 1-3, then seeds 2-3 of DoRA, MultiLoRA, MoELoRA.
# Runs are deterministic: a run restarted from scratch at the same thread count gives the same numbers. Extra
# arguments are Hydra overrides applied to every run.
# JOBS=N runs N runs at a time (default 1); each claims its run with a lock that dies with its process, so several
# drivers on one checkout never run the same run twice. With JOBS>1 each run gets OMP_NUM_THREADS=cores/JOBS unless
# set (oversubscribed threads slow every run several-fold) and its output goes to outputs/reproduce-glue-cpu-full/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=results/runs/glue_cpu_2ep
LOCKS=outputs/reproduce-glue-cpu-full
JOBS=${JOBS:-1}
TASKS=(cola sst2 mrpc stsb rte)

if ! [[ $JOBS =~ ^[1-9][0-9]*$ ]]; then
  echo "JOBS must be a positive integer, got '$JOBS'" >&2
  exit 2
fi
if (( JOBS > 1 )); then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
fi
mkdir -p "$LOCKS"
rm -f "$LOCKS"/*.failed

specs=()
# add_multi_task_runs SEED METHOD...
add_multi_task_runs() {
  local seed=$1 method
  shift
  for method in "$@"; do
    specs+=("glue-$method-minilm-l6-s$seed|method=$method seed=$seed")
  done
}
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

# train_run NAME OVERRIDE...: one run; with several jobs its output goes to its own log, not interleaved with the
# others'.
train_run() (
  if (( JOBS > 1 )); then exec > "$LOCKS/$1.log" 2>&1; fi
  shift
  "$PY" -m mtllora.train experiment=glue_cpu_2ep "$@"
)

# One worker: walks the set in order and runs each run that is neither finished, nor failed in this invocation, nor
# held by another worker; it stops at its first failure.
worker() {
  local spec name lock_fd
  for spec in "${specs[@]}"; do
    name=${spec%%|*}
    if [ -f "$RUNS/$name/metrics.json" ]; then
      echo "[reproduce-glue-cpu-full] $name: done, skipped"
      continue
    fi
    [ -f "$LOCKS/$name.failed" ] && continue
    exec {lock_fd}>"$LOCKS/$name.lock"
    if ! flock -n "$lock_fd"; then
      exec {lock_fd}>&-
      continue
    fi
    # Another worker may have finished it between the check above and the lock.
    if [ ! -f "$RUNS/$name/metrics.json" ]; then
      echo "[reproduce-glue-cpu-full] $name: $(date -u +%H:%M:%S) start"
      eval "overrides=(${spec#*|})"
      if ! train_run "$name" "${overrides[@]}" run_name="$name" "$@"; then
        touch "$LOCKS/$name.failed"
        echo "[reproduce-glue-cpu-full] $name failed$( (( JOBS > 1 )) && echo ", see $LOCKS/$name.log")" >&2
        return 1
      fi
      echo "[reproduce-glue-cpu-full] $name: $(date -u +%H:%M:%S) done"
    fi
    exec {lock_fd}>&-
  done
}

start=$(date +%s)
pids=()
for (( job = 0; job < JOBS; job++ )); do
  worker "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
(( status == 0 )) || { echo "[reproduce-glue-cpu-full] a run failed" >&2; exit 1; }
"$PY" -m mtllora.tables
echo "GLUE CPU 2-epoch set finished in $(( ($(date +%s) - start + 59) / 60 )) min. Tables: results/tables/glue.*"
