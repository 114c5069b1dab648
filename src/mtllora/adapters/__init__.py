"""Adapter library: LoRA, DoRA, MultiLoRA, MoELoRA and MTL-LoRA for any torch model's nn.Linear layers (and the
Conv1D layers of Hugging Face's GPT-2 family).

    cfg = AdapterConfig(method="mtl_lora", r=8, alpha=16, target_modules=["q_proj", "v_proj"], num_tasks=8)
    model = apply_adapters(model, cfg)
    out = model(input_ids=..., task_ids=task_ids)
    with use_tasks(model, task_ids):
        model.generate(...)

Every module of this package is imported here, so a method registers itself by existing (one file per method).
"""

import importlib
import pkgutil

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

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

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
