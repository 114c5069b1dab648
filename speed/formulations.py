"""Reference formulations measured next to ours: how the official MTL-LoRA code computes MTL-LoRA and MultiLoRA.

Both are written here from a description of the official code (docs/method.md, "The forward pass" for MTL-LoRA,
"Baselines" for MultiLoRA), not copied from it. They exist to show what our kernels are compared against; they
keep the official parameter layout (e.g. A as [1, r, in]) and compute the same function as our layers.
`official_mtl_lora` is also the tests' independent oracle for our MTL-LoRA layer and for official checkpoint
import: the one place the official formulation is written.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass
class TaskIds:
    """The task ids of the forward in progress, set by the benchmark step (the official code threads them through a
    patched model as `lambda_index`; a shared holder does the same without patching Hugging Face code)."""

    ids: torch.Tensor | None = None


def _new_parameter(base: nn.Linear, *shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=base.weight.dtype, device=base.weight.device))


def official_mtl_lora(
    x: torch.Tensor,
    task_ids: torch.Tensor,
    base_layer: nn.Module,
    lora_A: torch.Tensor,
    lora_lambdas: torch.Tensor,
    lora_B: torch.Tensor,
    lora_B_w: torch.Tensor,
    scaling: float,
    temperature: float,
) -> torch.Tensor:
    """MTL-LoRA's output for x [batch, tokens, in] as the official `mLoRALinear` computes it (docs/method.md), from
    parameters in the official layout: lora_A [1, r, in], lora_lambdas [T, r, r] or [T, r] (diagonal), lora_B
    [n, out, r], lora_B_w [T, n]. Mix all T up-projections, then per sample `index_select` A, Λ_t and the mixed
    B̃_t, run three `bmm`s, and add the result out of place."""
    num_up, out_features, r = lora_B.shape
    p = torch.softmax(lora_B_w / temperature, dim=-1, dtype=torch.float32).to(lora_B.dtype)
    mixed = (p @ lora_B.view(num_up, -1)).view(-1, out_features, r)  # B̃_t for every task
    lambdas = lora_lambdas if lora_lambdas.dim() == 3 else torch.diag_embed(lora_lambdas)
    a = lora_A.index_select(0, torch.zeros_like(task_ids))  # the shared A, gathered for every sample
    z = torch.bmm(x, a.transpose(1, 2))
    z = torch.bmm(z, lambdas.index_select(0, task_ids).transpose(1, 2))
    y = torch.bmm(z, mixed.index_select(0, task_ids).transpose(1, 2))
    # Step 5 of §1.1: out = F.linear(x, W, b) + y · s · tunable_scale, with tunable_scale = 1.0 (tunable_scaler
    # off); both scalings are kept, as the official code runs them.
    tunable_scale = 1.0
    return base_layer(x) + y * scaling * tunable_scale


class OfficialMTLLoRALinear(nn.Module):
    """MTL-LoRA as the official `mLoRALinear` computes it (`official_mtl_lora`), with its parameters and init."""

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        num_tasks: int,
        num_up: int,
        temperature: float,
        lambda_type: str,
        task_ids: TaskIds,
    ) -> None:
        super().__init__()
        if lambda_type not in ("full", "diagonal"):
            raise ValueError(f"lambda_type must be 'full' or 'diagonal', got {lambda_type!r}")
        self.base_layer = base_layer
        self.r, self.scaling, self.temperature, self.task_ids = r, alpha / r, temperature, task_ids
        out_features, in_features = base_layer.weight.shape
        self.lora_A = _new_parameter(base_layer, 1, r, in_features)
        lambda_shape = (num_tasks, r, r) if lambda_type == "full" else (num_tasks, r)
        self.lora_lambdas = _new_parameter(base_layer, *lambda_shape)
        self.lora_B = _new_parameter(base_layer, num_up, out_features, r)
        self.lora_B_w = _new_parameter(base_layer, num_tasks, num_up)
        # The official init: A as nn.Linear, Λ identity (ones if diagonal), B zero, mixing logits kaiming-uniform.
        nn.init.kaiming_uniform_(self.lora_A[0], a=math.sqrt(5))
        with torch.no_grad():
            if lambda_type == "full":
                self.lora_lambdas.copy_(torch.eye(r).expand(num_tasks, r, r))
            else:
                self.lora_lambdas.fill_(1.0)
        nn.init.zeros_(self.lora_B)
        nn.init.kaiming_uniform_(self.lora_B_w, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return official_mtl_lora(
            x,
            self.task_ids.ids,
            self.base_layer,
            self.lora_A,
            self.lora_lambdas,
            self.lora_B,
            self.lora_B_w,
            self.scaling,
            self.temperature,
        )


class OfficialMultiLoRALinear(nn.Module):
    """MultiLoRA as the official code computes it (docs/method.md#baselines): a Python loop over the n modules, each
    module's output scaled per output channel with an einsum and added out of place."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, num_modules: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scaling = alpha / r
        out_features, in_features = base_layer.weight.shape
        self.lora_A = _new_parameter(base_layer, num_modules, r, in_features)
        self.lora_B = _new_parameter(base_layer, num_modules, out_features, r)
        self.lora_scale = _new_parameter(base_layer, num_modules, out_features)
        for i in range(num_modules):  # official init: A and B kaiming-uniform, scales zero
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B[i], a=math.sqrt(5))
        nn.init.zeros_(self.lora_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for a, b, scale in zip(self.lora_A, self.lora_B, self.lora_scale, strict=True):
            h = F.linear(F.linear(x, a), b)
            result = result + torch.einsum("...o,o->...o", h, scale) * self.scaling
        return result


def replace_linears(
    model: nn.Module, targets: Sequence[str] | str, make: Callable[[nn.Linear], nn.Module]
) -> nn.Module:
    """Replaces every nn.Linear selected by `targets` (as `AdapterConfig.target_modules`: names matching a path
    or its last components, or one regex matching the whole path) by `make(linear)`, freezes every other
    parameter, and returns the model; raises if a target selects nothing."""
    for param in model.parameters():
        param.requires_grad_(False)
    patterns = [targets] if isinstance(targets, str) else list(targets)

    def selects(target: str, name: str) -> bool:
        if isinstance(targets, str):
            return re.fullmatch(target, name) is not None
        return name == target or name.endswith("." + target)

    found = set()
    names = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    for name in names:
        target = next((t for t in patterns if selects(t, name)), None)
        if target is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, make(getattr(parent, child)))
        found.add(target)
    missing = sorted(set(patterns) - found)
    if missing:
        raise ValueError(f"targets {missing} match no nn.Linear of {type(model).__name__}")
    return model
