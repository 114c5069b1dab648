# Sourced (not run) by the resumable drivers of the GLUE CPU 2-epoch profile (experiment=glue_cpu_2ep):
# reproduce-glue-cpu-full.sh and reproduce-ablations-cpu.sh. A driver lists its runs in `specs`, in the order to run
# them ("<run name>|<Hydra overrides>" each), sets SET (the name in its log lines and its folder of locks and logs,
# outputs/$SET/) and TITLE (the set, in the closing line), then calls `run_set "$@"`.
# run_set runs every missing run of the set, skipping those whose metrics.json exists, so the set can be finished
# across several sessions; then the tables. Runs are deterministic: a run restarted from scratch at the same thread
# count gives the same numbers. Its arguments are Hydra overrides applied to every run.
# JOBS=N runs N runs at a time (default 1); each claims its run with a lock that dies with its process, so several
# drivers on one checkout never run the same run twice. With JOBS>1 each run gets OMP_NUM_THREADS=cores/JOBS unless
# set (oversubscribed threads slow every run several-fold) and its output goes to outputs/$SET/<run>.log.
PY=${PY:-.venv/bin/python}
RUNS=results/runs/glue_cpu_2ep
JOBS=${JOBS:-1}
specs=()

# add_multi_task_runs SEED METHOD...: one run of each method config on every task.
add_multi_task_runs() {
  local seed=$1 method
  shift
  for method in "$@"; do
    specs+=("glue-$method-minilm-l6-s$seed|method=$method seed=$seed")
  done
}

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
    [ -f "$RUNS/$name/metrics.json" ] && continue  # said once, by run_set
    [ -f "$LOCKS/$name.failed" ] && continue
    exec {lock_fd}>"$LOCKS/$name.lock"
    if ! flock -n "$lock_fd"; then
      exec {lock_fd}>&-
      continue
    fi
    # Another worker may have finished it between the check above and the lock.
    if [ ! -f "$RUNS/$name/metrics.json" ]; then
      echo "[$SET] $name: $(date -u +%H:%M:%S) start"
      eval "overrides=(${spec#*|})"
      if ! train_run "$name" "${overrides[@]}" run_name="$name" "$@"; then
        touch "$LOCKS/$name.failed"
        echo "[$SET] $name failed$( (( JOBS > 1 )) && echo ", see $LOCKS/$name.log")" >&2
        return 1
      fi
      echo "[$SET] $name: $(date -u +%H:%M:%S) done"
    fi
    exec {lock_fd}>&-
  done
}

# run_set OVERRIDE...: the set's missing runs with JOBS workers, then the tables.
run_set() {
  if ! [[ $JOBS =~ ^[1-9][0-9]*$ ]]; then
    echo "JOBS must be a positive integer, got '$JOBS'" >&2
    exit 2
  fi
  if (( JOBS > 1 )); then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
  fi
  LOCKS=outputs/$SET
  mkdir -p "$LOCKS"
  rm -f "$LOCKS"/*.failed
  local start pids=() pid status=0 job spec
  start=$(date +%s)
  for spec in "${specs[@]}"; do
    [ -f "$RUNS/${spec%%|*}/metrics.json" ] && echo "[$SET] ${spec%%|*}: done, skipped"
  done
  for (( job = 0; job < JOBS; job++ )); do
    worker "$@" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  (( status == 0 )) || { echo "[$SET] a run failed" >&2; exit 1; }
  "$PY" -m mtllora.tables
  echo "$TITLE finished in $(( ($(date +%s) - start + 59) / 60 )) min. Tables: results/tables/glue.*"
}
