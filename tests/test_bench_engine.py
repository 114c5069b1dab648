"""The speed harness's engine suite (`python -m speed --suites engine`): whole training jobs, each in its own
process, against PEFT + Trainer. Tiny encoder and GLUE files here; what the numbers are is the benchmark's business,
that every row runs, is timed after warm-up and reaches the report is the tests'."""

from __future__ import annotations

import json

import pytest

from speed import engine, main


def test_steady_throughput_counts_the_steps_after_warm_up():
    # Steps end at 1, 2, 4, 6, 8 s: after 2 warm-up steps, 3 steps of 16 samples in 6 s.
    assert engine.steady_samples_per_second([1.0, 2.0, 4.0, 6.0, 8.0], warmup=2, batch=16) == 8.0
    with pytest.raises(ValueError, match="3 step\\(s\\) timed, but the first 3 are warm-up"):
        engine.steady_samples_per_second([1.0, 2.0, 3.0], warmup=3, batch=16)


def test_the_peer_and_mtl_lora_train_in_their_own_processes(tiny_encoder_dir, tiny_glue_dir):
    suite = engine.measure_engine(
        str(tiny_encoder_dir), str(tiny_glue_dir), steps=4, warmup=1, threads=1, rows=["peft_lora", "mtl_lora"]
    )
    assert [row["key"] for row in suite["rows"]] == ["peft_lora", "mtl_lora"]
    for row in suite["rows"]:
        assert row["samples_per_second"] > 0 and row["startup_seconds"] >= 0 and row["loop_seconds"] > 0
    assert suite["targets"] == []  # neither target has both of its rows here
    section = engine.markdown(suite)
    assert "| PEFT LoRA + Trainer | sst2 |" in section and "| mtllora.train MTL-LoRA | 5 tasks |" in section


def test_an_unknown_row_is_named(tiny_encoder_dir, tiny_glue_dir):
    with pytest.raises(ValueError, match="engine rows \\['dora'\\] unknown"):
        engine.measure_engine(str(tiny_encoder_dir), str(tiny_glue_dir), steps=4, warmup=1, threads=1, rows=["dora"])


def test_without_data_the_report_says_why_the_suite_did_not_run(tmp_path):
    path = main(["--quick", "--suites", "engine", "--engine-data-dir", "", "--out", str(tmp_path)])
    data = json.loads(path.read_text())
    assert data["engine"] == {"status": "not run: no GLUE data (--engine-data-dir or MTLLORA_DATA_DIR)"}
    assert "not run: no GLUE data" in path.with_suffix(".md").read_text()
