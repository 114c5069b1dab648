"""MoELoRA (MOELoRA, Liu et al., 2023), as in the official MTL-LoRA code: E experts of rank r/E whose outputs
are weighted by a gate on a learned task embedding (never on tokens):

    ω_t = softmax(G e_t),   h = W x + b + s · Σ_e ω_t[e] B_e A_e dropout(x),   s = α / r
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .base import AdapterLinear, register_method


@dataclasses.dataclass(frozen=True)
class MoELoRAOptions:
    num_tasks: int
    num_experts: int = 8
    task_embedding_dim: int = 64

    def __post_init__(self) -> None:
        for field in ("num_tasks", "num_experts", "task_embedding_dim"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


@register_method
class MoELoRALinear(AdapterLinear):
    """`lora_A` [r, in] and `lora_B` [out, r] hold the E experts stacked along rank (expert e owns ranks
    e·r/E … (e+1)·r/E − 1); `lora_task_embedding` [T+1, d_te] (the official code keeps one spare row);
    `lora_gate` [E, d_te]. Forward scales the rank-space activations by each sample's expert weights: one GEMM
    for all experts."""

    method = "moelora"
    Options = MoELoRAOptions
    task_aware = True

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        experts, embedding_dim = self.options.num_experts, self.options.task_embedding_dim
        if self.r % experts:
            raise ValueError(f"{name}: moelora needs r divisible by num_experts, got r={self.r}, E={experts}")
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, self.r)
        self.lora_task_embedding = self.new_parameter(self.options.num_tasks + 1, embedding_dim)
        self.lora_gate = self.new_parameter(experts, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Official init: experts' A ~ N(0, 0.01²), B = 0 (ΔW = 0); embedding N(0, 1) as nn.Embedding; gate as
        # a bias-free nn.Linear.
        nn.init.normal_(self.lora_A, std=0.01)
        nn.init.zeros_(self.lora_B)
        nn.init.normal_(self.lora_task_embedding)
        nn.init.kaiming_uniform_(self.lora_gate, a=math.sqrt(5))

    def expert_weights(self) -> torch.Tensor:
        """Returns ω [T+1, E], the softmax gate of every task embedding row (in the parameters' dtype, as the
        official code)."""
        return torch.softmax(self.lora_task_embedding @ self.lora_gate.t(), dim=-1)

    def rank_scales(self) -> torch.Tensor:
        """Returns s · ω expanded to each expert's ranks, [T+1, r]."""
        return self.scaling * self.expert_weights().repeat_interleave(self.r // self.options.num_experts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = self.task_ids(x)
        x2d, out = self.base_forward(x)
        z = self.lowrank_input(x2d, self.lora_A)
        v = z.view(ids.shape[0], -1, self.r) * self.rank_scales()[ids].to(z.dtype).unsqueeze(1)
        self.add_up_projection_(out, v.view(-1, self.r), self.lora_B)
        return self.finish(out, x)

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Task t's update is the rank-r LoRA with down = A and up = B with each expert's columns scaled by ω_t[e]."""
        weights = self.expert_weights()[self.required_task_id(task_id)]
        return self.lora_A, self.lora_B * weights.repeat_interleave(self.r // self.options.num_experts)
