"""What every adapter method shares: the config, the method registry and the `AdapterLinear` wrapper.

A method is one subclass of `AdapterLinear` in its own file, registered with `@register_method`. The wrapper
keeps the frozen original layer (`nn.Linear`, or the `Conv1D` of Hugging Face's GPT-2 family) as `base_layer` and
adds the low-rank path to its output. LoRA, MultiLoRA and MoELoRA add it in place (`addmm_` into the fresh base
output), so no extra full-size activation is created in forward or backward; so does MTL-LoRA, its per-sample
up-projections with one `baddbmm_` inside a Function that takes the output whole (on a 3-D view of it, autograd would
copy the whole output gradient). DoRA scales the sum by its magnitude out of place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

if TYPE_CHECKING:
    from .routing import TaskRouter

METHODS: dict[str, type[AdapterLinear]] = {}
ADAPTER_DTYPES = ("float32", "base", None)
# Layers an adapter can wrap (exact types): nn.Linear (weight [out, in]) and Hugging Face's Conv1D of the GPT-2
# family (weight [in, out], forward x @ W + b).
ADAPTABLE_TYPES = (nn.Linear, Conv1D)
ADAPTABLE_NAMES = "nn.Linear or transformers' Conv1D"


def weight_out_in(layer: nn.Module) -> torch.Tensor:
    """Returns the weight of an adaptable layer as [out, in]: the weight itself, or a transposed view for Conv1D
    (writing into it updates the layer)."""
    return layer.weight.t() if type(layer) is Conv1D else layer.weight


def register_method(cls: type[AdapterLinear]) -> type[AdapterLinear]:
    """Class decorator: makes `cls` available as `AdapterConfig(method=cls.method)`; returns `cls`."""
    if cls.method in METHODS:
        raise ValueError(f"adapter method {cls.method!r} is registered twice")
    METHODS[cls.method] = cls
    return cls


def get_method(name: str) -> type[AdapterLinear]:
    """Returns the adapter class registered under `name`, or raises naming the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown adapter method {name!r}; known methods: {sorted(METHODS)}") from None


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none beyond r, alpha and dropout."""


class AdapterConfig:
    """Which method to apply where, with which hyper-parameters.

    Common fields are explicit; method-specific ones (e.g. `num_tasks`, `num_up`, `temperature`, `lambda_type`
    for MTL-LoRA) are keyword options checked by the method's own `Options` dataclass, so adding a method never
    touches this class.

    `target_modules`: a list of module names, each matching a module path exactly or as its last components
    (`"q_proj"` matches `model.layers.0.self_attn.q_proj`), or one string taken as a regex that must match the
    whole path. Only nn.Linear and transformers' Conv1D (GPT-2 family) modules are adapted.
    `trainable`: regexes (searched in parameter names) of base-model parameters to train and save alongside the
    adapters, e.g. task heads, biases or LayerNorms.
    `adapter_dtype`: "float32" (default) keeps the adapter parameters in fp32, or in the base weight's dtype when
    that is wider (fp64), as PEFT's `autocast_adapter_dtype`: in a bf16/fp16 model without fp32 master weights an
    optimizer step of ~lr would round away on Λ's unit diagonal or DoRA's magnitude. "base" (or None) uses the
    base weight's dtype. Either way forward computes in the activations' dtype (the adapter weights are cast to it).
    """

    def __init__(
        self,
        method: str,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
        trainable: Sequence[str] = (),
        adapter_dtype: str | None = "float32",
        **options: Any,
    ) -> None:
        cls = get_method(method)
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"r must be a positive integer, got {r!r}")
        if not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if adapter_dtype not in ADAPTER_DTYPES:
            raise ValueError(f"adapter_dtype must be one of {ADAPTER_DTYPES}, got {adapter_dtype!r}")
        if not target_modules:
            raise ValueError("target_modules is empty; name the layers to adapt, e.g. ['q_proj', 'v_proj']")
        known = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method {method!r}; its options are {sorted(known) or 'none'}"
            )
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls.Options)
            if f.name not in options and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"method {method!r} needs option(s) {missing}")
        self.method = method
        self.r = r
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.target_modules: list[str] | str = (
            target_modules if isinstance(target_modules, str) else list(target_modules)
        )
        self.trainable = list(trainable)
        self.adapter_dtype = "base" if adapter_dtype is None else adapter_dtype
        self.options = cls.Options(**options)

    def __getattr__(self, name: str) -> Any:
        # Method options read like fields: `cfg.num_tasks`. Only reached when normal lookup fails.
        options = self.__dict__.get("options")
        if options is not None and name in {f.name for f in dataclasses.fields(options)}:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__} has no field or {self.__dict__.get('method')!r} option {name!r}")

    def parameter_dtype(self, base_dtype: torch.dtype) -> torch.dtype:
        """Returns the dtype of the adapter parameters of a layer whose base weight has `base_dtype`."""
        return base_dtype if self.adapter_dtype == "base" else torch.promote_types(base_dtype, torch.float32)

    @property
    def num_tasks(self) -> int | None:
        """Number of tasks of a task-aware method, else None."""
        return getattr(self.options, "num_tasks", None)

    def to_dict(self) -> dict[str, Any]:
        """Returns a flat JSON-able dict; `AdapterConfig(**d)` rebuilds an equal config."""
        return {
            "method": self.method,
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": self.target_modules,
            "trainable": self.trainable,
            "adapter_dtype": self.adapter_dtype,
            **dataclasses.asdict(self.options),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterConfig:
        """Builds a config from a flat mapping (a Hydra node, a JSON dict); lists may be any sequence."""
        d = dict(d)
        for key in ("target_modules", "trainable"):
            if key in d and not isinstance(d[key], str):
                d[key] = list(d[key])
        return cls(**d)

    def to_json(self) -> str:
        """Returns the config as a JSON string (stored in saved adapter files)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdapterConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"AdapterConfig({fields})"


class AdapterLinear(nn.Module):
    """Base of every adapted linear layer: `base_layer` (frozen original), `scaling = alpha / r`, dropout.

    Subclasses create their `lora_*` parameters in `__init__`, initialise them in `reset_parameters`, and define
    `forward` and `lora_factors` (whose product is `delta_weight`, unless the method overrides it). Merging adds
    `delta_weight()` to the frozen weight; a method whose merge is not additive (DoRA) overrides `merge_into_base` and
    `unmerge_from_base`.
    """

    method: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    task_aware: ClassVar[bool] = False

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, router: TaskRouter, name: str) -> None:
        super().__init__()
        if type(base_layer) not in ADAPTABLE_TYPES:
            raise TypeError(
                f"{name}: {self.method} adapts {ADAPTABLE_NAMES} layers only, got {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.out_features, self.in_features = weight_out_in(base_layer).shape
        self.r = config.r
        self.alpha = config.alpha
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.options = config.options
        self.parameter_dtype = config.parameter_dtype(base_layer.weight.dtype)
        self.router = router
        self.name = name
        self.merged = False

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self.options).items())
        return f"{self.method}: r={self.r}, alpha={self.alpha:g}" + (f", {opts}" if opts else "")

    # --- helpers used by the methods' forward ---------------------------------------------------------------

    def base_weight(self) -> torch.Tensor:
        """Returns the frozen base weight as [out, in] (a transposed view for Conv1D)."""
        return weight_out_in(self.base_layer)

    def gathered_base(self) -> contextlib.AbstractContextManager:
        """Returns a context in which the base layer's weight and bias are whole. DeepSpeed ZeRO-3 partitions them
        across ranks except during the base layer's own forward, so a method that reads them outside it (DoRA's
        norms and bias) must gather them; without ZeRO-3 this is a no-op."""
        partitioned = [p for p in self.base_layer.parameters(recurse=False) if hasattr(p, "ds_id")]
        if not partitioned:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)

    def new_parameter(self, *shape: int) -> nn.Parameter:
        """Returns an uninitialised parameter in the adapter dtype (see `AdapterConfig.adapter_dtype`), on the base
        weight's device."""
        return nn.Parameter(torch.empty(*shape, dtype=self.parameter_dtype, device=self.base_layer.weight.device))

    def base_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (x as [tokens, in], base output as [tokens, out]); the output is a fresh tensor that the
        method may update in place (it is not a view, so autograd adds no copy for in-place updates)."""
        x2d = x.reshape(-1, self.in_features)
        return x2d, self.base_layer(x2d)

    def lowrank_input(self, x2d: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Returns dropout(x) @ firstᵀ, the rank-space activations [tokens, rank], in x's dtype."""
        return nn.functional.linear(self.dropout(x2d), first.to(x2d.dtype))

    @staticmethod
    def add_up_projection_(out: torch.Tensor, v: torch.Tensor, up: torch.Tensor, alpha: float = 1.0) -> None:
        """out += alpha · v @ upᵀ, in place (one GEMM with beta=1; no temporary of out's size).

        upᵀ is passed row-major (a copy of rank × out elements unless `up` is already a transposed view): for a
        column-major upᵀ, autograd computes up's gradient as gradᵀ @ v, which on CPU is several times slower
        for small ranks (~6× at r=8, 4096 features) than the vᵀ @ grad it computes for a row-major one."""
        out.addmm_(v.to(out.dtype), up.to(out.dtype).t().contiguous(), alpha=alpha)

    def finish(self, out2d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Returns the [tokens, out] result reshaped to x's leading dimensions."""
        return out2d.view(*x.shape[:-1], self.out_features)

    def task_ids(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the LongTensor [batch] of task ids for the sample rows of x (batch = x.shape[0])."""
        batch = x.shape[0] if x.dim() > 1 else 1
        return self.router.task_ids(batch, x.device, self.name, self.method)

    # --- the method's math --------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Initialises the adapter parameters (the method's official init)."""
        raise NotImplementedError

    def delta_weight(self, task_id: int | None = None) -> torch.Tensor:
        """Returns the [out, in] weight update this adapter applies (for task `task_id` if task-aware): `lora_delta`,
        unless the method's update is more than a LoRA (DoRA)."""
        return self.lora_delta(task_id)

    def lora_delta(self, task_id: int | None = None) -> torch.Tensor:
        """Returns scaling · up @ down [out, in] of `lora_factors(task_id)`."""
        down, up = self.lora_factors(task_id)
        return self.scaling * (up @ down)

    def lora_factors(self, task_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (down [k, in], up [out, k]) with `lora_delta(task_id) = scaling · up @ down`: this adapter (for
        one task, if task-aware) as a plain rank-k LoRA, PEFT's lora_A and lora_B. It lets a trained adapter be
        served by any LoRA stack (`mtllora.export`)."""
        raise NotImplementedError(f"{self.method} has no plain-LoRA form")

    def required_task_id(self, task_id: int | None) -> int:
        """Returns `task_id`; raises when a task-aware method is asked for its weight without one."""
        if task_id is None:
            raise ValueError(f"{self.name}: {self.method} has one weight per task; pass task_id")
        return task_id

    def peft_tensors(self, task_id: int | None = None) -> dict[str, torch.Tensor]:
        """Returns this layer's PEFT LoRA tensors ({"lora_A.weight": down, "lora_B.weight": up}, see
        `lora_factors`), detached, as PEFT saves them."""
        down, up = self.lora_factors(task_id)
        return {"lora_A.weight": down.detach(), "lora_B.weight": up.detach()}

    def merge(self) -> None:
        """Folds the adapter into the base weight; the layer then runs at the base layer's speed."""
        if self.task_aware:
            raise ValueError(
                f"{self.name}: {self.method} has a different weight for every task; use merge_task(model, task_id)"
            )
        if self.merged:
            raise ValueError(f"{self.name} is already merged")
        with torch.no_grad():
            self.merge_into_base()
        self.merged = True

    def unmerge(self) -> None:
        """Inverse of `merge`: restores the base weight."""
        if not self.merged:
            raise ValueError(f"{self.name} is not merged")
        with torch.no_grad():
            self.unmerge_from_base()
        self.merged = False

    def merge_into_base(self) -> None:
        """W ← W + ΔW (called by `merge` without autograd)."""
        weight = self.base_weight()
        weight += self.delta_weight().to(weight.dtype)

    def unmerge_from_base(self) -> None:
        """W ← W − ΔW, the inverse of `merge_into_base` (called by `unmerge` without autograd)."""
        weight = self.base_weight()
        weight -= self.delta_weight().to(weight.dtype)

    def merged_linear(self, task_id: int | None = None) -> nn.Module:
        """Returns a new layer of the base layer's type (nn.Linear or Conv1D, so that a merged model keeps its
        architecture and checkpoint layout) computing this layer for task `task_id`; frozen, bias copied."""
        if self.merged:
            raise ValueError(f"{self.name} is merged in place; unmerge it before merge_task")
        merged = copy.deepcopy(self.base_layer).requires_grad_(False)
        with torch.no_grad():
            weight = weight_out_in(merged)
            weight += self.delta_weight(task_id).to(weight.dtype)
        return merged
