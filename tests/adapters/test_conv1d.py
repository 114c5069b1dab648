"""Hugging Face's Conv1D (GPT-2 family: weight [in, out], forward x @ W + b) is adapted like nn.Linear: PEFT's
outputs and gradients for LoRA and DoRA, the same function as on an equivalent nn.Linear model for every method,
and merging into Conv1D layers."""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from mtllora.adapters import (
    adapter_state_dict,
    apply_adapters,
    load_adapter_state_dict,
    merge_adapters,
    merge_task,
    unmerge_adapters,
)
from mtllora.adapters.convert import from_peft_state_dict, save_peft, to_peft_state_dict

from ..conftest import ALL_METHODS, NUM_TASKS, TASK_AWARE, make_config, randomize_adapters

TARGETS = ["c_attn", "c_proj"]  # attention qkv and output, and the MLP's output projection: all Conv1D


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """Returns a 2-layer random GPT2LMHeadModel (hidden 32, 4 heads, vocab 64) in fp64, eval mode."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).to(torch.float64).eval()


def linear_twin(model: nn.Module) -> nn.Module:
    """Returns a copy of `model` with every Conv1D replaced by the nn.Linear computing the same function."""
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if type(module) is Conv1D:
            nx, nf = module.weight.shape
            linear = nn.Linear(nx, nf, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent), child, linear)
    return twin


def _conv1d_layers(model):
    return [name for name, module in model.named_modules() if type(module) is Conv1D]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_on_conv1d_give_pefts_outputs_and_gradients(method, tmp_path):
    ours = apply_adapters(tiny_gpt2(), make_config(method, target_modules=TARGETS))
    randomize_adapters(ours)
    assert type(ours.transformer.h[0].attn.c_attn.base_layer) is Conv1D
    peft = get_peft_model(
        tiny_gpt2(),
        LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, fan_in_fan_out=True, use_dora=method == "dora"),
    )
    set_peft_model_state_dict(peft, to_peft_state_dict(ours))
    ids = torch.randint(0, 64, (3, 9))
    out_ours, out_peft = ours(input_ids=ids).logits, peft(input_ids=ids).logits
    torch.testing.assert_close(out_ours, out_peft, rtol=1e-10, atol=1e-10)
    out_ours.square().sum().backward()
    out_peft.square().sum().backward()
    peft_params = [p for _, p in peft.named_parameters() if p.requires_grad]
    peft_grads = from_peft_state_dict(
        {k: p.grad for k, p in zip(get_peft_model_state_dict(peft), peft_params, strict=True)}
    )
    ours_grads = {n: p.grad for n, p in ours.named_parameters() if p.requires_grad}
    assert set(ours_grads) == set(peft_grads)
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, peft_grads[name], rtol=1e-9, atol=1e-10, msg=name)
    # Exported to PEFT's format with fan_in_fan_out set, as PEFT needs for Conv1D.
    save_peft(ours, tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    loaded = PeftModel.from_pretrained(tiny_gpt2(), tmp_path / "peft")
    torch.testing.assert_close(loaded(input_ids=ids).logits, out_ours, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_on_conv1d_computes_what_it_computes_on_nn_linear(method):
    conv = apply_adapters(tiny_gpt2(), make_config(method, target_modules=TARGETS))
    randomize_adapters(conv)
    linear = apply_adapters(linear_twin(tiny_gpt2()), make_config(method, target_modules=TARGETS))
    load_adapter_state_dict(linear, adapter_state_dict(conv))
    ids = torch.randint(0, 64, (3, 7))
    kwargs = {"task_ids": torch.tensor([2, 0, 1])} if method in TASK_AWARE else {}
    with torch.no_grad():
        expected = linear(input_ids=ids, **kwargs).logits
        torch.testing.assert_close(conv(input_ids=ids, **kwargs).logits, expected, rtol=1e-10, atol=1e-10)
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        layer, twin = conv.get_submodule(name), linear.get_submodule(name)
        assert (layer.in_features, layer.out_features) == (twin.in_features, twin.out_features)
        task = 1 if method in TASK_AWARE else None
        torch.testing.assert_close(layer.delta_weight(task), twin.delta_weight(task), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_merging_into_conv1d_layers(method):
    model = apply_adapters(tiny_gpt2(), make_config(method, target_modules=TARGETS))
    randomize_adapters(model)
    ids = torch.randint(0, 64, (2, 6))
    targeted = _conv1d_layers(tiny_gpt2())
    for task in range(NUM_TASKS) if method in TASK_AWARE else [None]:
        kwargs = {"task_ids": torch.full((2,), task)} if task is not None else {}
        merged = merge_task(model, task)
        assert _conv1d_layers(merged) == targeted  # the merged model keeps GPT-2's layer types and layout
        with torch.no_grad():
            torch.testing.assert_close(
                merged(input_ids=ids).logits, model(input_ids=ids, **kwargs).logits, rtol=1e-10, atol=1e-10
            )
    if method not in TASK_AWARE:  # in place, and back
        before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        with torch.no_grad():
            adapted_out = model(input_ids=ids).logits
            merge_adapters(model)
            torch.testing.assert_close(model(input_ids=ids).logits, adapted_out, rtol=1e-10, atol=1e-10)
            unmerge_adapters(model)
        for name, param in model.named_parameters():
            if not param.requires_grad:
                torch.testing.assert_close(param, before[name], rtol=1e-12, atol=1e-12, msg=name)
