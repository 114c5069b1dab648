"""MultiLoRA (Wang et al., 2023), as in the official MTL-LoRA code: n LoRA modules of rank r each, summed,
each scaled per output channel: h = W x + b + s · Σ_i (B_i A_i dropout(x)) ⊙ scale_i."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .base import AdapterLinear, register_method


@dataclasses.dataclass(frozen=True)
class MultiLoRAOptions:
    num_modules: int = 3  # n parallel LoRA modules, each of full rank r

    def __post_init__(self) -> None:
        if self.num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {self.num_modules}")


@register_method
class MultiLoRALinear(AdapterLinear):
    """`lora_A` [n, r, in], `lora_B` [n, out, r], `lora_scale` [n, out]; ΔW = s · Σ_i diag(scale_i) B_i A_i.

    Forward folds each scale into its B and concatenates the n modules along rank: one rank-n·r product.
    """

    method = "multilora"
    Options = MultiLoRAOptions

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        n = self.options.num_modules
        self.lora_A = self.new_parameter(n, self.r, self.in_features)
        self.lora_B = self.new_parameter(n, self.out_features, self.r)
        self.lora_scale = self.new_parameter(n, self.out_features)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Official init: A and B both kaiming-uniform per module (fan-in of each slice), scales at zero so that
        # ΔW = 0 at the start.
        for i in range(self.options.num_modules):
            nn.init.kaiming_uniform_(self.lora_A[i], a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B[i], a=math.sqrt(5))
        nn.init.zeros_(self.lora_scale)

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (A as [n·r, in], scaled B as [out, n·r]) with matching rank order; B is a transposed view of a
        row-major [n·r, out] copy, the layout `add_up_projection_` wants."""
        n, out, r = self.lora_B.shape
        scaled = self.lora_B * self.lora_scale.unsqueeze(-1)
        return self.lora_A.reshape(n * r, self.in_features), scaled.transpose(1, 2).reshape(n * r, out).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        down, up = self._stacked()
        x2d, out = self.base_forward(x)
        z = self.lowrank_input(x2d, down)
        self.add_up_projection_(out, z, up, alpha=self.scaling)
        return self.finish(out, x)

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One LoRA of rank n·r: the A_i stacked, each B_i's rows scaled by its per-output scale."""
        return self._stacked()
