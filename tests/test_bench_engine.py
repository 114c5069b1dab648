"""The speed harness's engine suite (`python -m speed --suites engine`): whole training jobs, each in its own
process, against PEFT + Trainer. Tiny models and data here (an encoder on GLUE files, a Llama on commonsense files);
what the numbers are is the benchmark's business, that every row runs, is timed after warm-up and reaches the report
is the tests'."""

from __future__ import annotations

import json

import pytest

from mtllora.testing import COMMONSENSE_TEMPLATES, commonsense_record, write_tiny_commonsense, write_tiny_llama
from speed import engine, main


def test_step_times_and_the_paired_interval_of_a_ratio():
    assert engine.step_seconds([1.0, 2.0, 4.0, 6.5, 8.0], warmup=2) == [2.0, 2.5, 1.5]
    with pytest.raises(ValueError, match="3 step\\(s\\) timed, but the first 3 are warm-up"):
        engine.step_seconds([1.0, 2.0, 3.0], warmup=3)
    # Every step of the row takes 0.8 of the other's: 1.25× its samples/s, whichever steps a resample draws.
    against = [1.0, 3.0, 2.0, 5.0, 4.0]
    low, high = engine.paired_ratio_interval([0.8 * t for t in against], against)
    assert low == pytest.approx(1.25) and high == pytest.approx(1.25)
    # One slow step of five in the row: the ratio of the totals is 15 / 19, and resamples spread around it.
    low, high = engine.paired_ratio_interval([1.0, 3.0, 2.0, 9.0, 4.0], against)
    assert low < 15 / 19 < high <= 1.0  # a resample without the slow step: exactly 1
    assert engine.paired_ratio_interval([1.0, 2.0], [1.0, 2.0, 3.0]) is None  # not the same steps


def test_the_peer_and_mtl_lora_train_in_their_own_processes_in_rounds(tiny_encoder_dir, tiny_glue_dir):
    """The GLUE job's two rounds (its default): each row twice, the second round in reverse order, 3 timed steps of
    4 each time."""
    glue = engine.JOBS["glue"]
    runs = []
    suite = engine.measure_engine(
        glue,
        str(tiny_encoder_dir),
        str(tiny_glue_dir),
        steps=4,
        warmup=1,
        threads=1,
        rows=["peft_lora", "mtl_lora"],
        log=lambda line: runs.append(line.split()[2] + line.split()[-1]),
    )
    assert runs == ["peft_lora1", "mtl_lora1", "mtl_lora2", "peft_lora2"] and suite["rounds"] == 2
    assert [row["key"] for row in suite["rows"]] == ["peft_lora", "mtl_lora"]
    for row in suite["rows"]:
        assert row["samples_per_second"] == pytest.approx(6 * glue.batch / sum(row["step_seconds"]))
        assert len(row["step_seconds"]) == 6 and row["startup_seconds"] >= 0 and row["loop_seconds"] > 0
    assert suite["targets"] == []  # neither target has both of its rows here
    section = engine.markdown([suite])
    assert "| PEFT LoRA + Trainer | sst2 |" in section and "| mtllora.train MTL-LoRA | 5 tasks |" in section


def test_the_commonsense_job_trains_the_peer_and_both_methods(tmp_path):
    data = write_tiny_commonsense(tmp_path / "data", train=4)
    texts = [commonsense_record(task, f"q {task}")["instruction"] for task in COMMONSENSE_TEMPLATES]
    llama = write_tiny_llama(tmp_path / "llama", [*texts, "the correct answer is true false 1 2 3 4 5"])
    job = engine.JOBS["commonsense"]
    # One round (the job's default is 2; the rounds are the GLUE test's): 3 timed steps per row.
    suite = engine.measure_engine(job, str(llama), str(data), steps=4, warmup=1, threads=1, rounds=1)
    assert [row["key"] for row in suite["rows"]] == ["peft_lora", "lora", "mtl_lora"]
    assert suite["batch"] == 8 and suite["model"] == "llama"
    assert [(t["row"], t["against"]) for t in suite["targets"]] == [("lora", "peft_lora"), ("mtl_lora", "peft_lora")]
    for target in suite["targets"]:
        assert target["ratio"] > 0 and target["met"] == (target["ratio"] >= target["at_least"])
        low, high = target["interval"]  # 3 paired steps after warm-up
        assert 0 < low <= high
    assert all(len(row["step_seconds"]) == 3 for row in suite["rows"])
    section = engine.markdown([suite])
    assert "95 % bootstrap interval over the two rows' paired steps" in section
    assert "### commonsense reasoning" in section and "| mtllora.train MTL-LoRA | 8 tasks |" in section


def test_an_unknown_row_is_named(tiny_encoder_dir, tiny_glue_dir):
    with pytest.raises(ValueError, match="glue engine rows \\['dora'\\] unknown"):
        engine.measure_engine(
            engine.JOBS["glue"], str(tiny_encoder_dir), str(tiny_glue_dir), steps=4, warmup=1, threads=1, rows=["dora"]
        )


def test_without_data_the_report_says_why_the_suite_did_not_run(tmp_path):
    path = main(["--quick", "--suites", "engine", "--engine-data-dir", "", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    status = "not run: no benchmark data (--engine-data-dir or MTLLORA_DATA_DIR)"
    assert data["engine"] == [
        {"job": "glue", "title": "GLUE", "status": status},
        {"job": "commonsense", "title": "commonsense reasoning", "status": status},
    ]
    report = path.with_suffix(".md").read_text()
    assert f"### GLUE\n\n{status}" in report
    assert "## Summary" not in report and "## Targets" not in report  # no step-timed suite ran


def test_an_unknown_engine_job_or_no_steps_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--quick", "--suites", "engine", "--engine-jobs", "glue,vqa", "--out", str(tmp_path)])
    assert (
        "--engine-jobs takes a comma-separated subset of ['commonsense', 'glue'], got ['vqa']"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["--quick", "--suites", "engine", "--engine-steps", "0", "--out", str(tmp_path)])
    assert "--engine-steps must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--quick", "--suites", "engine", "--engine-rounds", "0", "--out", str(tmp_path)])
    assert "--engine-rounds must be >= 1, got 0" in capsys.readouterr().err
