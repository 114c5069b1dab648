"""Putting adapters into a model and taking them out: injection, merging, state dicts, parameter counts."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_path
from .base import ADAPTABLE_NAMES, ADAPTABLE_TYPES, AdapterConfig, AdapterLinear, get_method
from .routing import RouterPostHook, RouterPreHook, TaskRouter, forward_accepts_task_ids

CONFIG_METADATA_KEY = "mtllora_config"
# The task names, JSON, in task-id order (files written before names were stored have none).
TASKS_METADATA_KEY = "mtllora_tasks"


class AdapterFileError(ValueError):
    """An adapter file is unreadable (truncated, corrupt) or was not written by `save_adapter`."""


@dataclasses.dataclass
class AdapterState:
    """What `apply_adapters` leaves on the model (as `model._mtllora`): the config, the router, its hooks, and the
    names of the tasks (task id i is `tasks[i]`; None when not given)."""

    config: AdapterConfig
    router: TaskRouter
    hook_ids: tuple[int, int]
    tasks: list[str] | None = None


def _matches_target(name: str, targets: list[str] | str) -> str | None:
    """Returns the target entry that selects module `name`, or None."""
    if isinstance(targets, str):
        return targets if re.fullmatch(targets, name) else None
    for target in targets:
        if name == target or name.endswith("." + target):
            return target
    return None


def _unmatched_target_error(model: nn.Module, unmatched: list[str] | str, adaptable: list[str]) -> ValueError:
    """The error for targets (a list, or one regex) that select no adaptable layer: names the modules of other
    types they select, and the names of the adaptable layers."""
    others = [
        f"{name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name and type(module) not in ADAPTABLE_TYPES and _matches_target(name, unmatched)
    ]
    shown = sorted({name.rsplit(".", 1)[-1] for name in adaptable})
    return ValueError(
        f"target_modules {unmatched} matched no adaptable layer ({ADAPTABLE_NAMES}) in {type(model).__name__}"
        + (f"; they select {others[:3]}, which cannot be adapted" if others else "")
        + f"; its adaptable layers' names end in {shown} (full paths such as {adaptable[:3]})"
    )


def apply_adapters(model: nn.Module, config: AdapterConfig, tasks: Sequence[str] | None = None) -> nn.Module:
    """Replaces every targeted nn.Linear or Conv1D of `model` by the config's adapter, freezes all other parameters
    (except those matching `config.trainable`) and returns the same model object, now accepting `task_ids=`.
    Each adapter layer takes the training/eval mode of the layer it replaces (dropout off in an eval-mode model).
    `tasks`: the task names (task id i is `tasks[i]`), which `save_adapter` stores so that a file cannot be served
    as another run's tasks."""
    if getattr(model, "_mtllora", None) is not None:
        raise ValueError(f"{type(model).__name__} already has mtllora adapters ({model._mtllora.config.method})")
    tasks = _checked_task_names(tasks, config)
    cls = get_method(config.method)
    adaptable = [name for name, module in model.named_modules() if type(module) in ADAPTABLE_TYPES]
    selected = [(name, target) for name in adaptable if (target := _matches_target(name, config.target_modules))]
    targets = [config.target_modules] if isinstance(config.target_modules, str) else config.target_modules
    unmatched = [t for t in targets if t not in {target for _, target in selected}]
    if unmatched:
        spec = config.target_modules if isinstance(config.target_modules, str) else unmatched
        raise _unmatched_target_error(model, spec, adaptable)

    for param in model.parameters():
        param.requires_grad_(False)
    checkpoint_modules = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    router = TaskRouter(config.num_tasks, checkpoint_modules if cls.task_aware else ())
    for name, _ in selected:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        setattr(parent, child, cls(base, config, router, name).train(base.training))
    for pattern in config.trainable:
        hits = [p for n, p in model.named_parameters() if re.search(pattern, n)]
        if not hits:
            raise ValueError(f"trainable pattern {pattern!r} matched no parameter of {type(model).__name__}")
        for param in hits:
            param.requires_grad_(True)

    pre = model.register_forward_pre_hook(RouterPreHook(router, forward_accepts_task_ids(model)), with_kwargs=True)
    post = model.register_forward_hook(RouterPostHook(router), with_kwargs=True, always_call=True)
    model._mtllora = AdapterState(config, router, (pre.id, post.id), tasks)
    return model


def _checked_task_names(tasks: Sequence[str] | None, config: AdapterConfig) -> list[str] | None:
    """Returns `tasks` as a list after checking they are distinct non-empty strings, no more than the config's
    number of tasks (a task-aware method)."""
    if tasks is None:
        return None
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be distinct non-empty names, got {tasks}")
    if config.num_tasks is not None and len(tasks) > config.num_tasks:
        raise ValueError(
            f"{len(tasks)} task names {tasks} for {config.method} with num_tasks={config.num_tasks}: at most "
            f"{config.num_tasks} expected"
        )
    return tasks


def get_task_names(model: nn.Module) -> list[str] | None:
    """Returns the task names the model's adapters were applied (or loaded) with, or None if none were given."""
    get_adapter_config(model)  # raises for a model without adapters
    return model._mtllora.tasks


def get_adapter_config(model: nn.Module) -> AdapterConfig:
    """Returns the AdapterConfig a model was prepared with, or raises if it has none."""
    state = getattr(model, "_mtllora", None)
    if state is None:
        raise ValueError(f"{type(model).__name__} has no mtllora adapters; call apply_adapters(model, config) first")
    return state.config


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    """Yields (path, layer) for every adapter layer of the model."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            yield name, module


def merge_adapters(model: nn.Module) -> nn.Module:
    """Folds every (task-agnostic) adapter into its base weight in place; returns the model."""
    get_adapter_config(model)
    for _, layer in adapter_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undoes `merge_adapters` in place; returns the model."""
    get_adapter_config(model)
    for _, layer in adapter_layers(model):
        layer.unmerge()
    return model


def _remove_router(model: nn.Module) -> None:
    pre_id, post_id = model._mtllora.hook_ids
    for hooks in (model._forward_pre_hooks, model._forward_pre_hooks_with_kwargs):
        hooks.pop(pre_id, None)
    for hooks in (model._forward_hooks, model._forward_hooks_with_kwargs, model._forward_hooks_always_called):
        hooks.pop(post_id, None)
    del model._mtllora


def merge_task(model: nn.Module, task_id: int | None = None, inplace: bool = False) -> nn.Module:
    """Returns a plain model (no adapters, no task routing) whose outputs equal the adapted model's with every
    sample on `task_id`: each adapter becomes a layer of its base layer's type (nn.Linear or Conv1D) holding the
    task's merged weight. Task-agnostic methods take task_id=None. The original model is left untouched unless
    `inplace`."""
    config = get_adapter_config(model)
    if config.num_tasks is not None:
        if task_id is None:
            raise ValueError(f"{config.method} merges one task at a time; pass task_id in 0..{config.num_tasks - 1}")
        model._mtllora.router.validate(task_id)
    elif task_id is not None:
        raise ValueError(f"{config.method} is task-agnostic; call merge_task(model) without task_id")
    target = model if inplace else copy.deepcopy(model)
    for name, layer in list(adapter_layers(target)):
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name), child, layer.merged_linear(task_id))
    _remove_router(target)
    return target


def _adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the adapter layers' own parameters and of the base parameters matching `trainable`."""
    config = get_adapter_config(model)
    own = {
        f"{layer_name}.{name}"
        for layer_name, layer in adapter_layers(model)
        for name, _ in layer.named_parameters(recurse=False)
    }
    return [
        name
        for name, _ in model.named_parameters()
        if name in own or any(re.search(pattern, name) for pattern in config.trainable)
    ]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns {parameter path: tensor} of everything the adapters train (lora_* and `trainable` matches)."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in _adapter_parameter_names(model)}


def load_adapter_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copies `state_dict` (from `adapter_state_dict`) into the model's adapters; raises naming any missing,
    unexpected or wrongly shaped entry (e.g. a state dict of another method). Returns the model."""
    config = get_adapter_config(model)
    params = dict(model.named_parameters())
    expected = _adapter_parameter_names(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in set(expected)]
    if missing or unexpected:
        raise ValueError(
            f"state dict does not fit this model's {config.method!r} adapters: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    for name in expected:
        if tuple(state_dict[name].shape) != tuple(params[name].shape):
            raise ValueError(
                f"{name}: state dict has shape {tuple(state_dict[name].shape)}, this model's {config.method!r} "
                f"adapter expects {tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name in expected:
            params[name].copy_(state_dict[name])
    return model


def save_adapter(model: nn.Module, path: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Writes the adapter state dict to a safetensors file, the config (and the task names, when the adapters have
    them) as JSON in its metadata; returns the path. `state_dict`: take the values from this full state dict instead
    of the parameters (DeepSpeed ZeRO-3 gathers partitioned parameters into one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = state_dict if state_dict is not None else dict(model.named_parameters())
    tensors = {k: source[k].detach().contiguous().cpu() for k in _adapter_parameter_names(model)}
    metadata = {CONFIG_METADATA_KEY: get_adapter_config(model).to_json()}
    if (tasks := get_task_names(model)) is not None:
        metadata[TASKS_METADATA_KEY] = json.dumps(tasks)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def check_safetensors_file(path: str | Path) -> None:
    """Raises ValueError when a safetensors file does not hold exactly the bytes its header describes (a copy or a
    write cut short, or not safetensors at all). Reads the header only, so it is cheap on a large file."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        if size < 8 or 8 + header_size > size:
            raise ValueError(f"{size} bytes cannot hold its header")
        header = json.loads(handle.read(header_size))
    try:
        data = max((t["data_offsets"][1] for key, t in header.items() if key != "__metadata__"), default=0)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"its header lists no tensor offsets ({type(err).__name__}: {err})") from err
    end = 8 + header_size + data
    if end != size:
        raise ValueError(f"{size} bytes where its header describes {end}")


def _read_metadata(path: str | Path) -> dict[str, str]:
    """Returns the safetensors metadata of a `save_adapter` file; raises AdapterFileError naming an unreadable one."""
    try:
        check_safetensors_file(path)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (ValueError, SafetensorError) as err:
        raise AdapterFileError(
            f"{path} is truncated or corrupt, not a readable safetensors adapter file ({err})"
        ) from err
    if CONFIG_METADATA_KEY not in metadata:
        raise AdapterFileError(f"{path} has no {CONFIG_METADATA_KEY!r} metadata; it was not written by save_adapter")
    return metadata


def read_adapter_config(path: str | Path) -> AdapterConfig:
    """Returns the AdapterConfig stored in a file written by `save_adapter`."""
    return AdapterConfig.from_dict(json.loads(_read_metadata(path)[CONFIG_METADATA_KEY]))


def read_adapter_tasks(path: str | Path) -> list[str] | None:
    """Returns the task names stored in a `save_adapter` file (task id i is the i-th), or None for a file saved
    without them (by a model given no task names, or before names were stored)."""
    stored = _read_metadata(path).get(TASKS_METADATA_KEY)
    return None if stored is None else json.loads(stored)


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads a `save_adapter` file into `model`: applies the stored config (and task names) first if the model has
    no adapters, else checks the configs (and the task names, where both have them) agree. New adapter layers take
    the model's training/eval mode. Returns the model."""
    saved, saved_tasks = read_adapter_config(path), read_adapter_tasks(path)
    current = getattr(model, "_mtllora", None)
    if current is None:
        apply_adapters(model, saved, saved_tasks)
    elif current.config != saved:
        raise ValueError(f"{path} holds adapters for {saved!r}, but the model has {current.config!r}")
    elif None not in (saved_tasks, current.tasks) and saved_tasks != current.tasks:
        raise ValueError(f"{path} holds adapters for tasks {saved_tasks}, but the model's tasks are {current.tasks}")
    # read_adapter_config above found the file whole, so loading it cannot fail on a truncated file.
    tensors = load_file(str(path), device=str(next(model.parameters()).device))
    return load_adapter_state_dict(model, tensors)


class ParameterCount(NamedTuple):
    """Trainable and total parameter counts."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        """Trainable share of the total, in percent."""
        return 100.0 * self.trainable / self.total if self.total else 0.0


def count_parameters(model: nn.Module) -> ParameterCount:
    """Returns (trainable, total) parameter counts; ZeRO-3 partitioned parameters count at full size."""
    trainable = total = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", param.numel())
        total += n
        trainable += n if param.requires_grad else 0
    return ParameterCount(trainable, total)
