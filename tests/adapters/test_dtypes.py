"""Adapter parameter dtypes: fp32 by default in a bf16 model (so that small optimizer steps are not rounded away),
computation in the activations' dtype, merging back into the base dtype."""

import copy

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters, merge_task

from ..conftest import ALL_METHODS, METHOD_OPTIONS, TASK_AWARE, randomize_adapters


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def _adapted(method, dtype=torch.bfloat16, **overrides):
    config = AdapterConfig(method=method, r=4, target_modules=["up", "down"], **METHOD_OPTIONS[method], **overrides)
    return apply_adapters(TwoLayers().to(dtype), config)


def _task_kwargs(method, batch):
    return {"task_ids": torch.arange(batch) % 3} if method in TASK_AWARE else {}


def _train(model, method, steps=20, lr=3e-4):
    """Runs `steps` AdamW steps on a random regression loss; returns the trainable parameters before training."""
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, 16, generator=gen).to(torch.bfloat16)
    target = torch.randn(6, 5, 8, generator=gen)
    for _ in range(steps):
        loss = (model(x, **_task_kwargs(method, 6)).float() - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return start


def _lambda_diagonals(model):
    return torch.cat([torch.diagonal(layer.lora_lambda, dim1=1, dim2=2).flatten() for layer in (model.up, model.down)])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_bf16_model_gets_fp32_adapters_and_bf16_outputs(method):
    model = _adapted(method)
    adapter_params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapter_params and all(p.dtype == torch.float32 for p in adapter_params.values())
    assert model.up.base_layer.weight.dtype == torch.bfloat16
    x = torch.randn(6, 5, 16).to(torch.bfloat16)
    assert model(x, **_task_kwargs(method, 6)).dtype == torch.bfloat16


def _relative_error(out, expected):
    """‖out − expected‖ / ‖expected‖ over the whole tensor."""
    return float((out.float() - expected).norm() / expected.norm())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_bf16_outputs_are_close_to_an_fp32_run_of_the_same_weights(method):
    # bf16 keeps 8 significant bits (a rounding is off by up to 2^-9 = 0.2% relative); the base layers, the low-rank
    # path and the adapter weights cast to bf16 add a few roundings. Measured: 0.3-0.5% normwise relative error
    # against the same weights in fp32 (up to 1% on single elements); the test allows 1% normwise.
    model = _adapted(method)
    randomize_adapters(model, std=0.1)
    reference = copy.deepcopy(model).float()  # the same bf16 base weights, upcast; the same fp32 adapters
    x = torch.randn(6, 5, 16).to(torch.bfloat16)
    kwargs = _task_kwargs(method, 6)
    with torch.no_grad():
        out, expected = model(x, **kwargs), reference(x.float(), **kwargs)
    assert _relative_error(out, expected) < 1e-2
    if method in TASK_AWARE:  # merging casts into the base dtype: a bf16 nn.Linear per task
        merged = merge_task(model, task_id=1)
        assert merged.up.weight.dtype == torch.bfloat16
        with torch.no_grad():
            assert _relative_error(merged(x[1:2]), expected[1:2]) < 1e-2


def test_pure_bf16_training_moves_lambda_mixing_logits_and_dora_magnitude():
    model = _adapted("mtl_lora")
    start = _train(model, "mtl_lora")
    diag = _lambda_diagonals(model)
    assert (diag != 1).all(), "every Λ diagonal entry moves off its identity init"
    assert 1e-3 < (diag - 1).abs().max() < 1e-2  # ~ 20 steps of lr 3e-4 (Adam steps are ~lr each)
    for name in ("up.lora_B_weight", "down.lora_B_weight"):
        assert (dict(model.named_parameters())[name] != start[name]).all(), name

    dora = _adapted("dora")
    start = _train(dora, "dora")
    for name in ("up.lora_magnitude", "down.lora_magnitude"):
        assert (dict(dora.named_parameters())[name] != start[name]).all(), name


def test_adapters_in_the_bf16_base_dtype_do_not_train_lambda_or_the_magnitude():
    # Why adapter_dtype defaults to float32: near 1.0 bf16 values are 2^-8 apart (below) or 2^-7 (above), so an
    # Adam step of ~3e-4 rounds back to 1.0 and Λ's diagonal never moves; likewise DoRA's magnitude ‖W‖ ~ 0.6.
    model = _adapted("mtl_lora", adapter_dtype="base")
    assert model.up.lora_lambda.dtype == torch.bfloat16
    _train(model, "mtl_lora")
    assert (_lambda_diagonals(model) == 1).all()
    dora = _adapted("dora", adapter_dtype="base")
    start = _train(dora, "dora")
    for name in ("up.lora_magnitude", "down.lora_magnitude"):
        assert torch.equal(dict(dora.named_parameters())[name], start[name]), name


@pytest.mark.parametrize(
    ("base", "adapter_dtype", "expected"),
    [
        (torch.bfloat16, "float32", torch.float32),
        (torch.float16, "float32", torch.float32),
        (torch.float32, "float32", torch.float32),
        (torch.float64, "float32", torch.float64),  # never narrower than the base: fp64 models stay exact
        (torch.bfloat16, "base", torch.bfloat16),
        (torch.bfloat16, None, torch.bfloat16),
    ],
)
def test_adapter_dtype_is_the_wider_of_float32_and_the_base_or_the_base(base, adapter_dtype, expected):
    model = _adapted("mtl_lora", dtype=base, adapter_dtype=adapter_dtype)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {expected}


def test_adapter_dtype_is_saved_and_old_configs_load_with_the_default():
    config = AdapterConfig(method="lora", target_modules=["up"], adapter_dtype=None)
    assert config.to_dict()["adapter_dtype"] == "base"
    assert AdapterConfig.from_dict(config.to_dict()) == config
    old = AdapterConfig(method="lora", target_modules=["up"]).to_dict()
    del old["adapter_dtype"]  # saved before the option existed
    assert AdapterConfig.from_dict(old).adapter_dtype == "float32"
    with pytest.raises(ValueError, match="adapter_dtype must be one of"):
        AdapterConfig(method="lora", adapter_dtype="bfloat16")
