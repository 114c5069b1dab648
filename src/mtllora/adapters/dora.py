"""DoRA (Liu et al., 2024), with the semantics of PEFT's `LoraConfig(use_dora=True)`:

    V = W + s·B A,   g = m / ‖V‖ (row norms, detached),   h = W x + b + (g − 1) ⊙ W x_d + g ⊙ s·B A x_d

with x_d = dropout(x); the bias is not rescaled. Without dropout this is g ⊙ (W x + s·B A x) + b.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import AdapterLinear, register_method


def _norm_dtype(weight: torch.Tensor) -> torch.dtype:
    """Norms accumulate in fp32 at least (fp64 for fp64 weights)."""
    return torch.promote_types(weight.dtype, torch.float32)


@register_method
class DoRALinear(AdapterLinear):
    """`lora_A` [r, in], `lora_B` [out, r], `lora_magnitude` [out] (init: row norms of W).

    ‖V‖² is never formed from an out×in temporary: it is ‖W‖² (cached; W is frozen) + 2s·rowsum((W Aᵀ) ⊙ B)
    + s²·rowsum((B (A Aᵀ)) ⊙ B), accumulated in fp32 at least.
    """

    method = "dora"

    def __init__(self, base_layer, config, router, name):
        super().__init__(base_layer, config, router, name)
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, self.r)
        self.lora_magnitude = self.new_parameter(self.out_features)
        self._weight_sq_norm_cache: tuple[tuple, torch.Tensor] | None = None
        self._merge_scale: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A as nn.Linear, B = 0 (so V = W at the start), m = ‖W‖ so that the layer starts as the base layer.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        with torch.no_grad():
            weight = self.base_weight()
            self.lora_magnitude.copy_(torch.linalg.norm(weight.to(_norm_dtype(weight)), dim=1))

    def _weight_sq_norm(self) -> torch.Tensor:
        """Returns ‖W‖² per row (at least fp32), recomputed only when W changes (new storage or in-place update)."""
        weight = self.base_weight()
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype)
        if self._weight_sq_norm_cache is None or self._weight_sq_norm_cache[0] != key:
            with torch.no_grad():
                sq_norm = weight.to(_norm_dtype(weight)).square().sum(dim=1)
            self._weight_sq_norm_cache = (key, sq_norm)
        return self._weight_sq_norm_cache[1]

    def weight_norm(self) -> torch.Tensor:
        """Returns ‖W + s·B A‖ per row (at least fp32; detached, as in DoRA's norm-detach trick)."""
        with torch.no_grad():
            weight = self.base_weight()
            dtype = _norm_dtype(weight)
            a, b, s = self.lora_A.to(dtype), self.lora_B.to(dtype), self.scaling
            wa = (weight @ self.lora_A.t().to(weight.dtype)).to(dtype)  # [out, r]
            cross = (wa * b).sum(dim=1)
            quad = ((b @ (a @ a.t())) * b).sum(dim=1)
            return (self._weight_sq_norm() + 2 * s * cross + s * s * quad).sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        x2d, out = self.base_forward(x)
        x_d = self.dropout(x2d)
        z = F.linear(x_d, self.lora_A.to(x_d.dtype))
        with self.gathered_base():  # W and b are read outside the base layer's forward (ZeRO-3 partitions them)
            g = (self.lora_magnitude / self.weight_norm()).to(out.dtype)
            bias = self.base_layer.bias
            if isinstance(self.dropout, nn.Identity) or not self.training:
                # g ⊙ (W x + s·B A x) + b
                if bias is not None:
                    out.sub_(bias)
                self.add_up_projection_(out, z, self.lora_B, alpha=self.scaling)
                out = out * g if bias is None else torch.addcmul(bias, out, g)
            else:
                # (W x + b − W x_d) + g ⊙ (W x_d + s·B A x_d)
                wx_d = F.linear(x_d, self.base_weight())
                out.sub_(wx_d)
                self.add_up_projection_(wx_d, z, self.lora_B, alpha=self.scaling)
                out = torch.addcmul(out, wx_d, g)
        return self.finish(out, x)

    def _direction(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (V = W + s·B A, g = m / ‖V‖) computed directly, for merging."""
        weight = self.base_weight()
        v = weight + self.lora_delta().to(weight.dtype)
        return v, (self.lora_magnitude / torch.linalg.norm(v.to(_norm_dtype(v)), dim=1)).to(weight.dtype)

    def delta_weight(self, task_id: int | None = None) -> torch.Tensor:
        v, g = self._direction()
        return g.unsqueeze(1) * v - self.base_weight()

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The directional LoRA (A, B); the layer also needs its magnitude (see `peft_tensors`)."""
        return self.lora_A, self.lora_B

    def peft_tensors(self, task_id: int | None = None) -> dict[str, torch.Tensor]:
        return {**super().peft_tensors(task_id), "lora_magnitude_vector": self.lora_magnitude.detach()}

    def merge_into_base(self) -> None:
        """W ← g ⊙ V; g is kept so that `unmerge_from_base` inverts exactly this step."""
        v, g = self._direction()
        self.base_weight().copy_(g.unsqueeze(1) * v)
        self._merge_scale = g

    def unmerge_from_base(self) -> None:
        """W ← W / g − s·B A."""
        weight = self.base_weight()
        weight.copy_(weight / self._merge_scale.unsqueeze(1) - self.lora_delta().to(weight.dtype))
        self._merge_scale = None
