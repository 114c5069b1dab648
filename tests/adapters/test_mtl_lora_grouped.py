"""MTL-LoRA's two ways of adding the per-task up-projections (gathered per sample, grouped in runs of one task)
compute the same outputs and gradients, whatever the mix of tasks in the batch."""

import copy

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters, mtl_lora
from mtllora.adapters.mtl_lora import task_runs

from ..conftest import randomize_adapters

NUM_TASKS = 4
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


def _model(lambda_type: str = "full", dtype: torch.dtype = torch.float64) -> nn.Module:
    config = AdapterConfig(
        method="mtl_lora",
        r=8,
        alpha=16,
        target_modules=["proj"],
        num_tasks=NUM_TASKS,
        num_up=3,
        temperature=0.5,
        lambda_type=lambda_type,
    )
    model = apply_adapters(OneLinear().to(dtype), config)
    randomize_adapters(model, std=0.5)
    return model


def _run(
    model: nn.Module, x: torch.Tensor, ids: torch.Tensor, grouped: bool, monkeypatch, factored: bool | None = None
) -> tuple:
    """Returns (output, gradients of x and of every trainable parameter) of one forward+backward on one path; on
    the grouped path, `factored` forces every run to apply Λ_t and M_t apart (True) or through U_t (False)."""
    if factored is not None:
        monkeypatch.setattr(mtl_lora, "FACTORED_MAX_TOKENS_PER_OUTPUT", 10**9 if factored else 0)
    # The rule picks the gathered path when tokens per sample ≥ factor · r (0 forces it), else the grouped path when
    # there are at most GROUPED_MAX_RUNS_PER_TASK runs per task (huge values force it, interleaved tasks included).
    monkeypatch.setattr(mtl_lora, "GATHER_MIN_TOKENS_PER_RANK", 10**9 if grouped else 0)
    monkeypatch.setattr(mtl_lora, "GROUPED_MAX_RUNS_PER_TASK", 10**9)
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    out = model(x, task_ids=ids)
    # Values that bf16 holds exactly, so that a bf16 run and its fp64 reference get the same output gradient.
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16().to(out.dtype))
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("factored", [None, True, False], ids=["by size", "factored", "through U"])
@pytest.mark.parametrize("lambda_type", ["full", "diagonal"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_grouped_path_equals_gathered_path(mix, lambda_type, factored, monkeypatch):
    """By size (the default rule, out = 10 features): runs of 5 tokens are factored, of 10 or 15 go through U."""
    model = _model(lambda_type)
    ids = torch.tensor(MIXES[mix])
    x = torch.randn(len(ids), 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out_g, dx_g, grads_g = _run(model, x, ids, grouped=True, monkeypatch=monkeypatch, factored=factored)
    out_b, dx_b, grads_b = _run(model, x, ids, grouped=False, monkeypatch=monkeypatch)
    torch.testing.assert_close(out_g, out_b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx_g, dx_b, rtol=1e-12, atol=1e-12)
    assert grads_g.keys() == grads_b.keys() and len(grads_g) == 4  # A, Λ, B, mixing logits
    for name in grads_g:
        torch.testing.assert_close(grads_g[name], grads_b[name], rtol=1e-12, atol=1e-12, msg=name)
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
    model = _model(dtype=torch.bfloat16)
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
    model = _model()  # r = 8: the gathered path from 8·8 = 64 tokens per sample
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
