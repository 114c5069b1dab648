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


def _phony_targets() -> set[str]:
    declared = re.findall(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    return {target for line in declared for target in line.split()}


def test_make_help_lists_every_target_with_one_line():
    result = subprocess.run(["make", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = dict(re.fullmatch(r"([\w-]+) +(\S.*)", line).groups() for line in result.stdout.splitlines())
    assert set(listed) == _phony_targets()  # every declared target, nothing else
    assert listed["export"].startswith("Export a run: RUN=dir FORMAT=")


def test_reproduce_and_export_targets_pass_their_overrides():
    phony = _phony_targets()
    for target in sorted(t for t in phony if t.startswith(("reproduce-", "sweep-"))):
        dry = subprocess.run(
            ["make", "-n", target, "ARGS=logger=wandb seed=7"], cwd=REPO, capture_output=True, text=True
        )
        assert re.search(rf"scripts/{target}\.sh logger=wandb seed=7$", dry.stdout, re.M), (target, dry.stdout)
    export = ["make", "-n", "export", "RUN=runs/a", "FORMAT=merged", "OUT=out", "TASK=rte", "ARGS=model.name_or_path=m"]
    dry = subprocess.run(export, cwd=REPO, capture_output=True, text=True)
    assert "-m mtllora.export runs/a --format merged --out out --task rte model.name_or_path=m\n" in dry.stdout
