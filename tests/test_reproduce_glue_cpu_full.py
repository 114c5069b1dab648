"""The resumable GLUE 2-epoch drivers (the full set and the MTL-LoRA ablations, one shared runner): which runs they
start, with which overrides, with parallel workers, and what a failure does.

A stub stands in for the Python interpreter, so the test checks the driver's bookkeeping, not training.
"""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["reproduce-glue-cpu-full.sh", "reproduce-ablations-cpu.sh", "glue-cpu-2ep-set.sh"]
RUNS = Path("results/runs/glue_cpu_2ep")
HEADLINE_RUNS = [f"glue-{m}-minilm-l6-s{s}" for s in (1, 2, 3) for m in ("lora", "lora_r16", "mtl_lora")]
OTHER_RUNS = [f"glue-{m}-minilm-l6-s{s}" for s in (1, 2, 3) for m in ("dora", "multilora", "moelora")]
SINGLE_TASK_RUNS = [
    f"glue-lora_single_{t}-minilm-l6-s{s}" for s in (1, 2, 3) for t in ("cola", "sst2", "mrpc", "stsb", "rte")
]
# The ablation set's variants (configs/method/), in the order it runs them: seeds 1-3 of each.
ABLATIONS = [
    "mtl_lora_no_lambda",
    "mtl_lora_n1",
    "mtl_lora_n5",
    "mtl_lora_tau0.5",
    "mtl_lora_tau1",
    "mtl_lora_shared_lambda",
    "mtl_lora_diag",
    "mtl_lora_uniform_mix",
]
ABLATION_RUNS = [f"glue-{m}-minilm-l6-s{s}" for m in ABLATIONS for s in (1, 2, 3)]

# Records each call as "<run_name or tables> <OMP_NUM_THREADS>" (and its arguments in args.txt), sleeps so that
# workers overlap, writes metrics.json, and fails for the run named in $FAIL_RUN.
STUB = """#!/usr/bin/env bash
name=tables
for arg in "$@"; do case $arg in run_name=*) name=${arg#run_name=};; esac; done
echo "$name ${OMP_NUM_THREADS:-unset}" >> calls.txt
echo "$*" >> args.txt
[ "$name" = tables ] && exit 0
sleep 0.2
[ "$name" = "${FAIL_RUN:-}" ] && exit 3
mkdir -p results/runs/glue_cpu_2ep/$name && echo {} > results/runs/glue_cpu_2ep/$name/metrics.json
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A minimal checkout: the drivers, a stub interpreter, and the headline runs already finished."""
    (tmp_path / "scripts").mkdir()
    for script in SCRIPTS:
        shutil.copy(REPO / "scripts" / script, tmp_path / "scripts")
    stub = tmp_path / "python-stub"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    for name in HEADLINE_RUNS:
        (tmp_path / RUNS / name).mkdir(parents=True)
        (tmp_path / RUNS / name / "metrics.json").write_text("{}")
    return tmp_path


def run_driver(
    checkout: Path, *args: str, driver: str = "reproduce-glue-cpu-full.sh", **env: str
) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ABLATIONS")}
    environment.update(PY=str(checkout / "python-stub"), **env)
    result = subprocess.run(
        ["bash", f"scripts/{driver}", *args], cwd=checkout, env=environment, capture_output=True, text=True
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


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_ablation_set_runs_each_variant_at_three_seeds_in_order_then_the_tables(checkout: Path, jobs: str) -> None:
    result, calls = run_driver(checkout, "trainer.logging_steps=50", driver="reproduce-ablations-cpu.sh", JOBS=jobs)
    assert result.returncode == 0, result.stderr
    names = [name for name, _ in calls]
    assert sorted(names[:-1]) == sorted(ABLATION_RUNS) and names[-1] == "tables"
    if jobs == "1":  # variants one after the other, so that a set stopped early holds whole variants
        assert names[:-1] == ABLATION_RUNS
    # The full MTL-LoRA runs the variants are compared with are in the set, finished (committed) here: said once,
    # whatever the number of workers.
    for seed in (1, 2, 3):
        assert result.stdout.count(f"[reproduce-ablations-cpu] glue-mtl_lora-minilm-l6-s{seed}: done, skipped") == 1
    args = (checkout / "args.txt").read_text().splitlines()
    assert (
        "-m mtllora.train experiment=glue_cpu_2ep method=mtl_lora_tau0.5 seed=2 "
        "run_name=glue-mtl_lora_tau0.5-minilm-l6-s2 trainer.logging_steps=50"
    ) in args
    assert "GLUE CPU 2-epoch ablation set finished in" in result.stdout
    rerun, calls_after = run_driver(checkout, driver="reproduce-ablations-cpu.sh", JOBS=jobs)
    assert rerun.returncode == 0 and [name for name, _ in calls_after[len(calls) :]] == ["tables"]


def test_the_ablation_set_skips_finished_runs_and_runs_the_chosen_variants_only(checkout: Path) -> None:
    done = checkout / RUNS / "glue-mtl_lora_n1-minilm-l6-s2"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    chosen = "mtl_lora_n5 mtl_lora_n1"  # run in the set's order, whatever the order given
    result, calls = run_driver(checkout, driver="reproduce-ablations-cpu.sh", ABLATIONS=chosen)
    assert result.returncode == 0, result.stderr
    assert [name for name, _ in calls] == [
        "glue-mtl_lora_n1-minilm-l6-s1",
        "glue-mtl_lora_n1-minilm-l6-s3",
        *(f"glue-mtl_lora_n5-minilm-l6-s{s}" for s in (1, 2, 3)),
        "tables",
    ]
    assert "[reproduce-ablations-cpu] glue-mtl_lora_n1-minilm-l6-s2: done, skipped" in result.stdout


def test_an_unknown_ablation_is_named(checkout: Path) -> None:
    result, calls = run_driver(checkout, driver="reproduce-ablations-cpu.sh", ABLATIONS="mtl_lora_n1 mtl_lora_n7")
    assert result.returncode == 2 and calls == []
    assert "ABLATIONS: unknown variant 'mtl_lora_n7'; expected some of: mtl_lora_no_lambda mtl_lora_n1" in result.stderr


def test_every_ablation_variant_has_its_method_config() -> None:
    assert {p.stem for p in (REPO / "configs" / "method").glob("mtl_lora_*.yaml")} == set(ABLATIONS)
