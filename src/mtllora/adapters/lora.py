"""LoRA (Hu et al., 2021): h = W x + b + s · B A dropout(x)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import AdapterLinear, register_method


@register_method
class LoRALinear(AdapterLinear):
    """`lora_A` [r, in], `lora_B` [out, r]; ΔW = s · B A."""

    method = "lora"

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, self.r)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A as nn.Linear initialises its weight, B at zero so that ΔW = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        x2d, out = self.base_forward(x)
        z = self.lowrank_input(x2d, self.lora_A)
        self.add_up_projection_(out, z, self.lora_B, alpha=self.scaling)
        return self.finish(out, x)

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B
