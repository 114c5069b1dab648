"""Merging (in place and per task), saving and loading adapters."""

import copy

import pytest
import torch
from torch import nn

from mtllora.adapters import (
    AdapterLinear,
    adapter_state_dict,
    apply_adapters,
    load_adapter,
    load_adapter_state_dict,
    merge_adapters,
    merge_task,
    read_adapter_config,
    save_adapter,
    unmerge_adapters,
)

from ..conftest import ALL_METHODS, NUM_TASKS, TASK_AWARE, adapted, make_config, tiny_llama

TASK_AGNOSTIC = [m for m in ALL_METHODS if m not in TASK_AWARE]


def _weights(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@pytest.mark.parametrize("method", TASK_AGNOSTIC)
def test_merge_unmerge_round_trip(method):
    model = adapted(method)
    ids = torch.randint(3, 64, (2, 6))
    before_weights = _weights(model)
    before = model(input_ids=ids).logits
    merge_adapters(model)
    assert all(layer.merged for _, layer in model.named_modules() if isinstance(layer, AdapterLinear))
    changed = [n for n, w in _weights(model).items() if not torch.equal(w, before_weights[n])]
    assert changed and all(n.endswith("base_layer.weight") for n in changed)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="already merged"):
        merge_adapters(model)
    unmerge_adapters(model)
    for name, weight in _weights(model).items():
        torch.testing.assert_close(weight, before_weights[name], rtol=1e-13, atol=1e-14, msg=name)
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", TASK_AWARE)
def test_task_aware_methods_do_not_merge_in_place(method):
    with pytest.raises(ValueError, match="use merge_task"):
        merge_adapters(adapted(method))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_merge_task_returns_a_plain_model_equal_to_the_adapted_one(method):
    model = adapted(method)
    ids = torch.randint(3, 64, (3, 6))
    for task in range(NUM_TASKS) if method in TASK_AWARE else [None]:
        plain = merge_task(model, task)
        assert not any(isinstance(m, AdapterLinear) for m in plain.modules())
        assert not hasattr(plain, "_mtllora") and not plain._forward_pre_hooks
        assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in tiny_llama().parameters())
        expected = model(input_ids=ids, task_ids=torch.full((3,), task if task is not None else 0)).logits
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-10, atol=1e-10)
    assert any(isinstance(m, AdapterLinear) for m in model.modules())  # the adapted model is untouched


def test_merge_task_checks_the_task_id():
    with pytest.raises(ValueError, match=r"pass task_id in 0\.\.2"):
        merge_task(adapted("mtl_lora"))
    with pytest.raises(ValueError, match="task id 3 is out of range"):
        merge_task(adapted("mtl_lora"), 3)
    with pytest.raises(ValueError, match="task-agnostic"):
        merge_task(adapted("lora"), 1)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_save_and_load_into_a_fresh_base_model(method, tmp_path):
    model = adapted(method, trainable=["model.norm"])
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    assert read_adapter_config(path) == make_config(method, trainable=["model.norm"])
    state = adapter_state_dict(model)
    assert "model.norm.weight" in state and all("base_layer" not in k for k in state)
    fresh = load_adapter(tiny_llama(), path)
    ids = torch.randint(3, 64, (2, 6))
    tasks = torch.tensor([1, 2])
    torch.testing.assert_close(
        fresh(input_ids=ids, task_ids=tasks).logits,
        model(input_ids=ids, task_ids=tasks).logits,
        rtol=0,
        atol=0,
    )


def test_loading_a_state_dict_of_another_method_or_shape_fails_clearly(tmp_path):
    lora_state = adapter_state_dict(adapted("lora"))
    with pytest.raises(
        ValueError,
        match=r"does not fit this model's 'dora' adapters: 8 missing "
        r"\(e.g. \['model.layers.0.self_attn.q_proj.lora_magnitude'",
    ):
        load_adapter_state_dict(adapted("dora"), lora_state)
    with pytest.raises(
        ValueError,
        match=r"lora_A: state dict has shape \(8, 32\), this model's 'lora' adapter expects \(4, 32\)",
    ):
        load_adapter_state_dict(adapted("lora", r=4), lora_state)
    path = save_adapter(adapted("lora"), tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="holds adapters for AdapterConfig\\(method='lora'"):
        load_adapter(adapted("mtl_lora"), path)


def test_adapter_state_dict_holds_only_adapter_parameters_and_loading_restores_them():
    model = adapted("mtl_lora")
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    names = {k.rsplit(".", 1)[-1] for k in state}
    assert names == {"lora_A", "lora_lambda", "lora_B", "lora_B_weight"}
    other = adapted("mtl_lora", seed=9)
    load_adapter_state_dict(other, state)
    for k, v in adapter_state_dict(other).items():
        assert torch.equal(v, state[k])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x)


def test_apply_returns_the_same_object_and_freezes_the_base():
    model = Tiny()
    assert apply_adapters(model, make_config("lora", target_modules=["proj"])) is model
    assert not model.proj.base_layer.weight.requires_grad and not model.proj.base_layer.bias.requires_grad
    assert model.proj.lora_A.requires_grad and model.proj.lora_B.requires_grad
    assert copy.deepcopy(model)(torch.randn(2, 4)).shape == (2, 4)
