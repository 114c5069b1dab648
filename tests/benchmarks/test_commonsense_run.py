"""Commonsense end to end on a tiny Llama: the CLI's shrunken path, and batched evaluation equal to one-by-one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainingArguments

from mtllora.adapters import apply_adapters
from mtllora.benchmarks.commonsense import (
    FULL_TRAIN_RECORDS,
    TASKS,
    CommonsenseBenchmark,
    extract_answer,
    load_records,
)
from mtllora.models import ModelConfig

from ..conftest import make_config, randomize_adapters, write_tiny_llama
from ..test_train import cli
from .test_commonsense import write_commonsense


@pytest.fixture(scope="module")
def commonsense_dir(tmp_path_factory):
    return write_commonsense(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, commonsense_dir):
    bench = CommonsenseBenchmark(commonsense_dir, allow_partial_train=True, cache_dir=tmp_path_factory.mktemp("cache"))
    texts = [bench.prompt(r, r["output"]) for r in bench.train_records()]
    texts += [bench.prompt(r) for task in TASKS for r in bench.test_records(task)] + ["1 2 3 4 5 true false"]
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts)


def test_shrunken_commonsense_run_scores_every_task(commonsense_dir, llama_dir, tmp_path):
    result = cli(
        [
            "experiment=commonsense_ci",
            "method=mtl_lora",
            f"model.name_or_path={llama_dir}",
            f"paths.data_dir={commonsense_dir}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"benchmark.cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_order"] == list(TASKS) and metrics["train"]["steps"] == 3
    assert metrics["config"]["method"]["adapter"]["num_tasks"] == 8
    counts = {task: 3 if task.startswith("ARC") else 2 for task in TASKS}  # the fixture's train records
    assert metrics["data"] == {
        "train_source": str(commonsense_dir / "commonsense"),
        "train_records": counts,
        "full_train_records": FULL_TRAIN_RECORDS,
        "partial": True,
    }
    for task in TASKS:
        rows = [json.loads(line) for line in (run_dir / "predictions" / f"{task}.jsonl").read_text().splitlines()]
        assert [row["label"] for row in rows] == [r["answer"] for r in load_records(_test_path(commonsense_dir, task))]
        assert metrics["tasks"][task]["accuracy"] == sum(row["correct"] for row in rows) / len(rows)
        assert metrics["tasks"][task]["no_answer"] == sum(row["prediction"] == "" for row in rows) / len(rows)
        for mode in ("official", "strict"):  # both parsers, from the responses the headline scored
            assert [row[f"prediction_{mode}"] for row in rows] == [
                extract_answer(task, r["response"], mode) for r in rows
            ]
            assert metrics["tasks"][task][f"accuracy_{mode}"] == sum(row[f"correct_{mode}"] for row in rows) / len(rows)
        assert metrics["tasks"][task]["accuracy"] == metrics["tasks"][task]["accuracy_official"]
    assert metrics["average"] == pytest.approx(100 * sum(m["accuracy"] for m in metrics["tasks"].values()) / 8)


def _test_path(root: Path, task: str) -> Path:
    folder = root / "commonsense" / task
    return folder / ("test_reconstructed.json" if task == "hellaswag" else "test.json")


def test_batched_evaluation_equals_one_by_one(commonsense_dir, llama_dir, tmp_path):
    predictions = {}
    for batch_size in (8, 1):
        bench = CommonsenseBenchmark(
            commonsense_dir, cache_dir=tmp_path / "cache", eval_batch_size=batch_size, max_new_tokens=6
        )
        model, tokenizer = bench.build_model(ModelConfig(name="tiny", name_or_path=str(llama_dir)))
        torch.manual_seed(0)  # the same adapter initialisation for both batch sizes
        apply_adapters(model, make_config("mtl_lora", num_tasks=8))
        randomize_adapters(model, std=0.5)
        out = tmp_path / f"batch{batch_size}"
        args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])
        metrics = bench.evaluate(Trainer(model=model, args=args), tokenizer)
        predictions[batch_size] = (metrics, {t: (out / "predictions" / f"{t}.jsonl").read_text() for t in TASKS})
    assert predictions[8] == predictions[1]
    responses = [json.loads(line)["response"] for text in predictions[8][1].values() for line in text.splitlines()]
    assert len(set(responses)) > 1  # the tiny model says different things to different prompts


def test_a_combined_train_file_may_be_a_url(commonsense_dir, tmp_path):
    from .test_commonsense import fixture_records, with_task_ids, write_json

    records = [r for rs in with_task_ids(fixture_records("train")).values() for r in rs]
    combined = write_json(tmp_path / "web" / "commonsense_170k_taskid.json", records)
    bench = CommonsenseBenchmark(
        commonsense_dir, train_file=combined.as_uri(), allow_partial_train=True, cache_dir=tmp_path / "cache"
    )
    loaded = sorted((r["instruction"], r["task_id"]) for r in bench.train_records())
    assert loaded == sorted((r["instruction"], r["task_id"]) for r in records) and len(loaded) == 18
    assert (tmp_path / "cache" / "commonsense_170k_taskid.json").read_text() == combined.read_text()
    missing = CommonsenseBenchmark(commonsense_dir, train_file=(tmp_path / "none.json").as_uri(), cache_dir=tmp_path)
    with pytest.raises(OSError, match=r"could not download benchmark\.train_file file://"):
        missing.train_records()
