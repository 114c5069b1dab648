"""`python -m mtllora.plan`: parameter counts, memory arithmetic, steps and tokens from the data, the CLI."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from mtllora import plan
from mtllora.adapters import AdapterConfig, apply_adapters, count_parameters
from mtllora.configs import instantiate_node

LLAMA2_7B_PARAMETERS = 6_738_415_616  # meta-llama/Llama-2-7b-hf


def _tiny_glue(encoder, glue, *extra):
    return ["experiment=glue_ci", "method=mtl_lora", f"model.name_or_path={encoder}", f"paths.data_dir={glue}", *extra]


def test_llama2_7b_from_the_stored_shapes_with_mtl_lora(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = plan.compose(["experiment=commonsense", "method=mtl_lora"])
    config, source = plan.model_config(cfg)
    assert "shapes stored in the model's yaml" in source
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert count_parameters(model).total == LLAMA2_7B_PARAMETERS
    apply_adapters(model, AdapterConfig.from_dict(OmegaConf.to_container(cfg.method.adapter, resolve=True)))
    stats = plan.model_stats(model, config, source)
    # q, k, v, o of 32 layers (4096 × 4096), r 8, n 3 up-projections, T 8: A, B_1..3, Λ_1..8 (r × r), w (T × n).
    per_module = 8 * 4096 + 3 * 8 * 4096 + 8 * 8 * 8 + 8 * 3
    assert stats.trainable == 128 * per_module == 16_845_824
    assert stats.frozen_bytes == 2 * LLAMA2_7B_PARAMETERS and stats.trainable_bytes == 4 * stats.trainable
    assert (stats.layers, stats.hidden, stats.heads, stats.vocab) == (32, 4096, 32, 32000)

    one, eight = (plan.memory(stats, world, 2, 8, 256, 2) for world in (1, 8))
    assert one.frozen == eight.frozen == 2 * LLAMA2_7B_PARAMETERS  # ZeRO-2 keeps every weight on every GPU
    assert one.trained == stats.trainable * (4 + 4 + 8)  # fp32 weights, grads, AdamW m and v
    assert eight.trained == stats.trainable * (4 + (4 + 8) / 8)  # grads and optimizer state partitioned
    per_layer = 256 * 8 * 4096 * (34 + 5 * 32 * 256 / 4096)
    assert one.activations == 32 * per_layer
    assert one.activations_checkpointed == 32 * 2 * 256 * 8 * 4096 + per_layer
    assert one.logits == 2 * 4 * 256 * 8 * 32000
    # The sanity target: about 16 GB per GPU with checkpointing.
    assert 14e9 < one.total(checkpointing=True) < 17e9


def test_zero3_partitions_the_weights_and_zero0_nothing():
    stats = plan.ModelStats(100, 10, 360, 40, 0, 8, 2, 2, 0, "test")
    assert plan.memory(stats, 4, 3, 1, 1, 2).frozen == 90
    assert plan.memory(stats, 4, 3, 1, 1, 2).trained == 40 / 4 + 40 / 4 + 80 / 4
    assert plan.memory(stats, 4, 0, 1, 1, 2).trained == 40 + 40 + 80
    bf16_adapters = plan.ModelStats(100, 10, 360, 20, 10, 8, 2, 2, 0, "test")
    assert plan.memory(bf16_adapters, 1, 2, 1, 1, 2).trained == 20 + 20 + 80 + 40  # + fp32 master copy


def test_steps_batches_and_padding():
    assert plan.steps_per_epoch(100, 8, 2, 2) == 4  # 50 per rank → 7 micro-batches → 4 steps (last one partial)
    assert plan.steps_per_epoch(240, 8, 1, 1) == 30
    assert plan.padded_tokens([1, 9], 2) == 18 and plan.padded_tokens([5] * 4, 2) == 20
    assert plan.padded_tokens([3, 3, 7], 1) == 13
    cfg = plan.compose(["experiment=commonsense", "method=mtl_lora"])  # global batch 64, at most 8 per GPU
    assert plan.batch_layout(cfg.trainer, 1) == (8, 8) and plan.batch_layout(cfg.trainer, 8) == (8, 1)
    cfg = plan.compose(["experiment=glue_ci", "trainer.gradient_accumulation_steps=3"])  # no global batch set
    assert plan.batch_layout(cfg.trainer, 4) == (8, 3)
    assert plan.train_flops(10, 100, 3, checkpointing=True) == 6 * 10 * 100 * 3
    assert plan.train_flops(10, 100, 3, checkpointing=False) == 4 * 10 * 100 * 3


def test_plan_of_a_tiny_run_counts_what_training_builds(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    run = plan.plan_run(_tiny_glue(tiny_encoder_dir, tiny_glue_dir))
    assert run.problems == []
    # q, k, v, o of 2 layers (32 × 32), r 8, n 3, T 5: 8·32 + 3·8·32 + 5·64 + 5·3; linear heads 32 → 2,2,2,1,2.
    assert run.model.trainable == 8 * (8 * 32 + 3 * 8 * 32 + 5 * 64 + 15) + 4 * 33 * 2 + 33 == 11_169
    bench = instantiate_node(run.cfg.benchmark)
    model, tokenizer = bench.build_model(_model_cfg(run.cfg))
    base_total = count_parameters(model).total
    assert run.model.total == base_total + 8 * (8 * 32 + 3 * 8 * 32 + 5 * 64 + 15)
    lengths = [len(ids) for ids in bench.train_dataset(tokenizer)["input_ids"]]
    assert (run.data.examples, run.data.tokens, run.data.longest) == (240, sum(lengths), max(lengths))
    assert run.data.tokenizer == f"the model's tokenizer ({tiny_encoder_dir})"
    assert run.data.eval_examples == 5 * 24 and run.data.eval_generated_tokens == 0
    hours = plan.run_hours(run, plan.GPUS["h100"], 0.4, 1)
    assert (hours["steps_per_epoch"], hours["steps"]) == (30, 6)  # 240 / 8; experiment glue_ci: max_steps 6
    assert hours["train_flops"] == 4 * run.model.total * run.data.padded_tokens * 6 / 30


def _model_cfg(cfg):
    from mtllora.models import ModelConfig

    return ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))


def test_without_the_tokenizer_tokens_are_estimated():
    tokenizer = plan.estimating_tokenizer(None)
    assert len(tokenizer("abcdefgh ij")["input_ids"]) == 1 + 3  # <s>, "abcd", "efgh", "ij"
    assert tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 3


def test_cli_prints_the_plan_and_a_total(tiny_encoder_dir, tiny_glue_dir, capsys):
    status = plan.main(["--gpus", "2", "--seeds", "3", *_tiny_glue(tiny_encoder_dir, tiny_glue_dir)])
    out = capsys.readouterr().out
    assert status == 0
    assert "== glue mtl_lora tiny-bert s1" in out and "240 examples" in out
    assert "1 × H100 SXM: batch 8 (8 per GPU × 1 accumulation), 30 steps/epoch, 6 steps" in out
    assert "TOTAL 1 run(s) × 3 seed(s) on 2 × H100 SXM" in out


def test_a_failed_preflight_is_reported_and_the_plan_goes_on(tiny_encoder_dir, tmp_path, capsys):
    status = plan.main(_tiny_glue(tiny_encoder_dir, tmp_path / "no-glue"))
    out = capsys.readouterr().out
    assert status == 1
    assert "! preflight failed:" in out and "no-glue" in out
    assert "! the data cannot be read: FileNotFoundError" in out
    assert "11,169 trained" in out and "memory/GPU   1 GPU(s)" in out  # what needs no data is still planned
