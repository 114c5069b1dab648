"""The resumable GLUE 2-epoch driver: which runs it starts, with parallel workers, and what a failure does.

A stub stands in for the Python interpreter, so the test checks the driver's bookkeeping, not training.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "scripts" / "reproduce-glue-cpu-full.sh"
RUNS = Path("results/runs/glue_cpu_2ep")
HEADLINE_RUNS = [f"glue-{m}-minilm-l6-s{s}" for s in (1, 2, 3) for m in ("lora", "lora_r16", "mtl_lora")]
OTHER_RUNS = [f"glue-{m}-minilm-l6-s{s}" for s in (1, 2, 3) for m in ("dora", "multilora", "moelora")]
SINGLE_TASK_RUNS = [
    f"glue-lora_single_{t}-minilm-l6-s{s}" for s in (1, 2, 3) for t in ("cola", "sst2", "mrpc", "stsb", "rte")
]

# Records each call as "<run_name or tables> <OMP_NUM_THREADS>", sleeps so that workers overlap, writes metrics.json,
# and fails for the run named in $FAIL_RUN.
STUB = """#!/usr/bin/env bash
name=tables
for arg in "$@"; do case $arg in run_name=*) name=${arg#run_name=};; esac; done
echo "$name ${OMP_NUM_THREADS:-unset}" >> calls.txt
[ "$name" = tables ] && exit 0
sleep 0.2
[ "$name" = "${FAIL_RUN:-}" ] && exit 3
mkdir -p results/runs/glue_cpu_2ep/$name && echo {} > results/runs/glue_cpu_2ep/$name/metrics.json
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A minimal checkout: the driver, a stub interpreter, and the headline runs already finished."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(DRIVER, tmp_path / "scripts")
    stub = tmp_path / "python-stub"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    for name in HEADLINE_RUNS:
        (tmp_path / RUNS / name).mkdir(parents=True)
        (tmp_path / RUNS / name / "metrics.json").write_text("{}")
    return tmp_path


def run_driver(checkout: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environment.update(PY=str(checkout / "python-stub"), **env)
    result = subprocess.run(
        ["bash", "scripts/reproduce-glue-cpu-full.sh"], cwd=checkout, env=environment, capture_output=True, text=True
    )
    calls_file = checkout / "calls.txt"
    calls = [line.split() for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return result, calls


@pytest.mark.parametrize("jobs", ["1", "2", "3"])
def test_each_missing_run_runs_once_then_the_tables(checkout: Path, jobs: str) -> None:
    result, calls = run_driver(checkout, JOBS=jobs)
    assert result.returncode == 0, result.stderr
    names = [name for name, _ in calls]
    assert sorted(names[:-1]) == sorted(OTHER_RUNS + SINGLE_TASK_RUNS)
    if jobs == "1":  # seed 1 of every row, then the cheap single-task seeds, then the others
        assert names[:-1] == OTHER_RUNS[:3] + SINGLE_TASK_RUNS + OTHER_RUNS[3:]
    assert names[-1] == "tables"
    threads = {threads for name, threads in calls if name != "tables"}
    # Several jobs share the cores one thread each (2 cores here or more); one job leaves the default alone.
    assert threads == ({"unset"} if jobs == "1" else {str(max(1, len(os.sched_getaffinity(0)) // int(jobs)))})
    rerun, calls_after = run_driver(checkout, JOBS=jobs)
    assert rerun.returncode == 0 and [name for name, _ in calls_after[len(calls) :]] == ["tables"]


def test_a_failed_run_stops_its_worker_is_not_retried_and_skips_the_tables(checkout: Path) -> None:
    failing = "glue-moelora-minilm-l6-s1"
    result, calls = run_driver(checkout, JOBS="2", FAIL_RUN=failing)
    names = [name for name, _ in calls]
    assert result.returncode == 1
    assert names.count(failing) == 1 and "tables" not in names
    assert f"{failing} failed, see outputs/reproduce-glue-cpu-full/{failing}.log" in result.stderr
    # The other worker finished the rest of the set.
    assert sorted(names) == sorted(OTHER_RUNS + SINGLE_TASK_RUNS)


def test_jobs_must_be_a_positive_integer(checkout: Path) -> None:
    result, calls = run_driver(checkout, JOBS="two")
    assert result.returncode == 2 and "JOBS must be a positive integer, got 'two'" in result.stderr
    assert calls == []
