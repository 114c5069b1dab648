"""MTL-LoRA's ways of adding the per-task up-projections (gathered per sample, grouped in runs of one task, grouped
on the batch sorted by task inside the layer) compute the same outputs and gradients, whatever the mix of tasks in
the batch and for every ablation variant; the sorted one saves for backward what LoRA saves, whatever the order."""

import copy

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters, mtl_lora
from mtllora.adapters.mtl_lora import task_order, task_runs

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


GROUPINGS = {
    "runs": lambda ids, *_: (task_runs(ids), None),  # the batch's own runs, however many
    "sorted": lambda ids, *_: task_order(ids)[::-1],  # (runs, order) of the batch sorted by task
    "gathered": lambda *_: None,
    "rule": mtl_lora._grouping,  # what the layer picks by itself
}


def _run(
    model: nn.Module,
    x: torch.Tensor,
    ids: torch.Tensor,
    grouped: bool | None,
    monkeypatch,
    factored: bool | None = None,
    sort: bool = False,
) -> tuple:
    """Returns (output, gradients of x and of every trainable parameter) of one forward+backward on the grouped path
    (`grouped`, interleaved tasks included; on the batch sorted by task inside the layer with `sort`), the gathered
    one (False), whatever the rule would pick, or the rule's pick (None); on the grouped path, `factored` forces
    every run to apply Λ_t and M_t apart (True) or through U_t (False), None leaves it to size."""
    if factored is not None:
        monkeypatch.setattr(mtl_lora, "_factored", lambda tokens, out_features: factored)
    path = "rule" if grouped is None else ("sorted" if sort else "runs") if grouped else "gathered"
    monkeypatch.setattr(mtl_lora, "_grouping", GROUPINGS[path])
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    out = model(x, task_ids=ids)
    # Values that bf16 holds exactly, so that a bf16 run and its fp64 reference get the same output gradient.
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16().to(out.dtype))
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("sort", [False, True], ids=["runs", "sorted"])
@pytest.mark.parametrize("factored", [None, True, False], ids=["by size", "factored", "through U"])
@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("variant", ["full Λ_t", *VARIANTS])
def test_grouped_path_equals_gathered_path(variant, mix, factored, sort, monkeypatch):
    """By size (the default rule, out = 10 features): runs of 5 tokens are factored, of 10 or 15 go through U (on
    the sorted batch, a task's samples form one run: 5 to 30 tokens)."""
    options = VARIANTS.get(variant, {})
    model = layer_model(**options)
    ids = torch.tensor(MIXES[mix])
    x = torch.randn(len(ids), 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out_g, dx_g, grads_g = _run(model, x, ids, grouped=True, monkeypatch=monkeypatch, factored=factored, sort=sort)
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
    "path",
    [
        dict(grouped=False),
        dict(grouped=True, factored=True),
        dict(grouped=True, factored=False),
        dict(grouped=True, factored=True, sort=True),
        dict(grouped=True, factored=False, sort=True),
    ],
    ids=str,
)
def test_every_path_in_bf16_keeps_fp32_adapters_and_bf16_accuracy(path, monkeypatch):
    """A bf16 base with fp32 adapters: the output is bf16, the adapters' gradients fp32, and every path is as close
    to fp64 arithmetic on the same bf16 values as bf16 allows (measured: 2e-3 to 5e-3 of each tensor's largest
    entry on the first three paths; two bf16 results differ elementwise by more, so each is held to the fp64 one)."""
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


ORDERED, INTERLEAVED = [0, 0, 1, 3, 3, 3, 3, 3], [0, 1, 0, 1, 0, 2, 2, 3]
SORTED = ([(0, 0, 3), (1, 3, 5), (2, 5, 7), (3, 7, 8)], [0, 2, 4, 1, 3, 5, 6, 7])


@pytest.mark.parametrize(
    "ids, tokens, out_features, sort_tasks, expected",
    [
        (ORDERED, 63, 10, True, ([(0, 0, 2), (1, 2, 3), (3, 3, 8)], None)),  # under 8·r tokens: its own runs
        (ORDERED, 64, 10, True, None),  # 8·r tokens or more: gathered
        (INTERLEAVED, 16, 16384, True, SORTED),  # ≤ 2·r tokens, 8·8·16384 = 2^20 gathered elements: sorted
        (INTERLEAVED, 17, 16384, True, None),  # more than 2·r tokens
        (INTERLEAVED, 16, 16383, True, None),  # fewer gathered elements
        (INTERLEAVED, 16, 16384, False, None),  # never sorted
        (INTERLEAVED, 63, 10, True, None),
    ],
)
def test_the_rule_picks_a_path_by_order_tokens_and_size(ids, tokens, out_features, sort_tasks, expected):
    picked = mtl_lora._grouping(torch.tensor(ids), tokens, R, out_features, NUM_TASKS, sort_tasks)
    assert (picked if picked is None else (picked[0], None if picked[1] is None else picked[1].tolist())) == expected


@pytest.mark.parametrize("grad", [True, False], ids=["training", "no_grad"])
@pytest.mark.parametrize("sort_tasks", [True, False])
def test_the_layer_sorts_only_before_a_backward(sort_tasks, grad, monkeypatch):
    """Interleaved tasks where sorting pays (made so at this size): sorted in training with `sort_tasks`, else
    gathered (evaluation and generation keep one batched GEMM)."""
    monkeypatch.setattr(mtl_lora, "SORT_MIN_GATHERED", 0)
    model = layer_model(sort_tasks=sort_tasks)
    picked = []
    monkeypatch.setattr(mtl_lora._GroupedUpProjection, "apply", lambda *args: picked.append(args[3]) or args[0])
    with torch.set_grad_enabled(grad):
        model(torch.randn(len(INTERLEAVED), 3, 12, dtype=torch.float64), task_ids=torch.tensor(INTERLEAVED))
    assert [order.tolist() for order in picked] == ([SORTED[1]] if sort_tasks and grad else [])


@pytest.mark.parametrize("variant", ["full Λ_t", "diagonal Λ_t", "shared Λ"])
def test_sorted_path_equals_gathered_path_for_random_orders(variant, monkeypatch):
    """With `sort_tasks` (the default) and the rule left to pick: random task ids in random orders (every one
    interleaved), the runs by size (out = 10 features: a task with fewer than 4 samples of 3 tokens is factored)."""
    monkeypatch.setattr(mtl_lora, "SORT_MIN_GATHERED", 0)  # sorted at this size too
    model = layer_model(**VARIANTS.get(variant, {}))
    gen = torch.Generator().manual_seed(3)
    orders = []
    apply = mtl_lora._GroupedUpProjection.apply
    monkeypatch.setattr(mtl_lora._GroupedUpProjection, "apply", lambda *a: orders.append(a[3]) or apply(*a))
    for trial in range(5):
        ids = torch.randint(0, NUM_TASKS, (16,), generator=gen)
        assert len(task_runs(ids)) > NUM_TASKS, f"trial {trial}: ids {ids.tolist()} are not interleaved"
        x = torch.randn(len(ids), 3, 12, dtype=torch.float64, generator=gen)
        out_s, dx_s, grads_s = _run(model, x, ids, grouped=None, monkeypatch=monkeypatch)
        assert len(orders) == 1 and orders.pop() is not None  # the sorted path ran
        out_b, dx_b, grads_b = _run(model, x, ids, grouped=False, monkeypatch=monkeypatch)
        torch.testing.assert_close(out_s, out_b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dx_s, dx_b, rtol=1e-12, atol=1e-12)
        for name in grads_b:
            torch.testing.assert_close(grads_s[name], grads_b[name], rtol=1e-12, atol=1e-12, msg=name)


def _saved_bytes(model: nn.Module, x: torch.Tensor, ids: torch.Tensor | None) -> int:
    """Returns the bytes of the tensors autograd saves for backward in one forward (parameters included)."""
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, **({} if ids is None else {"task_ids": ids}))
    return sum(sizes)


def test_no_path_saves_a_per_sample_up_projection(monkeypatch):
    """Bytes saved for backward beyond the ordered batch's runs, at batch 8 and 32 (tasks interleaved): the sorted
    path (the default) keeps the order, 8 bytes per sample; the gathered one the ids, 8 bytes per sample, and U
    [T, r, out] and its folding's inputs once. Neither grows by a per-sample [r, out] up-projection (640 bytes)."""
    monkeypatch.setattr(mtl_lora, "SORT_MIN_GATHERED", 0)  # sorted at this size too
    extra = {}
    for batch in (8, 32):
        ids = torch.arange(batch) % NUM_TASKS
        x = torch.randn(batch, 5, 12, dtype=torch.float64, requires_grad=True)
        ordered = _saved_bytes(layer_model(), x, ids.sort().values)
        sorted_ = _saved_bytes(layer_model(), x, ids)
        gathered = _saved_bytes(layer_model(sort_tasks=False), x, ids)
        extra[batch] = (sorted_ - ordered, gathered - ordered)
    assert extra[8][0] == 8 * 8 and extra[32][0] == 8 * 32
    assert extra[32][1] - extra[8][1] == 8 * 24


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16, 40, 8, 24), (16, 3, 8, 24), (5, 1, 16, 12)], ids=str)
def test_gathered_path_is_autograds_baddbmm_bit_for_bit(shape, dtype, monkeypatch):
    """The gathered path's Function (in place on the output [tokens, out]) against autograd's out-of-place
    baddbmm(out, z, U[ids]) (the committed runs' arithmetic): equal outputs and gradients of out, z and U, bit for
    bit, with backward in one chunk of samples (40 tokens per sample at r 8) or in several (3 and 1 token per
    sample: 16·3 // (4·8) = 1 and 5·1 // 64 → 1 sample a chunk)."""
    monkeypatch.setattr(mtl_lora, "GATHER_CHUNK_MIN", 0)  # chunked at these small sizes too
    batch, tokens, rank, out_features = shape
    gen = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(*s, generator=gen).to(dtype) for s in [(batch * tokens, out_features), (batch, tokens, rank)]
    ]
    tensors.append(torch.randn(3, rank, out_features, generator=gen).to(dtype))
    ids = torch.randint(0, 3, (batch,), generator=gen)
    grad = torch.randn(batch * tokens, out_features, generator=gen).to(dtype)
    results = []
    paths = [
        lambda out, z, up: torch.baddbmm(out.view(batch, tokens, -1), z, up[ids]).view(-1, out_features),
        lambda out, z, up: mtl_lora._GatheredUpProjection.apply(out, z, up, ids),
    ]
    for path in paths:
        leaves = [t.clone().requires_grad_(True) for t in tensors]
        out = path(leaves[0].clone(), *leaves[1:])  # a fresh non-leaf output, as the base layer's
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for name, ours, reference in zip(["out", "grad out", "grad z", "grad U"], results[1], results[0], strict=True):
        assert torch.equal(ours, reference), name


def test_gathered_path_sums_each_tasks_up_projection_gradient_in_sample_order_on_any_thread_count():
    """On two CPU threads and above 2^15 gathered elements (64 samples · r 8 · 96 outputs), where autograd's indexing
    backward (`index_put_` accumulating) adds fp32 rows with atomics in whatever order the threads reach them, the
    gathered path's gradient of U is each task's per-sample gradients summed in sample order, bit for bit, on every
    run."""
    batch, tokens, rank, out_features = 64, 4, 8, 96
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(batch, tokens, rank, generator=gen)
    up = torch.randn(3, rank, out_features, generator=gen, requires_grad=True)
    ids = torch.randint(0, 3, (batch,), generator=gen)
    grad = torch.randn(batch * tokens, out_features, generator=gen)
    in_order = torch.zeros(3, rank, out_features)
    for sample, task in enumerate(ids.tolist()):
        in_order[task] += z[sample].t() @ grad.view(batch, tokens, -1)[sample]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(20):
            up.grad = None
            out = torch.zeros(batch * tokens, out_features, requires_grad=True).clone()
            mtl_lora._GatheredUpProjection.apply(out, z, up, ids).backward(grad)
            assert torch.equal(up.grad, in_order)
    finally:
        torch.set_num_threads(threads)


def test_task_order_is_a_stable_sort_read_once_per_ids_tensor():
    ids = torch.tensor([1, 1, 0, 2, 2, 0, 1])
    order, runs = task_order(ids)
    assert order.tolist() == [2, 5, 0, 1, 6, 3, 4] and order.dtype == torch.long
    assert runs == [(0, 0, 2), (1, 2, 5), (2, 5, 7)]
    assert task_order(ids) is task_order(ids)
    ids[2] = 2  # changed in place: read again
    assert task_order(ids)[0].tolist() == [5, 0, 1, 6, 2, 3, 4]


def test_sort_tasks_must_be_a_bool():
    with pytest.raises(ValueError, match="sort_tasks must be true or false, got 'yes'"):
        layer_model(sort_tasks="yes")


def test_task_runs_are_read_once_per_ids_tensor():
    ids = torch.tensor([1, 1, 0, 2, 2, 2, 1])
    assert task_runs(ids) == [(1, 0, 2), (0, 2, 3), (2, 3, 6), (1, 6, 7)]
    assert task_runs(ids) is task_runs(ids)
    assert task_runs(torch.tensor([3])) == [(3, 0, 1)]
    ids[2] = 1  # changed in place: read again
    assert task_runs(ids) == [(1, 0, 3), (2, 3, 6), (1, 6, 7)]
