"""Adapter library: LoRA, DoRA, MultiLoRA, MoELoRA and MTL-LoRA for any torch model's nn.Linear layers (and the
Conv1D layers of Hugging Face's GPT-2 family).

    cfg = AdapterConfig(method="mtl_lora", r=8, alpha=16, target_modules=["q_proj", "v_proj"], num_tasks=8)
    model = apply_adapters(model, cfg)
    out = model(input_ids=..., task_ids=task_ids)
    with use_tasks(model, task_ids):
        model.generate(...)

A method is one module that registers its class (`@register_method`) when imported; each is imported here by name,
so a new method adds its module to the import below.
"""

from . import convert, dora, lora, moelora, mtl_lora, multilora  # noqa: F401 (importing registers the methods)
from .base import METHODS, AdapterConfig, AdapterLinear, get_method, register_method
from .inject import (
    AdapterFileError,
    ParameterCount,
    adapter_layers,
    adapter_state_dict,
    apply_adapters,
    count_parameters,
    get_adapter_config,
    get_task_names,
    load_adapter,
    load_adapter_state_dict,
    merge_adapters,
    merge_task,
    read_adapter_config,
    read_adapter_tasks,
    save_adapter,
    unmerge_adapters,
)
from .routing import TaskIdError, check_task_id_range, use_tasks

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterLinear",
    "ParameterCount",
    "TaskIdError",
    "adapter_layers",
    "adapter_state_dict",
    "apply_adapters",
    "check_task_id_range",
    "count_parameters",
    "get_adapter_config",
    "get_method",
    "get_task_names",
    "load_adapter",
    "load_adapter_state_dict",
    "merge_adapters",
    "merge_task",
    "read_adapter_config",
    "read_adapter_tasks",
    "register_method",
    "save_adapter",
    "unmerge_adapters",
    "use_tasks",
]
