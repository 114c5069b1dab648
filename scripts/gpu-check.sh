#!/usr/bin/env bash
# The prepared device check: adapter bench (bf16, CUDA), a short bf16 training run through the engine (DeepSpeed
# ZeRO-2), and batched mixed-task generation against one-by-one, every number in <out>/gpu-check.json.
# On a machine without CUDA (or GPU_CHECK_DEVICE=cpu) it runs the same steps shrunken, on CPU.
#
#   bash scripts/gpu-check.sh            # or: make gpu-check
#
# Environment: GPU_CHECK_DEVICE (auto | cuda | cpu), GPU_CHECK_OUT (default $OUT, else results/gpu-check),
# GPU_CHECK_WHEELS (default .gpu-wheels: installed where the machine lacks them; build it with
# `bash scripts/build-gpu-wheels.sh`), GPU_CHECK_STEPS (bench,train,generation),
# GPU_CHECK_DEEPSPEED (zero2), GPU_CHECK_BENCH_SUITES (layer,model), GPU_CHECK_BENCH_ARGS, GPU_CHECK_TIMEOUT
# (the whole check, s; default 480), PYTHON (default .venv/bin/python when present, else python3).
# Exit status: 0 every check passed, 1 a check failed, 124 the whole check ran out of time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
# The check keeps its own deadline (GPU_CHECK_TIMEOUT); this is the backstop.
exec timeout --kill-after=10 "$(( ${GPU_CHECK_TIMEOUT:-480} + 30 ))" "$PYTHON" scripts/gpu_check.py run
