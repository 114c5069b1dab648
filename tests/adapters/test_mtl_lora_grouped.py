"""MTL-LoRA's two ways of adding the per-task up-projections (gathered per sample, grouped in runs of one task)
compute the same outputs and gradients, whatever the mix of tasks in the batch and for every ablation variant."""

import copy

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters, mtl_lora
from mtllora.adapters.mtl_lora import task_runs

from ..conftest import randomize_adapters

NUM_TASKS, R, NUM_UP, TEMPERATURE = 4, 8, 3, 0.5
# Each ablation's options, as its config sets them (configs/method/mtl_lora_*.yaml), and a combination of two.
VARIANTS = {
    "no Λ_t": {"lambda_type": "identity"},
    "n=1": {"num_up": 1},
    "uniform mixture": {"mixing": "uniform"},
    "shared Λ": {"shared_lambda": True},
    "shared diagonal Λ": {"shared_lambda": True, "lambda_type": "diagonal"},
    "diagonal Λ_t": {"lambda_type": "diagonal"},
    "n=5": {"num_up": 5},
}
MIXES = {
    "single task": [2, 2, 2, 2, 2, 2],
    "interleaved": [0, 1, 2, 3, 0, 1],
    "sorted, tasks 1 and 3 absent": [0, 0, 0, 2, 2, 2],
    "runs of different lengths": [3, 3, 0, 1, 1, 1],
    "one sample": [1],
}


class OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(12, 10, dtype=torch.float64)

    def forward(self, x):
        return self.proj(x)


def layer_model(dtype: torch.dtype = torch.float64, randomize: bool = True, **options) -> nn.Module:
    """One adapted linear layer 12 → 10 (the same base weights every call, in `dtype`), T = 4, r = 8, n = 3, τ = 0.5
    unless `options` say otherwise; its trained tensors random (std 0.5), or at the official init."""
    options = {"num_up": NUM_UP, "temperature": TEMPERATURE, **options}
    config = AdapterConfig(method="mtl_lora", r=R, alpha=16, target_modules=["proj"], num_tasks=NUM_TASKS, **options)
    model = apply_adapters(OneLinear().to(dtype), config)
    if randomize:
        randomize_adapters(model, std=0.5)
    return model


def _run(
    model: nn.Module, x: torch.Tensor, ids: torch.Tensor, grouped: bool, monkeypatch, factored: bool | None = None
) -> tuple:
    """Returns (output, gradients of x and of every trainable parameter) of one forward+backward on the grouped path
    (`grouped`, interleaved tasks included) or the gathered one, whatever the rule would pick; on the grouped path,
    `factored` forces every run to apply Λ_t and M_t apart (True) or through U_t (False), None leaves it to size."""
    if factored is not None:
        monkeypatch.setattr(mtl_lora, "_factored", lambda tokens, out_features: factored)
    monkeypatch.setattr(mtl_lora, "_grouped_runs", (lambda ids, *_: task_runs(ids)) if grouped else (lambda *_: None))
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    out = model(x, task_ids=ids)
    # Values that bf16 holds exactly, so that a bf16 run and its fp64 reference get the same output gradient.
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16().to(out.dtype))
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("factored", [None, True, False], ids=["by size", "factored", "through U"])
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("variant", ["full Λ_t", *VARIANTS])
def test_grouped_path_equals_gathered_path(variant, mix, factored, monkeypatch):
    """By size (the default rule, out = 10 features): runs of 5 tokens are factored, of 10 or 15 go through U."""
    options = VARIANTS.get(variant, {})
    model = layer_model(**options)
    ids = torch.tensor(MIXES[mix])
    x = torch.randn(len(ids), 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out_g, dx_g, grads_g = _run(model, x, ids, grouped=True, monkeypatch=monkeypatch, factored=factored)
    out_b, dx_b, grads_b = _run(model, x, ids, grouped=False, monkeypatch=monkeypatch)
    torch.testing.assert_close(out_g, out_b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_g, dx_b, rtol=1e-12, atol=1e-12)
    assert (
        grads_g.keys() == grads_b.keys() == {f"proj.{name}" for name, _ in model.proj.named_parameters(recurse=False)}
    )
    for name in grads_g:
        # The logits' gradient passes through the softmax, which runs in fp32 on both paths (as the official code's)
        # in a different order of sums: with n ≥ 5 equal to fp32 rounding (measured ≤ 1e-7 of the largest entry).
        fp32_sums = name.endswith("lora_B_weight") and model.proj.options.num_up >= 5
        atol = 1e-6 * grads_b[name].abs().max().item() if fp32_sums else 1e-12
        torch.testing.assert_close(grads_g[name], grads_b[name], rtol=1e-12, atol=atol, msg=name)
    if "proj.lora_lambda" in grads_g and not options.get("shared_lambda"):
        absent = sorted(set(range(NUM_TASKS)) - set(MIXES[mix]))
        lam_grad = grads_g["proj.lora_lambda"]
        assert torch.count_nonzero(lam_grad[absent]) == 0  # an absent task's Λ gets no gradient on either path


@pytest.mark.parametrize(
    "path", [dict(grouped=False), dict(grouped=True, factored=True), dict(grouped=True, factored=False)], ids=str
)
def test_every_path_in_bf16_keeps_fp32_adapters_and_bf16_accuracy(path, monkeypatch):
    """A bf16 base with fp32 adapters: the output is bf16, the adapters' gradients fp32, and every path is as close
    to fp64 arithmetic on the same bf16 values as bf16 allows (measured: 2e-3 to 5e-3 of each tensor's largest
    entry on all three paths; two bf16 results differ elementwise by more, so each is held to the fp64 one)."""
    model = layer_model(dtype=torch.bfloat16)
    assert model.proj.lora_A.dtype == torch.float32 and model.proj.base_layer.weight.dtype == torch.bfloat16
    ids = torch.tensor(MIXES["interleaved"])
    x = torch.randn(len(ids), 5, 12, generator=torch.Generator().manual_seed(0)).bfloat16()
    out, dx, grads = _run(model, x, ids, monkeypatch=monkeypatch, **path)
    ref_out, ref_dx, ref_grads = _run(model.double(), x.double(), ids, grouped=False, monkeypatch=monkeypatch)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads.values())
    for name, value, ref in [("out", out, ref_out), ("x", dx, ref_dx)] + [(n, grads[n], ref_grads[n]) for n in grads]:
        error = (value.double() - ref).abs().max() / ref.abs().max()
        assert error < 1e-2, f"{name}: {error:.1e} of its largest entry"


def test_the_rule_picks_grouped_for_short_samples_ordered_by_task(monkeypatch):
    model = layer_model()  # r = 8: the gathered path from 8·8 = 64 tokens per sample
    picked = []
    monkeypatch.setattr(mtl_lora._GroupedUpProjection, "apply", lambda *args: picked.append(args[2]) or args[0])
    with torch.no_grad():
        for tokens, ids in [(63, [0, 0, 1, 3]), (64, [0, 0, 1, 3]), (63, [0, 1, 0, 1, 0])]:
            model(torch.randn(len(ids), tokens, 12, dtype=torch.float64), task_ids=torch.tensor(ids))
    # Only the first call: the second has 64 tokens per sample, the third 5 runs for T = 4 tasks (interleaved).
    assert picked == [[(0, 0, 126), (1, 126, 189), (3, 189, 252)]]  # the runs' rows: 63 per sample


def test_task_runs_are_read_once_per_ids_tensor():
    ids = torch.tensor([1, 1, 0, 2, 2, 2, 1])
    assert task_runs(ids) == [(1, 0, 2), (0, 2, 3), (2, 3, 6), (1, 6, 7)]
    assert task_runs(ids) is task_runs(ids)
    assert task_runs(torch.tensor([3])) == [(3, 0, 1)]
    ids[2] = 1  # changed in place: read again
    assert task_runs(ids) == [(1, 0, 3), (2, 3, 6), (1, 6, 7)]
