"""MTL-LoRA (Yang et al., AAAI 2025), as in the official code (`mLoRALinear`):

    h = W x + b + s · (Σ_i softmax(w_t / τ)_i B_i) Λ_t A dropout(x)

A is shared, Λ_t is task-specific (full r×r, identity init, or diagonal, ones init), the n up-projections B_i
are shared and mixed per task by the softmax of the task's logits w_t (computed in fp32).

Ablations (issue 21, docs/method.md#ablations) switch one part each, by option: `lambda_type="identity"` fixes Λ_t = I
(the mixture of up-projections alone), `shared_lambda=True` gives every task the same Λ (tasks then differ by their
mixing only), `mixing="uniform"` fixes w_t = 0 (p_t = 1/n for every task), `num_up=1` leaves Λ_t alone (p_t = 1). A
fixed part is a non-persistent buffer, not a parameter: it is not trained, counted, saved, nor seen by DeepSpeed (whose
checkpoints leave frozen parameters out), and the layer rebuilds it from its options.

Each task's low-rank path after A folds into one up-projection U_t [r, out], and the layer adds z U_t to the base
output of every sample of task t (z = dropout(x) Aᵀ). Three ways to do that, chosen per call by the tokens per
sample S against the rank r (`GATHER_MIN_TOKENS_PER_RANK`), by how the batch's tasks are ordered and, for
interleaved tasks, by the layer's size and whether a backward follows:

- gathered (S ≥ 8·r, e.g. 128-token GLUE or instruction batches at r=8; shorter samples with tasks interleaved): U_t
  is gathered per sample ([batch, r, out]) and one batched GEMM adds z U_t in place. Backward gathers U again
  rather than keeping the gathered tensor (`_GatheredUpProjection`), so the path saves what LoRA saves (z) plus U
  [T, r, out] and the fold's M (as large), whatever the order of the tasks: per layer, not per sample (at a small
  batch such as VL-BART's 8 they still outweigh its activations). Its arithmetic is autograd's
  `baddbmm(out, z, U[ids])` on one CPU thread, bit for bit, and deterministic on any number.
- grouped (S < 8·r, e.g. VL-BART's ~56 tokens at r=64, or decoding one token at a time, and the batch ordered by
  task): each run of consecutive samples of one task adds z U_t with one GEMM into its rows of the output, in
  place, as LoRA does: no per-sample copy of U, and only z kept for backward (U is formed
  again there, a few flops per parameter). A run with fewer tokens than the layer has outputs (a decoder's few
  answer tokens, small batches) applies Λ_t to its tokens and then M_t = s Σ_i p_ti B_iᵀ instead of forming
  U_t = Λ_tᵀ M_t: tokens·r² flops instead of r²·out. A single-task batch (the official VL-BART loader's) is one
  run, LoRA's cost; a batch ordered by task has at most T runs. The runs are read from the task ids once per
  forward (one host sync) and shared by every layer. A batch with more runs than T (tasks interleaved) takes the
  gathered path, or the sorted one where that is faster.
- sorted (tasks interleaved, S ≤ 2·r and batch·r·out ≥ 2^20, in training; `sort_tasks=True`, the default): the
  grouped path on the batch sorted by task inside the layer, where the gathered up-projections would be at least
  half the output and large in bytes (VL-BART's recipe, r=64, at its batch of 512), so that moving them costs more
  than a GEMM per task (measured on a CPU: docs/speed.md#image-text-shapes). The samples' task order (a stable sort,
  `task_order`) is read once per forward as the runs are; z's rows are gathered in that order (r wide, cheap next
  to the output), each task's z_t U_t is added into its samples' rows of the output (`index_add_`), and backward
  gathers the output gradient's rows of one task at a time. Only the sorted z is saved. So a loader need not order
  rows by task for speed or memory; ordering them saves the sort. The sorted path sums in another order than the
  gathered one (equal to 1e-12 in fp64, not bit for bit); `sort_tasks=False` never sorts.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.weak import WeakTensorKeyDictionary

from .base import AdapterLinear, register_method

LAMBDA_TYPES = ("full", "diagonal", "identity")
MIXINGS = ("learned", "uniform")
# The gathered path runs while the tokens per sample are at least this many times the rank: its [batch, r, out]
# per-sample up-projections then stay under 1/8 of the output. Below, batches ordered by task take the grouped
# path (runs of one task), faster and smaller (see the module docstring and `make bench`'s VL suites).
GATHER_MIN_TOKENS_PER_RANK = 8
# Tasks interleaved, in training: the batch is sorted by task inside the layer where that is faster than the gathered
# path, measured on a CPU (docs/speed.md#image-text-shapes): up to 2·r tokens per sample and from 2^20 gathered
# elements (batch·r·out). Longer samples or smaller layers (GLUE's, a decoder step) take the gathered path.
SORT_MAX_TOKENS_PER_RANK = 2
SORT_MIN_GATHERED = 1 << 20
# The gathered path takes its samples in chunks only from 2^20 gathered elements (4 MiB in fp32, `_gather_chunk`).
GATHER_CHUNK_MIN = 1 << 20

# Runs of one task per task-id tensor, and the batch's task order (`task_order`). The router hands every layer of a
# forward the same ids tensor, so the runs are read from it (a host sync on accelerators) once per forward, not once
# per layer. Stored with the tensor's version counter: ids changed in place are read again.
_RUNS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
_ORDERS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def task_runs(ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """Returns the runs of consecutive equal ids as (task, first sample, end sample), in batch order, so that each
    run's rows of a [batch, ...] tensor are one contiguous slice; cached per ids tensor."""
    cached = _RUNS.get(ids)
    if cached is not None and cached[0] == ids._version:
        return cached[1]
    runs: list[list[int]] = []
    for i, task in enumerate(ids.tolist()):
        if runs and runs[-1][0] == task:
            runs[-1][2] = i + 1
        else:
            runs.append([task, i, i + 1])
    result = [(task, start, end) for task, start, end in runs]
    _RUNS[ids] = (ids._version, result)
    return result


def task_order(ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Returns (order, runs): the samples sorted by task (stable: batch order within a task), a LongTensor [batch]
    on the ids' device, and the runs of the sorted batch, one per task present, as (task, first, end) positions in
    `order`. Read from `task_runs` (no second host sync) and cached per ids tensor as it is."""
    cached = _ORDERS.get(ids)
    if cached is not None and cached[0] == ids._version:
        return cached[1]
    samples: dict[int, list[int]] = {}
    for task, start, end in task_runs(ids):
        samples.setdefault(task, []).extend(range(start, end))
    order: list[int] = []
    runs = []
    for task in sorted(samples):
        runs.append((task, len(order), len(order) + len(samples[task])))
        order.extend(samples[task])
    result = (torch.tensor(order, dtype=torch.long, device=ids.device), runs)
    _ORDERS[ids] = (ids._version, result)
    return result


def _grouping(
    ids: torch.Tensor, tokens_per_sample: int, rank: int, out_features: int, num_tasks: int, sort_tasks: bool
) -> tuple[list[tuple[int, int, int]], torch.Tensor | None] | None:
    """Returns (runs, order) when the batch takes the grouped path, else None (gathered); grouped needs samples
    shorter than `GATHER_MIN_TOKENS_PER_RANK` · r. A batch with no more runs (`task_runs`) than tasks gives its own
    runs and no order. More runs mean interleaved tasks, which in place would be many small GEMMs (each a kernel
    launch on GPUs, a parallel region on CPUs): with `sort_tasks` (the caller's: the option, and a backward to
    follow) and where sorting pays (`SORT_MAX_TOKENS_PER_RANK`, `SORT_MIN_GATHERED`), the runs of the batch sorted
    by task and that order (`task_order`), else None."""
    if tokens_per_sample >= GATHER_MIN_TOKENS_PER_RANK * rank:
        return None
    runs = task_runs(ids)
    if len(runs) <= num_tasks:
        return runs, None
    gathered = ids.shape[0] * rank * out_features
    if not sort_tasks or tokens_per_sample > SORT_MAX_TOKENS_PER_RANK * rank or gathered < SORT_MIN_GATHERED:
        return None
    order, sorted_runs = task_order(ids)
    return sorted_runs, order


def _mixing_weights(logits: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.softmax(logits / temperature, dim=-1, dtype=torch.float32).to(dtype)


def _full_lambdas(lam: torch.Tensor) -> torch.Tensor:
    return lam if lam.dim() == 3 else torch.diag_embed(lam)


def fold_up_projections(
    lam: torch.Tensor, lora_B: torch.Tensor, logits: torch.Tensor, scaling: float, temperature: float
) -> torch.Tensor:
    """Returns U [T, r, out] with U_t = s · Λ_tᵀ (Σ_i p_ti B_i)ᵀ, p = softmax(w / τ), from (lora_lambda, lora_B,
    lora_B_weight): each task's low-rank path after A folded into one rank-r up-projection (row-major, the layout
    in which the gradient of it is a fast zᵀ @ grad)."""
    return torch.bmm(_full_lambdas(lam).transpose(1, 2), _mixed_up_projections(lora_B, logits, scaling, temperature))


def _mixed_up_projections(lora_B: torch.Tensor, logits: torch.Tensor, scaling: float, temperature: float):
    """Returns M [T, r, out] with M_t = s Σ_i p_ti B_iᵀ: task t's up-projection before Λ_t (U_t = Λ_tᵀ M_t)."""
    return torch.einsum("tn,nor->tro", _mixing_weights(logits, temperature, lora_B.dtype) * scaling, lora_B)


def _mixing_backward(
    grad_lam: torch.Tensor,
    grad_mixed: torch.Tensor,
    lam: torch.Tensor,
    lora_B: torch.Tensor,
    logits: torch.Tensor,
    scaling: float,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns the gradients of (lora_lambda, lora_B, lora_B_weight) from those of the full Λ [T, r, r] and of M
    [T, r, out] (`_mixed_up_projections`, the parameters' dtype): the softmax mixing's chain rule written out."""
    if lam.dim() == 2:
        grad_lam = grad_lam.diagonal(dim1=1, dim2=2)
    # The softmax runs in fp32 (`_mixing_weights`), and so does its backward, as autograd would run it.
    p32 = torch.softmax(logits / temperature, dim=-1, dtype=torch.float32)
    grad_B = torch.einsum("tn,tro->nor", p32.to(lora_B.dtype) * scaling, grad_mixed)
    grad_p = (torch.einsum("tro,nor->tn", grad_mixed, lora_B) * scaling).float()
    grad_logits = p32 * (grad_p - (grad_p * p32).sum(dim=-1, keepdim=True))
    return grad_lam, grad_B, grad_logits.to(logits.dtype) / temperature


class _GatheredUpProjection(torch.autograd.Function):
    """out += z U_t per sample, in place on the fresh base output out [tokens, out] (its rows sample by sample, z
    [batch, tokens per sample, r]): U gathered per sample ([batch, r, out]; `index_select`, the same values as U[ids]
    at a ninth of its cost at GLUE's sizes) into one batched GEMM with beta = 1. In place, as LoRA adds its update: an
    out-of-place result would write and read a second output-sized tensor per layer (at GLUE's sizes, memory traffic
    as costly as the GEMM), and a view of the output updated in place would make autograd copy the whole output
    gradient in backward (CopySlices), so the output is passed whole and viewed per sample only here.

    The arithmetic of autograd's `baddbmm(out, z, U[ids])` on one CPU thread, bit for bit (tested), but backward
    gathers U again instead of keeping the gathered tensor: saved are z, U [T, r, out] and the ids, what LoRA saves
    plus U, whatever the order of the tasks. Forward and backward take large batches in chunks whose gathered rows
    stay within a quarter of the output's size (`_gather_chunk`); backward adds each sample's gradient of its U_t in
    sample order (`_accumulate_rows`): deterministic, where autograd's indexing backward is not on a multi-threaded
    CPU."""

    @staticmethod
    def forward(ctx, out, z, up, ids):
        ctx.save_for_backward(z, up, ids)
        ctx.chunk = chunk = _gather_chunk(z, up.shape[-1])
        by_sample = out.view(len(ids), -1, out.shape[-1])
        for start in range(0, len(ids), chunk):
            rows = slice(start, start + chunk)
            by_sample[rows].baddbmm_(z[rows], up.index_select(0, ids[rows]))
        ctx.mark_dirty(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, up, ids = ctx.saved_tensors
        batch, chunk = len(ids), ctx.chunk
        grad_by_sample = grad.reshape(batch, -1, grad.shape[-1])  # the gradient may come non-contiguous
        grad_z = torch.empty_like(z) if ctx.needs_input_grad[1] else None
        grad_up = torch.zeros_like(up) if ctx.needs_input_grad[2] else None
        for start in range(0, batch, chunk):
            rows = slice(start, start + chunk)
            if grad_z is not None:
                torch.bmm(grad_by_sample[rows], up.index_select(0, ids[rows]).transpose(1, 2), out=grad_z[rows])
            if grad_up is not None:
                _accumulate_rows(grad_up, ids[rows], z[rows].transpose(1, 2).bmm(grad_by_sample[rows]))
        return grad, grad_z, grad_up, None


def _accumulate_rows(target: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """target[index[i]] += rows[i] for i in order, in place: the same sums in the same order on every run and any
    thread count (what autograd's backward of an indexing computes on one CPU thread, bit for bit). On a CPU,
    `index_put_` accumulating adds fp32 rows with atomics across threads from 2^15 elements on (nondeterministic:
    PyTorch's `use_deterministic_algorithms` lists it) where `index_add_` adds them one index after the other, 7×
    faster at GLUE's sizes; in reduced precision `index_put_` runs serially and `index_add_` rounds otherwise. On
    GPUs `index_add_` uses atomics and accumulating `index_put_` sorts the indices."""
    if target.device.type == "cpu" and target.dtype in (torch.float32, torch.float64):
        target.index_add_(0, index, rows)
    else:
        target.index_put_((index,), rows, accumulate=True)


def _gather_chunk(z: torch.Tensor, out_features: int) -> int:
    """Returns how many samples of z [batch, tokens, r] the gathered path takes at a time: the whole batch while its
    gathered up-projections [batch, r, out] stay under `GATHER_CHUNK_MIN` elements (a chunk's few operations per
    layer then cost more than the bytes they save: GLUE's short batches ran 10 % slower chunked), else as many
    samples as keep them within a quarter of the output's size."""
    batch, tokens, rank = z.shape
    if batch * rank * out_features < GATHER_CHUNK_MIN:
        return batch
    return max(1, batch * tokens // (4 * rank))


class _GroupedUpProjection(torch.autograd.Function):
    """out[rows] += z[rows] @ U_t for each run (t, rows) of one task, in place on the fresh base output, with
    U_t = Λ_tᵀ M_t (`fold_up_projections`). A run of fewer tokens than the layer has outputs applies the factors
    instead, (z Λ_tᵀ) M_t: tokens·r² flops rather than forming U_t's r²·out (a decoder step or a short answer at
    r = 64 would otherwise pay far more for U than for its tokens).

    With `order` (the samples sorted by task, `task_order`) the runs are rows of the sorted batch: z's rows are
    gathered in that order (r wide), each run's product is added into its samples' rows of the output
    (`index_add_`), and backward gathers the output gradient's rows one run at a time (out wide, one run's worth).

    A custom Function because autograd would clone the whole output gradient for every in-place update of an
    output slice (CopySlices); here backward passes the output gradient through untouched and computes z's, Λ's and
    M's gradients run by run (LoRA's backward GEMMs, plus tokens·r² or r²·out ones for Λ) into preallocated
    tensors. Nothing but z (sorted, with `order`) is kept between forward and backward, as for LoRA; M and U are
    formed again. The parameters' gradients follow by `_mixing_backward` (no nested autograd call: this runs once
    per layer and step, and small layers would feel its overhead)."""

    @staticmethod
    def forward(ctx, out, z, runs, order, scaling, temperature, lam, lora_B, logits):
        # Per-task views (tuples indexed by task) unbound once: on the small runs of a small batch the count of
        # operations is the cost.
        lambda_t_by_task = _full_lambdas(lam).transpose(1, 2).unbind(0)  # Λ_tᵀ [r, r]
        mixed = _mixed_up_projections(lora_B, logits, scaling, temperature)
        mixed_by_task = mixed.unbind(0)  # M_t [r, out]
        sizes = [end - start for _, start, end in runs]
        if order is None:
            for (task, _, _), out_rows, z_rows in zip(runs, out.split(sizes), z.split(sizes), strict=True):
                _add_run(z_rows, lambda_t_by_task[task], mixed_by_task[task], out_rows)
        else:
            per_sample = out.shape[0] // order.shape[0]
            z = z.view(order.shape[0], per_sample, -1).index_select(0, order).view_as(z)
            out_by_sample = out.view(order.shape[0], per_sample, -1)
            buffer = out.new_empty(max(sizes), out.shape[1])  # one run's products at a time, one allocation
            for (task, start, end), z_rows in zip(runs, z.split(sizes), strict=True):
                product = buffer[: end - start]
                _add_run(z_rows, lambda_t_by_task[task], mixed_by_task[task], product, overwrite=True)
                samples = order[start // per_sample : end // per_sample]
                out_by_sample.index_add_(0, samples, product.view(len(samples), per_sample, -1))
        ctx.mark_dirty(out)
        ctx.save_for_backward(z, order, lam, lora_B, logits)
        ctx.runs, ctx.sizes, ctx.scaling, ctx.temperature = runs, sizes, scaling, temperature
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, order, lam, lora_B, logits = ctx.saved_tensors
        needs_z, needs_params = ctx.needs_input_grad[1], any(ctx.needs_input_grad[6:])
        if not (needs_z or needs_params):
            return grad, None, None, None, None, None, None, None, None
        lams, mixed = _full_lambdas(lam), _mixed_up_projections(lora_B, logits, ctx.scaling, ctx.temperature)
        # Tuples indexed by task: Λ_t and Λ_tᵀ [r, r], M_t [r, out], and M_tᵀ once a run needs it.
        lambda_by_task, lambda_t_by_task = lams.unbind(0), lams.transpose(1, 2).unbind(0)
        mixed_by_task, mixed_t_by_task = mixed.unbind(0), None
        grad_z = torch.empty_like(z) if needs_z else None  # in z's (with `order`: sorted) row order
        grad_lam = torch.zeros_like(lams) if needs_params else None
        grad_mixed = torch.zeros_like(mixed) if needs_params else None
        grad_lambda_by_task = grad_lam.unbind(0) if needs_params else None  # views: accumulated in place
        grad_mixed_by_task = grad_mixed.unbind(0) if needs_params else None
        grad_z_runs = grad_z.split(ctx.sizes) if needs_z else [None] * len(ctx.runs)
        if order is None:
            grad_runs = grad.split(ctx.sizes)
        else:  # one run's rows of the output gradient at a time, into one buffer
            per_sample = grad.shape[0] // order.shape[0]
            grad_by_sample = grad.reshape(order.shape[0], per_sample, -1)  # the gradient may come non-contiguous
            buffer = grad.new_empty(max(ctx.sizes), grad.shape[1])
            grad_runs = (
                torch.index_select(
                    grad_by_sample,
                    0,
                    order[start // per_sample : end // per_sample],
                    out=buffer[: end - start].view(-1, per_sample, grad.shape[1]),
                ).view(-1, grad.shape[1])
                for _, start, end in ctx.runs
            )
        for (task, _, _), g, z_rows, grad_z_rows in zip(
            ctx.runs, grad_runs, z.split(ctx.sizes), grad_z_runs, strict=True
        ):
            if _factored(len(z_rows), grad.shape[-1]):  # out += w M_t with w = z Λ_tᵀ, in the adapter's dtype
                if mixed_t_by_task is None:
                    mixed_t_by_task = mixed.transpose(1, 2).unbind(0)
                g, z_rows = g.to(mixed.dtype), z_rows.to(mixed.dtype)
                grad_w = g @ mixed_t_by_task[task]
                if needs_z:
                    grad_z_rows.copy_(grad_w @ lambda_by_task[task])
                if needs_params:
                    grad_mixed_by_task[task].addmm_((z_rows @ lambda_t_by_task[task]).t(), g)
                    grad_lambda_by_task[task].addmm_(grad_w.t(), z_rows)
            else:  # out += z U_t with U_t = Λ_tᵀ M_t
                if needs_z:
                    torch.mm(g, (lambda_t_by_task[task] @ mixed_by_task[task]).to(g.dtype).t(), out=grad_z_rows)
                if needs_params:
                    grad_up = (z_rows.t() @ g).to(mixed.dtype)
                    grad_mixed_by_task[task].addmm_(lambda_by_task[task], grad_up)
                    grad_lambda_by_task[task].addmm_(mixed_by_task[task], grad_up.t())
        if needs_z and order is not None:  # back to the batch's order
            by_sample = grad_z.view(order.shape[0], -1, grad_z.shape[1])
            grad_z = torch.empty_like(by_sample).index_copy_(0, order, by_sample).view_as(z)
        grad_params = (None, None, None)
        if needs_params:
            grad_params = _mixing_backward(grad_lam, grad_mixed, lam, lora_B, logits, ctx.scaling, ctx.temperature)
        return grad, grad_z, None, None, None, None, *grad_params


def _add_run(
    z_rows: torch.Tensor, lambda_t: torch.Tensor, mixed_t: torch.Tensor, out_rows: torch.Tensor, overwrite: bool = False
) -> None:
    """Adds z_rows U_t, U_t = Λ_tᵀ M_t (`lambda_t` is Λ_tᵀ), into `out_rows` in place, or writes it there with
    `overwrite`. Factored, (z Λ_tᵀ) M_t in the adapter's dtype, when the run has fewer tokens than out features
    (`_factored`); else U_t is formed in the adapter's dtype and applied in the activations' (as the gathered
    path)."""
    if _factored(len(z_rows), mixed_t.shape[-1]):
        w = z_rows.to(mixed_t.dtype) @ lambda_t
        if out_rows.dtype != mixed_t.dtype:
            product = (w @ mixed_t).to(out_rows.dtype)
            if overwrite:
                out_rows.copy_(product)
            else:
                out_rows.add_(product)
        elif overwrite:
            torch.mm(w, mixed_t, out=out_rows)
        else:
            out_rows.addmm_(w, mixed_t)
    else:
        up = (lambda_t @ mixed_t).to(out_rows.dtype)
        if overwrite:
            torch.mm(z_rows, up, out=out_rows)
        else:
            out_rows.addmm_(z_rows, up)


def _factored(tokens: int, out_features: int) -> bool:
    """Whether a run of `tokens` rows applies Λ_t and M_t one after the other (tokens·r² flops) rather than forming
    U_t = Λ_tᵀ M_t (r²·out flops): the cheaper of the two, fewer tokens than output features."""
    return tokens < out_features


@dataclasses.dataclass(frozen=True)
class MTLLoRAOptions:
    num_tasks: int
    num_up: int = 3  # n, the number of shared up-projections B_i
    temperature: float = 0.1  # τ of the softmax over the up-projection logits
    lambda_type: str = "full"  # "full": Λ_t is r×r (official scripts); "diagonal": diag(λ_t); "identity": I, fixed
    shared_lambda: bool = False  # one Λ for every task (ablation) instead of one per task
    mixing: str = "learned"  # "learned": trained logits w_t (official); "uniform": w_t fixed at 0, p_t = 1/n
    # Short samples with tasks interleaved, in training: sorted by task inside the layer where that is faster than the
    # gathered path (module docstring); False: never sorted.
    sort_tasks: bool = True

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.num_up < 1:
            raise ValueError(f"num_up must be >= 1, got {self.num_up}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lambda_type not in LAMBDA_TYPES:
            raise ValueError(f"unknown lambda_type {self.lambda_type!r}; expected one of {LAMBDA_TYPES}")
        if not isinstance(self.shared_lambda, bool):
            raise ValueError(f"shared_lambda must be true or false, got {self.shared_lambda!r}")
        if not isinstance(self.sort_tasks, bool):
            raise ValueError(f"sort_tasks must be true or false, got {self.sort_tasks!r}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"unknown mixing {self.mixing!r}; expected one of {MIXINGS}")


@register_method
class MTLLoRALinear(AdapterLinear):
    """`lora_A` [r, in], `lora_lambda` [T, r, r] or [T, r], `lora_B` [n, out, r], `lora_B_weight` [T, n]. A shared
    Λ is [1, r, r] (or [1, r]); a fixed Λ (identity) or fixed logits (uniform mixing) are buffers (module docstring).

    Forward costs what LoRA's does: z = dropout(x) Aᵀ once, then z U_t is added to the base output, where
    U_t = s Λ_tᵀ (Σ_i p_ti B_i)ᵀ [r, out] is formed per task (T·r·(n+r)·out flops, independent of the number of
    tokens), by the gathered or the grouped path (module docstring).
    """

    method = "mtl_lora"
    Options = MTLLoRAOptions
    task_aware = True

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        o = self.options
        self.lora_A = self.new_parameter(self.r, self.in_features)
        lambdas = 1 if o.shared_lambda else o.num_tasks
        lambda_shape = (lambdas, self.r) if o.lambda_type == "diagonal" else (lambdas, self.r, self.r)
        self._add_tensor("lora_lambda", lambda_shape, fixed=o.lambda_type == "identity")
        self.lora_B = self.new_parameter(o.num_up, self.out_features, self.r)
        self._add_tensor("lora_B_weight", (o.num_tasks, o.num_up), fixed=o.mixing == "uniform")
        self.reset_parameters()

    def _add_tensor(self, name: str, shape: tuple[int, ...], fixed: bool) -> None:
        """Adds a trained parameter, or a fixed (ablated) part as a non-persistent buffer (module docstring)."""
        tensor = self.new_parameter(*shape)
        if fixed:
            self.register_buffer(name, tensor.detach(), persistent=False)
        else:
            setattr(self, name, tensor)

    def reset_parameters(self) -> None:
        # Official init: A as nn.Linear; Λ_t = identity (ones when diagonal); B_i = 0 so that ΔW = 0; the mixing
        # logits kaiming-uniform (fan-in n, so U(±1/√n)): random, which breaks the symmetry between the B_i.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        with torch.no_grad():
            if self.lora_lambda.dim() == 3:
                self.lora_lambda.copy_(torch.eye(self.r).expand_as(self.lora_lambda))
            else:
                self.lora_lambda.fill_(1.0)
        nn.init.zeros_(self.lora_B)
        nn.init.kaiming_uniform_(self.lora_B_weight, a=math.sqrt(5))
        if self.options.mixing == "uniform":
            # Drawn all the same, then fixed: the random stream (the next layers' A) stays full MTL-LoRA's at the
            # same seed, so that the seed-paired differences compare the same initialisation.
            nn.init.zeros_(self.lora_B_weight)

    def mixing_weights(self) -> torch.Tensor:
        """Returns p = softmax(w / τ) per task, [T, n]: the softmax in fp32, cast to B's dtype (as the official
        code: w / τ in the parameter's dtype, then softmax(dtype=float32))."""
        return _mixing_weights(self.lora_B_weight, self.options.temperature, self.lora_B.dtype)

    def lambdas(self) -> torch.Tensor:
        """Returns Λ_t as full matrices, [T, r, r]."""
        return _full_lambdas(self.task_lambdas())

    def task_lambdas(self) -> torch.Tensor:
        """Returns `lora_lambda` with one entry per task, [T, r, r] or [T, r]: a shared Λ expanded to every task (a
        view, so its gradient is the sum over the tasks)."""
        lam = self.lora_lambda
        return lam.expand(self.options.num_tasks, *lam.shape[1:]) if self.options.shared_lambda else lam

    def task_up_projections(self) -> torch.Tensor:
        """Returns U [T, r, out] (`fold_up_projections`), so that a sample of task t adds z U_t for its rank-space
        activations z (row vectors)."""
        params = (self.task_lambdas(), self.lora_B, self.lora_B_weight)
        return fold_up_projections(*params, self.scaling, self.options.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.task_ids(x)
        x2d, out = self.base_forward(x)
        z = self.lowrank_input(x2d, self.lora_A).to(out.dtype)
        batch = ids.shape[0]
        per_sample = out.shape[0] // batch
        params = (self.task_lambdas(), self.lora_B, self.lora_B_weight)
        # Sorting is chosen by its speed on training steps; evaluation and generation keep one batched GEMM.
        backward = torch.is_grad_enabled() and any(t.requires_grad for t in (z, *params))
        sort = self.options.sort_tasks and backward
        grouping = _grouping(ids, per_sample, self.r, self.out_features, self.options.num_tasks, sort)
        if grouping is not None:
            runs, order = grouping
            rows = [(task, start * per_sample, end * per_sample) for task, start, end in runs]
            out = _GroupedUpProjection.apply(out, z, rows, order, self.scaling, self.options.temperature, *params)
        else:
            up = self.task_up_projections().to(out.dtype)  # [T, r, out]: T·r·out work, not tokens·n·r·out
            out = _GatheredUpProjection.apply(out, z.view(batch, -1, self.r), up, ids)
        return self.finish(out, x)

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Task t's update is the rank-r LoRA with down = Λ_t A and up = Σ_i p_ti B_i (same scaling)."""
        task_id = self.required_task_id(task_id)
        p = self.mixing_weights()[task_id]
        return self.lambdas()[task_id] @ self.lora_A, torch.einsum("n,nor->or", p, self.lora_B)
