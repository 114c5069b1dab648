#!/usr/bin/env bash
# The prepared device check: adapter bench (bf16, CUDA), a short bf16 training run through the engine (DeepSpeed
# ZeRO-2), and batched mixed-task generation against one-by-one, every number in <out>/gpu-check.json. The checks
# are the tests in tests/gpu (marked `gpu`); on a machine without CUDA (or GPU_CHECK_DEVICE=cpu) they run the same
# steps shrunken, on CPU.
#
#   bash scripts/gpu-check.sh            # or: make gpu-check
#
# Environment: GPU_CHECK_DEVICE (auto | cuda | cpu), GPU_CHECK_OUT (default $OUT, else results/gpu-check),
# GPU_CHECK_WORK (scratch folder; default a fresh temporary one), GPU_CHECK_WHEELS (default .gpu-wheels: installed
# where the machine lacks them; build it with `bash scripts/build-gpu-wheels.sh`), GPU_CHECK_STEPS
# (bench,train,generation), GPU_CHECK_DEEPSPEED (zero2), GPU_CHECK_BENCH_SUITES (layer,model), GPU_CHECK_BENCH_ARGS,
# GPU_CHECK_TIMEOUT (the whole check, s; default 480), PYTHON (default .venv/bin/python when present, else python3).
# Exit status: 0 every check passed, 1 a check failed, 124 the whole check ran out of time, 2 a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
GPU_CHECK_OUT=$(realpath -m "${GPU_CHECK_OUT:-${OUT:-results/gpu-check}}")
GPU_CHECK_WORK=$(realpath -m "${GPU_CHECK_WORK:-$(mktemp -d -t gpu-check-XXXXXX)}")
# The tests cut each step's timeout to this deadline; the `timeout` below is the backstop.
GPU_CHECK_DEADLINE=$(( $(date +%s) + ${GPU_CHECK_TIMEOUT:-480} ))
export GPU_CHECK_OUT GPU_CHECK_WORK GPU_CHECK_DEADLINE PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the engine, whether or not it is installed
mkdir -p "$GPU_CHECK_OUT" "$GPU_CHECK_WORK"
rm -f "$GPU_CHECK_OUT"/{gpu-check.json,bench.json,bench.md,bench.png}  # never a previous run's
echo "gpu-check $(date -Iseconds) on $(hostname)" >"$GPU_CHECK_OUT/gpu-check.log"
exec > >(tee -a "$GPU_CHECK_OUT/gpu-check.log") 2>&1  # everything below: on the terminal and in the log

# The carried wheels the machine lacks (never torch or transformers), into a scratch folder first on PYTHONPATH.
wheels=${GPU_CHECK_WHEELS:-.gpu-wheels}
if compgen -G "$wheels/*.whl" >/dev/null; then
    site=$GPU_CHECK_WORK/site
    set +e
    timeout 120 "$PYTHON" scripts/gpu_wheels.py install --wheels "$wheels" --target "$site" \
        --json "$GPU_CHECK_WORK/install.json"
    export GPU_CHECK_INSTALL_RC=$?  # recorded as the `install` check
    set -e
    export PYTHONPATH="$site:$PYTHONPATH"
fi

# The checks. `timeout` passes a SIGTERM on to pytest, which stops the running step and leaves gpu-check.json
# marked incomplete; pytest exits 0, 1, 2 (usage) or 124 (stopped) as documented above.
exec timeout --kill-after=10 $(( GPU_CHECK_DEADLINE + 30 - $(date +%s) )) \
    "$PYTHON" -m pytest -m gpu tests/gpu -p no:cacheprovider -v -s
