"""Checkpoints in and out: official MTL-LoRA `final_checkpoint.pt` in; PEFT LoRA/DoRA in; every method out as PEFT
LoRA (task-aware methods one task at a time)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .base import AdapterConfig, Conv1D
from .inject import adapter_layers, apply_adapters, get_adapter_config, load_adapter_state_dict

# Official mLoRALinear parameter -> ours. Shapes: lora_A [1, r, in] -> [r, in]; the others are unchanged
# (the official forward computes z Λᵀ, i.e. Λ A x, the same convention as ours).
_OFFICIAL_MTL_LORA_NAMES = {
    "lora_A": "lora_A",
    "lora_lambdas": "lora_lambda",
    "lora_B": "lora_B",
    "lora_B_w": "lora_B_weight",
}

_PEFT_PREFIX = "base_model.model."
_PEFT_NAMES = {
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_magnitude_vector": "lora_magnitude",
}


def from_official_mtl_lora(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns an official MTL-LoRA state dict (`pUmpKin-Co/MTL-LoRA`, keys `<module>.lora_A|lora_lambdas|lora_B|
    lora_B_w`, saved by its `save_pretrain`) renamed and reshaped to this library's layout."""
    converted = {}
    for key, tensor in state_dict.items():
        key = key.removeprefix("module.")
        module, _, name = key.rpartition(".")
        if name not in _OFFICIAL_MTL_LORA_NAMES:
            raise ValueError(
                f"{key}: not an official mLoRALinear parameter (expected one of {sorted(_OFFICIAL_MTL_LORA_NAMES)});"
                " checkpoints trained with tunable_scaler=True are not supported"
            )
        if name == "lora_A":
            if tensor.dim() != 3 or tensor.shape[0] != 1:
                raise ValueError(f"{key}: official lora_A has shape [1, r, in], got {tuple(tensor.shape)}")
            tensor = tensor[0]
        converted[f"{module}.{_OFFICIAL_MTL_LORA_NAMES[name]}"] = tensor
    return converted


def load_official_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads an official MTL-LoRA `final_checkpoint.pt` into a model prepared with a matching mtl_lora
    AdapterConfig (same targets, r, num_up, num_tasks, lambda_type); raises on any mismatch. Returns the model."""
    config = get_adapter_config(model)
    if config.method != "mtl_lora":
        raise ValueError(f"official MTL-LoRA checkpoints load into method 'mtl_lora', this model has {config.method!r}")
    state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    return load_adapter_state_dict(model, from_official_mtl_lora(state_dict))


def _renamed(rename: Callable[[str], str | None] | None, path: str) -> str:
    new = path if rename is None else rename(path)
    if new is None:
        raise ValueError(f"{path}: this adapter layer has no place in the exported model")
    return new


def to_peft_state_dict(
    model: nn.Module, task_id: int | None = None, rename: Callable[[str], str | None] | None = None
) -> dict[str, torch.Tensor]:
    """Returns the adapters (for task `task_id` if task-aware) as PEFT's saved LoRA/DoRA state dict
    (`get_peft_model_state_dict` keys). Every method exports: LoRA and DoRA as they are, MTL-LoRA and MoELoRA as
    the plain LoRA of one task, MultiLoRA as one LoRA of rank n·r (`AdapterLinear.lora_factors`); task-agnostic
    methods ignore `task_id`. `rename` maps a
    layer's path in `model` to its path in the model PEFT will load onto (default: the same)."""
    config = get_adapter_config(model)
    if config.num_tasks is not None:
        if task_id is None:
            raise ValueError(f"{config.method} exports one task at a time; pass task_id in 0..{config.num_tasks - 1}")
        model._mtllora.router.validate(task_id)
    out = {}
    with torch.no_grad():
        for path, layer in adapter_layers(model):
            for leaf, tensor in layer.peft_tensors(task_id if config.num_tasks is not None else None).items():
                out[f"{_PEFT_PREFIX}{_renamed(rename, path)}.{leaf}"] = tensor
    return out


def peft_rank(model: nn.Module) -> int:
    """Returns the rank of the exported PEFT LoRA (n·r for MultiLoRA, r for the others)."""
    ranks = {layer.lora_factors(0 if layer.task_aware else None)[0].shape[0] for _, layer in adapter_layers(model)}
    if len(ranks) != 1:
        raise ValueError(f"adapter layers have different ranks {sorted(ranks)}; PEFT's LoraConfig has one")
    return ranks.pop()


def save_peft(
    model: nn.Module,
    directory: str | Path,
    task_id: int | None = None,
    base_model_name_or_path: str | None = None,
    *,
    rename: Callable[[str], str | None] | None = None,
    modules_to_save: Mapping[str, torch.Tensor] | None = None,
    task_type: str | None = None,
) -> Path:
    """Writes `adapter_config.json` and `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads
    onto the base model, and returns the directory: the adapters as a PEFT LoRA (DoRA for DoRA) with this
    library's scaling (see `to_peft_state_dict`). `modules_to_save`: {parameter path in the PEFT base model:
    value} of trained non-adapter weights (task heads), saved as PEFT `modules_to_save` of their modules."""
    from peft import LoraConfig

    config = get_adapter_config(model)
    tensors = to_peft_state_dict(model, task_id, rename)
    layers = dict(adapter_layers(model))
    rank = peft_rank(model)
    if isinstance(config.target_modules, list) and rename is None:
        targets: list[str] | str = config.target_modules
    else:  # exact paths: a regex, or names, may select other layers once renamed
        targets = sorted(_renamed(rename, path) for path in layers)
    saved_modules = sorted({name.rpartition(".")[0] for name in modules_to_save or {}})
    peft_config = LoraConfig(
        r=rank,
        lora_alpha=config.alpha / config.r * rank,  # PEFT's scaling lora_alpha / r equals ours, alpha / r
        lora_dropout=config.dropout,
        target_modules=targets,
        use_dora=config.method == "dora",
        fan_in_fan_out=all(type(layer.base_layer) is Conv1D for layer in layers.values()),  # GPT-2 family
        bias="none",
        modules_to_save=saved_modules or None,
        task_type=task_type,
        base_model_name_or_path=base_model_name_or_path,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(directory))
    tensors.update({f"{_PEFT_PREFIX}{name}": value for name, value in (modules_to_save or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory


def from_peft_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns a PEFT LoRA/DoRA state dict (`get_peft_model_state_dict` keys) in this library's layout."""
    out = {}
    for key, tensor in state_dict.items():
        stripped = key.removeprefix(_PEFT_PREFIX)
        for peft_leaf, ours in _PEFT_NAMES.items():
            if stripped.endswith("." + peft_leaf):
                out[f"{stripped[: -len(peft_leaf) - 1]}.{ours}"] = tensor
                break
        else:
            raise ValueError(f"{key}: not a PEFT LoRA/DoRA parameter (expected a name ending in {sorted(_PEFT_NAMES)})")
    return out


def read_peft_config(directory: str | Path) -> AdapterConfig:
    """Returns the AdapterConfig (method lora or dora) of a PEFT LoRA adapter folder; raises naming what PEFT
    features this library does not reproduce (per-module ranks, LoRA biases, modules_to_save...)."""
    path = Path(directory) / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a PEFT adapter folder: it has no adapter_config.json")
    peft = json.loads(path.read_text())
    if peft.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type {peft.get('peft_type')!r}; only LORA adapters (LoRA, DoRA) import")
    unsupported = {
        key: peft.get(key)
        for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "use_rslora")
        if peft.get(key)
    }
    if peft.get("bias", "none") != "none" or peft.get("lora_bias"):
        unsupported["bias"] = peft.get("bias")
    if unsupported:
        raise ValueError(f"{path}: PEFT options this library does not import: {unsupported}")
    return AdapterConfig(
        method="dora" if peft.get("use_dora") else "lora",
        r=peft["r"],
        alpha=peft["lora_alpha"],
        dropout=peft.get("lora_dropout", 0.0),
        target_modules=peft["target_modules"],
    )


def load_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Puts a PEFT LoRA/DoRA adapter folder's adapters into `model` (a model without adapters, the folder's base
    model) as this library's LoRA/DoRA, to continue training it or compare with it; returns the model."""
    directory = Path(directory)
    apply_adapters(model, read_peft_config(directory))
    state = load_file(str(directory / "adapter_model.safetensors"), device=str(next(model.parameters()).device))
    return load_adapter_state_dict(model, from_peft_state_dict(state))
