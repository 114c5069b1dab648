#!/usr/bin/env bash
# Builds .gpu-wheels/ here, with network: Python 3.12 x86-64 wheels of what the device machine lacks (hydra,
# DeepSpeed, datasets, ...), at this environment's versions, for `scripts/gpu-check.sh` to install there.
#
#   bash scripts/build-gpu-wheels.sh [--dest DIR]
#
# Environment: PYTHON (default .venv/bin/python: the project's pins are the versions carried).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" scripts/gpu_wheels.py build "$@"
