"""MTL-LoRA (Yang et al., AAAI 2025), as in the official code (`mLoRALinear`):

    h = W x + b + s · (Σ_i softmax(w_t / τ)_i B_i) Λ_t A dropout(x)

A is shared, Λ_t is task-specific (full r×r, identity init, or diagonal, ones init), the n up-projections B_i
are shared and mixed per task by the softmax of the task's logits w_t (computed in fp32).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .base import AdapterLinear, register_method

LAMBDA_TYPES = ("full", "diagonal")


@dataclasses.dataclass(frozen=True)
class MTLLoRAOptions:
    num_tasks: int
    num_up: int = 3  # n, the number of shared up-projections B_i
    temperature: float = 0.1  # τ of the softmax over the up-projection logits
    lambda_type: str = "full"  # "full": Λ_t is r×r (official scripts); "diagonal": Λ_t is diag(λ_t)

    def __post_init__(self) -> None:
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if self.num_up < 1:
            raise ValueError(f"num_up must be >= 1, got {self.num_up}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.lambda_type not in LAMBDA_TYPES:
            raise ValueError(f"unknown lambda_type {self.lambda_type!r}; expected one of {LAMBDA_TYPES}")


@register_method
class MTLLoRALinear(AdapterLinear):
    """`lora_A` [r, in], `lora_lambda` [T, r, r] or [T, r], `lora_B` [n, out, r], `lora_B_weight` [T, n].

    Forward costs what LoRA's does: z = dropout(x) Aᵀ once, then one batched GEMM adds z U_t to the base
    output, where U_t = s Λ_tᵀ (Σ_i p_ti B_i)ᵀ [r, out] is formed per task (T·r·(n+r)·out flops,
    independent of the number of tokens) and gathered per sample.
    """

    method = "mtl_lora"
    Options = MTLLoRAOptions
    task_aware = True

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        o = self.options
        self.lora_A = self.new_parameter(self.r, self.in_features)
        if o.lambda_type == "full":
            self.lora_lambda = self.new_parameter(o.num_tasks, self.r, self.r)
        else:
            self.lora_lambda = self.new_parameter(o.num_tasks, self.r)
        self.lora_B = self.new_parameter(o.num_up, self.out_features, self.r)
        self.lora_B_weight = self.new_parameter(o.num_tasks, o.num_up)
        self.reset_parameters()

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

    def mixing_weights(self) -> torch.Tensor:
        """Returns p = softmax(w / τ) per task, [T, n]: the softmax in fp32, cast to B's dtype (as the official
        code: w / τ in the parameter's dtype, then softmax(dtype=float32))."""
        p = torch.softmax(self.lora_B_weight / self.options.temperature, dim=-1, dtype=torch.float32)
        return p.to(self.lora_B.dtype)

    def lambdas(self) -> torch.Tensor:
        """Returns Λ_t as full matrices, [T, r, r]."""
        lam = self.lora_lambda
        return lam if lam.dim() == 3 else torch.diag_embed(lam)

    def task_up_projections(self) -> torch.Tensor:
        """Returns U [T, r, out] with U_t = s · Λ_tᵀ (Σ_i p_ti B_i)ᵀ, so that a sample of task t adds z U_t for its
        rank-space activations z (row vectors): each task's whole low-rank path after A folded into one rank-r
        up-projection, stored row-major (the layout in which autograd's gradient of it is a fast zᵀ @ grad)."""
        mixed_up_t = torch.einsum("tn,nor->tro", self.mixing_weights() * self.scaling, self.lora_B)
        return torch.bmm(self.lambdas().transpose(1, 2), mixed_up_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.task_ids(x)
        x2d, out = self.base_forward(x)
        z = self.lowrank_input(x2d, self.lora_A)
        up = self.task_up_projections()[ids].to(out.dtype)  # [batch, r, out]: T·r·out work, not tokens·n·r·out
        # Out of place: baddbmm_ on a [batch, tokens, out] view of the output would make autograd copy the whole
        # output gradient (CopySlices) in backward; this way the base output is freed after the sum.
        batch = ids.shape[0]
        out = torch.baddbmm(out.view(batch, -1, self.out_features), z.to(out.dtype).view(batch, -1, self.r), up)
        return self.finish(out, x)

    def delta_weight(self, task_id: int | None = None) -> torch.Tensor:
        if task_id is None:
            raise ValueError(f"{self.name}: mtl_lora has one weight per task; pass task_id")
        p = self.mixing_weights()[task_id]
        mixed_up = torch.einsum("n,nor->or", p, self.lora_B)
        return self.scaling * (mixed_up @ self.lambdas()[task_id] @ self.lora_A)
