"""LoRA and DoRA give PEFT's outputs and gradients given the same weights, with PEFT's trainable counts."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from mtllora.adapters import apply_adapters, count_parameters
from mtllora.adapters.convert import from_peft_state_dict, load_adapter_state_dict, to_peft_state_dict

from ..conftest import make_config, randomize_adapters, tiny_bert, tiny_llama

BERT_TARGETS = ["query", "value", "dense"]


def _pair(method, base, targets, dropout):
    ours = apply_adapters(copy.deepcopy(base), make_config(method, target_modules=targets, dropout=dropout))
    randomize_adapters(ours)
    peft = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets, use_dora=method == "dora"),
    )
    set_peft_model_state_dict(peft, to_peft_state_dict(ours))
    return ours, peft


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_same_outputs_and_gradients_as_peft(method, arch, dropout):
    base, targets = (
        (tiny_llama(), ["q_proj", "v_proj", "down_proj"]) if arch == "llama" else (tiny_bert(), BERT_TARGETS)
    )
    ours, peft = _pair(method, base, targets, dropout)
    ids = torch.randint(3, 64, (3, 9))
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        peft.train(mode == "train")
        torch.manual_seed(7)  # the same dropout masks: both draw one mask per adapted layer, in the same order
        out_ours = ours(input_ids=ids)[0]
        torch.manual_seed(7)
        out_peft = peft(input_ids=ids)[0]
        torch.testing.assert_close(out_ours, out_peft, rtol=1e-10, atol=1e-10)
        if mode == "train":
            out_ours.square().sum().backward()
            out_peft.square().sum().backward()
            peft_grads = from_peft_state_dict(
                {k: v.grad for k, v in zip(get_peft_model_state_dict(peft), _peft_params(peft), strict=True)}
            )
            ours_grads = _grads(ours)
            assert set(ours_grads) == set(peft_grads)
            for name, grad in ours_grads.items():
                torch.testing.assert_close(grad, peft_grads[name], rtol=1e-9, atol=1e-10, msg=name)


def _peft_params(peft):
    """PEFT's trainable parameters in the order of get_peft_model_state_dict."""
    return [p for _, p in peft.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_trainable_counts_equal_peft(method):
    base = tiny_llama()
    ours, peft = _pair(method, base, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"], 0.0)
    trainable, total = peft.get_nb_trainable_parameters()
    assert count_parameters(ours) == (trainable, total)


def test_peft_state_dict_round_trip():
    ours, peft = _pair("dora", tiny_llama(), ["q_proj", "v_proj"], 0.0)
    fresh = apply_adapters(tiny_llama(), make_config("dora", target_modules=["q_proj", "v_proj"]))
    load_adapter_state_dict(fresh, from_peft_state_dict(get_peft_model_state_dict(peft)))
    ids = torch.randint(3, 64, (2, 6))
    torch.testing.assert_close(fresh(input_ids=ids).logits, ours(input_ids=ids).logits, rtol=0, atol=0)
