"""The Makefile sets CPU and offline defaults for the CPU targets only: the paper profiles see the real
accelerator and the hub (read from make's database, so nothing is run)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_DEFAULTS = ("DS_ACCELERATOR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE", "MTLLORA_DATA_DIR")


def _make_database() -> str:
    env = {k: v for k, v in os.environ.items() if k not in CPU_DEFAULTS}
    result = subprocess.run(["make", "-pq"], cwd=REPO, env=env, capture_output=True, text=True)
    return result.stdout


def test_cpu_defaults_belong_to_the_cpu_targets_only():
    database = _make_database()
    for variable in CPU_DEFAULTS:
        assert not re.search(rf"^(export )?{variable}\s*[:?]?=", database, re.M), f"{variable} is set for every target"
    per_target = {(target, variable) for target, variable in re.findall(r"^([\w-]+): (\w+) :?= ", database, re.M)}
    for target in (
        "test",
        "reproduce-glue-cpu",
        "reproduce-glue-cpu-full",
        "reproduce-commonsense-cpu",
        "reproduce-image-text-cpu",
    ):
        assert (target, "DS_ACCELERATOR") in per_target and (target, "HF_HUB_OFFLINE") in per_target, target
    for target in ("reproduce-glue", "reproduce-commonsense", "reproduce-image-text", "gpu-check"):
        assert not any(t == target for t, _ in per_target), f"{target} must not get the CPU/offline defaults"
