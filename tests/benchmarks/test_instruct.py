"""The instruction-tuning benchmark: the official prompt and tokenisation, record errors, batched generation under
mixed task ids, and the own-data example end to end on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtllora.adapters import apply_adapters
from mtllora.benchmarks.generation import generate
from mtllora.benchmarks.instruct import InputsError, InstructBenchmark, RecordError, alpaca_prompt, read_records

from ..conftest import make_config, randomize_adapters, write_tiny_encoder, write_tiny_llama
from ..test_train import cli

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "data" / "examples" / "toy_multitask"
TOY_FILES = [TOY / "train.jsonl", TOY / "test_sentiment.jsonl", TOY / "test_topic.jsonl"]


def _texts() -> list[str]:
    records = [r for path in TOY_FILES for r in read_records(path)]
    return [alpaca_prompt(r["instruction"], r["input"], r["output"]) for r in records] + ["1 2 3"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), _texts())


def test_the_prompt_is_the_official_training_template_byte_for_byte():
    indent = " " * 16
    assert alpaca_prompt("Say hi.", "", "hi") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        f"  \n\n{indent}### Instruction:\n{indent}Say hi.\n{indent}\n{indent}### Response:\n{indent}hi"
    )
    assert alpaca_prompt("Add.", "1 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write "
        f"a response that appropriately completes the request. \n\n{indent}### Instruction:\n{indent}Add.\n"
        f"{indent}\n{indent}### Input:\n{indent}1 2\n{indent}\n{indent}### Response:\n{indent}"
    )


def _benchmark(tmp_path, **kwargs) -> InstructBenchmark:
    return InstructBenchmark(
        tasks=None,
        train_files=[TOY / "train.jsonl"],
        test_files={"sentiment": TOY / "test_sentiment.jsonl", "topic": TOY / "test_topic.jsonl"},
        cache_dir=tmp_path / "cache",
        **kwargs,
    )


def test_tasks_come_from_the_data_and_only_the_response_is_trained(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    bench = _benchmark(tmp_path, cutoff_len=256)
    assert bench.tasks == ["topic", "sentiment"]  # order of first appearance in train.jsonl
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = bench.train_dataset(tokenizer)
    assert len(data) == 128 and sorted(set(data["task_ids"])) == [0, 1]
    row, record = data[0], read_records(TOY / "train.jsonl")[0]
    prompt_len = len(tokenizer(bench.prompt(record))["input_ids"])
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    assert row["labels"][:prompt_len] == [-100] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert tokenizer.decode(row["labels"][prompt_len:-1]) == record["output"]


def test_a_prompt_longer_than_the_cutoff_is_reported_and_left_out(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    with pytest.warns(UserWarning, match="128 of 128 training records have a prompt of 20 tokens or more"):
        data = _benchmark(tmp_path, cutoff_len=20).train_dataset(AutoTokenizer.from_pretrained(tiny_llama_dir))
    assert len(data) == 0


def test_malformed_records_name_the_file_and_the_record(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"instruction": "a", "input": "", "output": "b"},')
    with pytest.raises(RecordError, match=f"{bad_json}: invalid JSON at line 1 column 51"):
        read_records(bad_json)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": ""}\n')
    with pytest.raises(RecordError, match=f"{missing}: record 1 \\(line 2\\): missing 'output'"):
        read_records(missing)
    out_of_range = tmp_path / "ids.jsonl"
    out_of_range.write_text('{"instruction": "a", "input": "", "output": "b", "task_id": 2}\n')
    with pytest.raises(RecordError, match=r"record 0: task_id 2 is out of range for tasks \['x', 'y'\]"):
        InstructBenchmark(["x", "y"], [out_of_range], {"x": out_of_range, "y": out_of_range}).train_records()
    no_task = tmp_path / "no-task.jsonl"
    no_task.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    with pytest.raises(RecordError, match=r"record 0: needs a 'task' \(one of \['x'\]\) or an integer 'task_id'"):
        InstructBenchmark(["x"], [no_task], {"x": no_task}).train_records()


def test_check_inputs_lists_every_bad_file(tmp_path):
    _benchmark(tmp_path).check_inputs()  # the toy data is fine
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"instruction": "i", "input": "", "output": "o", "task": "other"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bench = InstructBenchmark(
        tasks=["sentiment", "topic"],
        train_files=[train, tmp_path / "gone.jsonl"],
        test_files={"sentiment": empty, "topic": tmp_path / "none.jsonl"},
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(InputsError) as error:
        bench.check_inputs()
    assert str(error.value).splitlines() == [
        "instruct: 4 problem(s) with benchmark.train_files/test_files:",
        f"  - {train}: record 0: needs a 'task' (one of ['sentiment', 'topic']) or an integer 'task_id', got "
        "task='other'",
        f"  - no data file {tmp_path / 'gone.jsonl'}",
        f"  - {empty}: expected a JSON list of records or JSON Lines (one object per line), got an empty file (the "
        "test file of task 'sentiment')",
        f"  - no data file {tmp_path / 'none.jsonl'} (the test file of task 'topic')",
        "Records: JSON lists or JSON Lines of {instruction, input, output, answer?, task | task_id}.",
    ]


def test_batched_generation_with_mixed_tasks_equals_one_by_one(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    apply_adapters(model, make_config("mtl_lora", num_tasks=2))
    randomize_adapters(model, std=0.5)
    records = read_records(TOY / "test_sentiment.jsonl")[:3] + read_records(TOY / "test_topic.jsonl")[:3]
    prompts = [alpaca_prompt(r["instruction"], r["input"][: 10 + 7 * i]) for i, r in enumerate(records)]
    task_ids = [0, 1, 1, 0, 1, 0]
    batched = generate(model, tokenizer, prompts, task_ids, batch_size=6, max_new_tokens=8)
    single = [
        generate(model, tokenizer, [p], [t], batch_size=1, max_new_tokens=8)[0]
        for p, t in zip(prompts, task_ids, strict=True)
    ]
    assert batched == single
    assert any(
        batched[i] != generate(model, tokenizer, [prompts[i]], [1 - task_ids[i]], max_new_tokens=8)[0] for i in range(6)
    ), "the task id must change what is generated"


def test_own_data_example_trains_and_evaluates_from_the_command_line(tiny_llama_dir, tmp_path):
    args = [
        "experiment=instruct_example",
        f"model.name_or_path={tiny_llama_dir}",
        "model.gguf_file=null",
        "method=mtl_lora",
        "trainer.max_steps=4",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"benchmark.cache_dir={tmp_path / 'cache'}",
    ]
    result = cli(args)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_order"] == ["topic", "sentiment"] and metrics["train"]["steps"] == 4
    assert metrics["config"]["method"]["adapter"]["num_tasks"] is None  # filled in from the data: 2 tasks
    predictions = [json.loads(line) for line in (run_dir / "predictions" / "topic.jsonl").read_text().splitlines()]
    assert len(predictions) == 16
    assert set(predictions[0]) == {"index", "prompt", "label", "response", "prediction", "correct"}
    accuracy = sum(p["correct"] for p in predictions) / 16
    assert metrics["tasks"]["topic"]["accuracy"] == accuracy
    assert metrics["average"] == pytest.approx(50 * sum(m["accuracy"] for m in metrics["tasks"].values()))

    zero_shot = cli([*args, "method=zero_shot"])
    assert zero_shot.returncode == 0, zero_shot.stderr[-3000:]
    zero_dir = next(p.parent for p in (tmp_path / "runs").rglob("metrics.json") if "zero_shot" in str(p))
    zero_metrics = json.loads((zero_dir / "metrics.json").read_text())
    assert zero_metrics["train"]["steps"] == 0 and zero_metrics["params"]["trainable"] == 0
    assert not (zero_dir / "adapter.safetensors").exists()


def test_a_model_without_a_causal_lm_head_is_refused(tmp_path):
    from mtllora.models import ModelConfig

    encoder = write_tiny_encoder(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"is a 'bert' model \(BertModel\) without a causal-LM head"):
        _benchmark(tmp_path).build_model(ModelConfig(name="bert", name_or_path=str(encoder)))
