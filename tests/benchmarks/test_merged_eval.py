"""Merged evaluation (`generate(merged=True)`, `merged_weights`): each task's update merged into the weights gives the
same generations as the adapters in the decode loop, for every method; the model is put back bit for bit; ZeRO-3 and
layers that cannot merge are refused; the benchmarks' `eval_merged` reaches the generation."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

import mtllora.benchmarks.instruct as instruct
from mtllora.adapters import AdapterLinear, adapter_layers, apply_adapters, use_tasks
from mtllora.benchmarks import generation
from mtllora.benchmarks.commonsense import TASKS, CommonsenseBenchmark
from mtllora.benchmarks.generation import eval_merged, generate, generate_image_text, merged_weights
from mtllora.benchmarks.instruct import InstructBenchmark, alpaca_prompt, read_records
from mtllora.models import ModelConfig

from .. import test_vl_bart
from ..conftest import ALL_METHODS, TASK_AWARE, adapted, make_config, randomize_adapters, tiny_llama, write_tiny_llama
from ..test_vl_bart import _examples, _mtl_lora, tiny_vl_bart
from . import test_commonsense_run
from .test_instruct import TOY, TOY_FILES, _texts

vl_tokenizer = test_vl_bart.tokenizer  # the word-level BART tokenizer fixture, under this name here
commonsense_dir = test_commonsense_run.commonsense_dir  # the module fixtures of the commonsense end-to-end tests
llama_dir = test_commonsense_run.llama_dir


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), _texts())


def _snapshot(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[tuple[str, torch.nn.Module]]]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, list(adapter_layers(model))


def _assert_unchanged(model: torch.nn.Module, before: tuple[dict[str, torch.Tensor], list]) -> None:
    state, layers = before
    after = model.state_dict()
    assert list(after) == list(state)
    changed = [k for k, v in state.items() if not torch.equal(after[k], v)]
    assert changed == []
    assert [(n, id(m)) for n, m in adapter_layers(model)] == [(n, id(m)) for n, m in layers]
    assert not any(m.merged for _, m in layers)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_merged_weights_compute_the_task_and_put_the_model_back_bit_for_bit(method):
    model = adapted(method)
    base = tiny_llama()
    ids = torch.randint(3, 64, (2, 7))
    task = 1 if method in TASK_AWARE else None
    with torch.no_grad(), use_tasks(model, task) if task is not None else contextlib.nullcontext():
        expected = model(input_ids=ids).logits
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), merged_weights(model, task), torch.no_grad():
        assert list(adapter_layers(model)) == []  # no adapter in the forward
        merged = model(input_ids=ids).logits
        torch.testing.assert_close(merged, expected, rtol=1e-10, atol=1e-10)
        assert (merged - base(input_ids=ids).logits).abs().max() > 1e-3, "the update must change the output"
        raise RuntimeError("inside")  # an error in the block still puts the adapters back
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_merged_generation_equals_unmerged_and_leaves_the_model_as_it_was(tiny_llama_dir, method, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merges = []

    def spy(model, task_id):
        merges.append(task_id)
        return merged_weights(model, task_id)

    monkeypatch.setattr(generation, "merged_weights", spy)

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    options = {"num_tasks": 2} if method in TASK_AWARE else {}
    apply_adapters(model, make_config(method, **options))
    randomize_adapters(model, std=0.5)
    records = read_records(TOY / "test_sentiment.jsonl")[:3] + read_records(TOY / "test_topic.jsonl")[:3]
    prompts = [alpaca_prompt(r["instruction"], r["input"][: 10 + 7 * i]) for i, r in enumerate(records)]
    task_ids = [0, 1, 1, 0, 1, 0]
    before = _snapshot(model)
    unmerged = generate(model, tokenizer, prompts, task_ids, batch_size=4, max_new_tokens=8)
    merged = generate(model, tokenizer, prompts, task_ids, batch_size=4, max_new_tokens=8, merged=True)
    assert merged == unmerged
    assert merges == ([0, 1] if method in TASK_AWARE else [None])  # one merge per task, or one for all rows
    _assert_unchanged(model, before)
    assert model.training is False and all(isinstance(m, AdapterLinear) for _, m in adapter_layers(model))


def test_merged_generation_refuses_zero3_and_task_aware_rows_without_ids(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    apply_adapters(model, make_config("mtl_lora", num_tasks=2))
    with pytest.raises(ValueError, match=r"merged=True with synced_gpus=True: DeepSpeed ZeRO-3 partitions"):
        generate(model, tokenizer, ["a"], [0], merged=True, synced_gpus=True)
    with pytest.raises(ValueError, match="mtl_lora merges one task at a time; pass task_ids"):
        generate(model, tokenizer, ["a"], merged=True)
    next(model.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 marks its partitioned parameters with
    with pytest.raises(ValueError, match="has DeepSpeed ZeRO-3 partitioned weights, which cannot be merged"):
        generate(model, tokenizer, ["a"], [0], merged=True)


def test_a_layer_that_cannot_merge_is_refused_before_any_layer_is_swapped(monkeypatch):
    model = adapted("mtl_lora")
    before = _snapshot(model)
    last = before[1][-1][1]

    def cannot_merge(task_id):
        raise NotImplementedError(f"{last.name}: this method has no merged form")

    monkeypatch.setattr(last, "merged_linear", cannot_merge)
    with pytest.raises(NotImplementedError, match="has no merged form"), merged_weights(model, 0):
        pass
    _assert_unchanged(model, before)


def _trainer(model: torch.nn.Module, output_dir, zero_stage: int | None) -> SimpleNamespace:
    config = {} if zero_stage is None else {"zero_optimization": {"stage": zero_stage}}
    return SimpleNamespace(
        model=model,
        is_deepspeed_enabled=zero_stage is not None,
        args=SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config=config), output_dir=str(output_dir)),
        is_world_process_zero=lambda: True,
    )


def test_eval_merged_is_off_under_zero3_only(caplog):
    assert eval_merged(_trainer(None, ".", None), True) is True
    assert eval_merged(_trainer(None, ".", 2), True) is True
    assert eval_merged(_trainer(None, ".", None), False) is False
    with caplog.at_level("INFO", logger="mtllora.benchmarks.generation"):
        assert eval_merged(_trainer(None, ".", 3), True) is False
    assert "DeepSpeed ZeRO-3 partitions the weights: evaluating with the adapters unmerged" in caplog.text


@pytest.mark.parametrize(("configured", "zero_stage", "expected"), [(True, None, True), (False, None, False),
                                                                   (True, 3, False)])  # fmt: skip
def test_the_benchmark_key_eval_merged_reaches_the_generation(monkeypatch, tmp_path, configured, zero_stage, expected):
    calls = []

    def fake_generate(model, tokenizer, prompts, task_ids, **kwargs):
        calls.append(kwargs)
        return ["positive"] * len(prompts)

    monkeypatch.setattr(instruct, "generate", fake_generate)
    bench = InstructBenchmark(
        ["sentiment", "topic"],
        TOY_FILES[:1],
        {"sentiment": TOY_FILES[1], "topic": TOY_FILES[2]},
        max_eval_samples=2,
        eval_merged=configured,
    )
    bench.evaluate(_trainer(torch.nn.Linear(1, 1), tmp_path, zero_stage), tokenizer=None)
    assert [(c["merged"], c["synced_gpus"]) for c in calls] == [(expected, zero_stage == 3)]
    bench.predict(torch.nn.Linear(1, 1), None, "topic", [{"instruction": "x"}])
    assert calls[-1]["merged"] is configured


def test_eval_merged_is_off_by_default_and_must_be_a_boolean():
    assert InstructBenchmark(["sentiment"], TOY_FILES[:1], {"sentiment": TOY_FILES[1]}).eval_merged is False
    with pytest.raises(ValueError, match=r"benchmark.eval_merged must be true or false, got 'yes'"):
        InstructBenchmark(["sentiment"], TOY_FILES[:1], {"sentiment": TOY_FILES[1]}, eval_merged="yes")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_merged_image_text_generation_equals_unmerged(vl_tokenizer, num_beams):
    model = _mtl_lora(tiny_vl_bart(), trainable=["visual_embedding", r"\.bias$", r"layer_?norm"])
    prompts, feats, boxes, img_ids, tasks = _examples()
    kwargs = {"img_order_ids": img_ids, "max_new_tokens": 6, "num_beams": num_beams, "batch_size": 4}
    before = _snapshot(model)
    unmerged = generate_image_text(model, vl_tokenizer, prompts, feats, boxes, tasks, **kwargs)
    merged = generate_image_text(model, vl_tokenizer, prompts, feats, boxes, tasks, merged=True, **kwargs)
    assert merged == unmerged and len(set(merged)) > 1, merged
    _assert_unchanged(model, before)


@pytest.mark.parametrize("method", ["lora", "mtl_lora"])
def test_commonsense_evaluation_is_the_same_merged_and_unmerged(commonsense_dir, llama_dir, tmp_path, method):
    predictions = {}
    for merged in (True, False):
        bench = CommonsenseBenchmark(
            commonsense_dir, cache_dir=tmp_path / "cache", eval_batch_size=8, max_new_tokens=6, eval_merged=merged
        )
        model, tokenizer = bench.build_model(ModelConfig(name="tiny", name_or_path=str(llama_dir)))
        torch.manual_seed(0)  # the same adapter both ways
        apply_adapters(model, make_config(method, **({"num_tasks": 8} if method in TASK_AWARE else {})))
        randomize_adapters(model, std=0.5)
        out = tmp_path / f"merged-{merged}"
        args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])
        metrics = bench.evaluate(Trainer(model=model, args=args), tokenizer)
        predictions[merged] = (metrics, {t: (out / "predictions" / f"{t}.jsonl").read_text() for t in TASKS})
    assert predictions[True] == predictions[False]
    responses = [json.loads(line)["response"] for text in predictions[True][1].values() for line in text.splitlines()]
    assert len(set(responses)) > 1  # the tiny model says different things to different prompts
