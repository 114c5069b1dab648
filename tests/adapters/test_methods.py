"""Each method against an independent, per-sample reference of its formula, and its official initialisation."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtllora.adapters import AdapterConfig, apply_adapters
from speed.formulations import official_mtl_lora

from ..conftest import NUM_TASKS, randomize_adapters


class OneLinear(nn.Module):
    def __init__(self, d_in=12, d_out=10):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(d_in, d_out, dtype=torch.float64)

    def forward(self, x):
        return self.proj(x)


def _layer(method, **options):
    model = apply_adapters(OneLinear(), AdapterConfig(method=method, r=4, alpha=6, target_modules=["proj"], **options))
    randomize_adapters(model, std=0.5)
    return model, model.proj


def _reference_mtl_lora(layer, x, ids):
    """The paper's formula, one sample at a time: W x + b + s · (Σ_i softmax(w_t/τ)_i B_i) Λ_t A x."""
    o = layer.options
    rows = []
    for xb, t in zip(x, ids.tolist(), strict=True):
        p = torch.softmax((layer.lora_B_weight[t] / o.temperature).float(), dim=-1).double()
        mixed_b = sum(p[i] * layer.lora_B[i] for i in range(o.num_up))
        lam = layer.lora_lambda[t] if o.lambda_type == "full" else torch.diag(layer.lora_lambda[t])
        delta = layer.scaling * mixed_b @ lam @ layer.lora_A
        rows.append(F.linear(xb, layer.base_layer.weight + delta, layer.base_layer.bias))
    return torch.stack(rows)


def _official_mtl_lora(layer, x, ids):
    """The official code's formulation (the bench's oracle) on our layer's parameters."""
    official_a = layer.lora_A.unsqueeze(0)  # the official layout: [1, r, in]
    return official_mtl_lora(
        x,
        ids,
        layer.base_layer,
        official_a,
        layer.lora_lambda,
        layer.lora_B,
        layer.lora_B_weight,
        layer.scaling,
        layer.options.temperature,
    )


@pytest.mark.parametrize("lambda_type", ["full", "diagonal"])
def test_mtl_lora_matches_reference_and_official_formulation(lambda_type):
    model, layer = _layer("mtl_lora", num_tasks=4, num_up=3, temperature=0.3, lambda_type=lambda_type)
    x = torch.randn(5, 7, 12, dtype=torch.float64)
    ids = torch.tensor([0, 3, 1, 1, 2])
    out = model(x, task_ids=ids)
    torch.testing.assert_close(out, _reference_mtl_lora(layer, x, ids), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, _official_mtl_lora(layer, x, ids), rtol=1e-12, atol=1e-12)


def test_mtl_lora_gradients_match_official_formulation():
    model, layer = _layer("mtl_lora", num_tasks=4, num_up=2, temperature=0.1)
    x = torch.randn(4, 3, 12, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([2, 0, 2, 1])
    model(x, task_ids=ids).pow(2).sum().backward()
    ours = {n: p.grad.clone() for n, p in layer.named_parameters(recurse=False)} | {"x": x.grad.clone()}
    for p in [*layer.parameters(), x]:
        p.grad = None
    _official_mtl_lora(layer, x, ids).pow(2).sum().backward()
    theirs = {n: p.grad for n, p in layer.named_parameters(recurse=False)} | {"x": x.grad}
    for name, grad in ours.items():
        torch.testing.assert_close(grad, theirs[name], rtol=1e-10, atol=1e-12, msg=name)


def test_mtl_lora_initialisation_is_official():
    torch.manual_seed(0)
    model = apply_adapters(
        OneLinear(d_in=64),
        AdapterConfig(method="mtl_lora", r=4, target_modules=["proj"], num_tasks=6, num_up=3),
    )
    layer = model.proj
    assert layer.lora_A.shape == (4, 64) and layer.lora_B.shape == (3, 10, 4)
    assert layer.lora_lambda.shape == (6, 4, 4) and layer.lora_B_weight.shape == (6, 3)
    assert torch.equal(layer.lora_lambda, torch.eye(4, dtype=torch.float64).expand(6, 4, 4))
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(64) and layer.lora_A.abs().max() > 0.8 / math.sqrt(64)
    w = layer.lora_B_weight
    assert w.abs().max() <= 1 / math.sqrt(3) and w.std() > 0.1  # random, not uniform mixing
    x = torch.randn(6, 2, 64, dtype=torch.float64)
    torch.testing.assert_close(model(x, task_ids=torch.arange(6)), layer.base_layer(x), rtol=0, atol=0)
    diag = apply_adapters(
        OneLinear(),
        AdapterConfig(method="mtl_lora", target_modules=["proj"], num_tasks=2, lambda_type="diagonal"),
    ).proj
    assert diag.lora_lambda.shape == (2, 8) and torch.all(diag.lora_lambda == 1)


def test_mixing_softmax_runs_in_fp32_for_bf16_adapters():
    # Adapters in the bf16 base dtype (by default they are fp32, see test_dtypes.py): the softmax still runs in fp32.
    model = apply_adapters(
        OneLinear().to(torch.bfloat16),
        AdapterConfig(method="mtl_lora", target_modules=["proj"], num_tasks=2, adapter_dtype="base"),
    )
    layer = model.proj
    with torch.no_grad():
        layer.lora_B_weight.copy_(torch.tensor([[0.0, 0.004, 0.0], [0.0, 0.0, 0.0]]))
    p = layer.mixing_weights()
    expected = torch.softmax((layer.lora_B_weight / 0.1).float(), dim=-1).to(torch.bfloat16)
    assert p.dtype == torch.bfloat16 and torch.equal(p, expected)


def test_multilora_matches_reference():
    model, layer = _layer("multilora", num_modules=3)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    delta = (
        sum(layer.lora_scale[i].unsqueeze(1) * (layer.lora_B[i] @ layer.lora_A[i]) for i in range(3)) * layer.scaling
    )
    expected = F.linear(x, layer.base_layer.weight + delta, layer.base_layer.bias)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_multilora_initialisation_is_official():
    layer = apply_adapters(OneLinear(), AdapterConfig(method="multilora", r=4, target_modules=["proj"])).proj
    assert torch.count_nonzero(layer.lora_scale) == 0
    for i in range(3):  # kaiming-uniform per module: bound 1/sqrt(fan_in) of each [r, in] / [out, r] slice
        assert 0.7 / math.sqrt(12) < layer.lora_A[i].abs().max() <= 1 / math.sqrt(12)
        assert 0.7 / math.sqrt(4) < layer.lora_B[i].abs().max() <= 1 / math.sqrt(4)


def test_moelora_matches_reference():
    model, layer = _layer("moelora", num_tasks=NUM_TASKS, num_experts=2, task_embedding_dim=5)
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1])
    rows = []
    for xb, t in zip(x, ids.tolist(), strict=True):
        gate = torch.softmax(layer.lora_gate @ layer.lora_task_embedding[t], dim=-1)
        experts = [(layer.lora_B[:, 2 * e : 2 * e + 2], layer.lora_A[2 * e : 2 * e + 2]) for e in range(2)]
        delta = sum(gate[e] * layer.scaling * b @ a for e, (b, a) in enumerate(experts))
        rows.append(F.linear(xb, layer.base_layer.weight + delta, layer.base_layer.bias))
    torch.testing.assert_close(model(x, task_ids=ids), torch.stack(rows), rtol=1e-12, atol=1e-12)
    assert layer.lora_task_embedding.shape == (NUM_TASKS + 1, 5) and layer.lora_gate.shape == (2, 5)


def test_dora_initialisation_starts_at_the_base_layer():
    model = apply_adapters(OneLinear(), AdapterConfig(method="dora", target_modules=["proj"]))
    layer = model.proj
    torch.testing.assert_close(layer.lora_magnitude, layer.base_layer.weight.norm(dim=1), rtol=0, atol=0)
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(model(x), layer.base_layer(x), rtol=1e-14, atol=1e-14)


def test_dora_norm_cache_follows_weight_updates():
    model, layer = _layer("dora")
    x = torch.randn(3, 12, dtype=torch.float64)
    model(x)
    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)  # in place: the cached ‖W‖² must be recomputed
    v = layer.base_layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
    expected = (layer.lora_magnitude / v.norm(dim=1)) * (x @ v.t()) + layer.base_layer.bias
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
