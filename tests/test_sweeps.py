"""Hydra sweeps end to end on a tiny encoder: each sweep keeps its own files, a multirun (submitit or local) ends with
one line per run, the runs are rows of the tables, and the Optuna search runs its trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtllora.rundir import run_suffix, suffix_overrides
from mtllora.tables import build_tables
from tests.test_train import cli, overrides


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ([], []),
        (["trainer.learning_rate=0.001"], ["trainer.learning_rate=0.001"]),
        (
            ["trainer.max_steps=2", "+trainer.adam_beta2=0.5", "benchmark.tasks=[cola,rte]", "seed=2"],
            ["benchmark.tasks=[cola,rte]", "trainer.adam_beta2=0.5", "trainer.max_steps=2"],
        ),
        (
            ["benchmark.task_weights={stsb:0.2,rte:1}", "method.label='A, B'"],
            ["benchmark.task_weights={stsb_0.2,rte_1}", "method.label='A,_B'"],
        ),
    ],
)
def test_suffix_overrides_reads_back_run_suffix(given, named):
    assert suffix_overrides("glue-lora-minilm-l6-s1" + run_suffix(given)) == named


def summary(stdout: str) -> list[str]:
    return [line.removeprefix("[mtllora]   ") for line in stdout.splitlines() if line.startswith("[mtllora]   ")]


def expected_summary(run_dirs: list[Path]) -> list[str]:
    width = max(len(d.name) for d in run_dirs)
    averages = [json.loads((d / "metrics.json").read_text())["average"] for d in run_dirs]
    return [f"{d.name:<{width}}  average {avg:6.2f}  {d}" for d, avg in zip(run_dirs, averages, strict=True)]


def test_a_sweep_ends_with_a_summary_keeps_its_own_files_and_gives_rows(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    sweep = [
        "-m",
        *overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=lora", "trainer.max_steps=2"),
        "trainer.learning_rate=1e-3,2e-3",
    ]
    # The submitit launcher runs each job in a process of its own: the summary still finds every run.
    first = cli([*sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])
    assert first.returncode == 0, first.stderr[-3000:]
    profile = tmp_path / "runs" / "glue_ci"
    run_dirs = [
        profile / f"glue-lora-tiny-bert-s1,trainer.learning_rate={lr},trainer.max_steps=2" for lr in ("0.001", "0.002")
    ]
    assert summary(first.stdout) == expected_summary(run_dirs)
    # Again with the local launcher: the finished runs resume to their metrics; this sweep keeps its own files too.
    second = cli([*sweep, "trainer.resume=true"])
    assert second.returncode == 0, second.stderr[-3000:]
    assert summary(second.stdout) == expected_summary(run_dirs)
    sweep_dirs = sorted((tmp_path / "runs" / "multirun").iterdir())
    assert len(sweep_dirs) == 2, sweep_dirs
    for sweep_dir, resumed in zip(sweep_dirs, (False, True), strict=True):
        assert f"the sweep's own files are in {sweep_dir}" in (second if resumed else first).stdout
        task_overrides = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task
        assert ("trainer.resume=true" in task_overrides) == resumed
        assert (
            sorted(Path(line.split("\t")[1]) for line in (sweep_dir / "runs.tsv").read_text().splitlines()) == run_dirs
        )
    assert sorted(p.name for p in profile.iterdir()) == [d.name for d in run_dirs]  # the run dirs, nothing else
    # The tables: one row per learning rate, the shared override said once.
    build_tables(tmp_path / "runs", tmp_path / "tables", tmp_path / "no_paper", x="trainer.learning_rate")
    markdown = (tmp_path / "tables" / "glue.md").read_text()
    averages = [json.loads((d / "metrics.json").read_text())["average"] for d in run_dirs]
    rows = [line for line in markdown.splitlines() if line.startswith("| LoRA")][:2]  # the main table's
    assert [(row.split(" | ")[0], row.split(" | ")[-2]) for row in rows] == [
        (f"| LoRA, trainer.learning_rate={lr}", f"{avg:.2f}")
        for lr, avg in zip(("0.001", "0.002"), averages, strict=True)
    ]
    assert "Every row: trainer.max_steps=2 (overrides that name the run directories)." in markdown
    assert (tmp_path / "tables" / "glue_by_trainer.learning_rate.png").exists()


def test_optuna_search_runs_its_trials(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    result = cli(
        [
            "-m",
            *overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "trainer.max_steps=2"),
            "hparams_search=glue_optuna",
            "hydra.sweeper.n_trials=2",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = sorted((tmp_path / "runs" / "glue_ci").iterdir())
    assert len(run_dirs) == 2 and len(summary(result.stdout)) == 2
    metrics = [json.loads((d / "metrics.json").read_text()) for d in run_dirs]
    trials = [
        (
            m["config"]["trainer"]["learning_rate"],
            m["config"]["method"]["adapter"]["r"],
            m["config"]["method"]["adapter"]["temperature"],
        )
        for m in metrics
    ]
    assert trials[0] != trials[1]
    for (lr, r, temperature), m, run_dir in zip(trials, metrics, run_dirs, strict=True):
        assert m["method"] == "mtl_lora" and 1e-4 <= lr <= 5e-3 and r in (4, 8, 16) and 0.05 <= temperature <= 1.0
        # The trial's values name its directory; the search's own choice (hparams_search) does not.
        assert run_dir.name.startswith(f"glue-mtl_lora-tiny-bert-s1,method.adapter.r={r},")
        assert f"trainer.learning_rate={lr}" in run_dir.name and "hparams_search" not in run_dir.name
    (sweep_dir,) = (tmp_path / "runs" / "multirun").iterdir()
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert results.best_value == pytest.approx(max(m["average"] for m in metrics))
