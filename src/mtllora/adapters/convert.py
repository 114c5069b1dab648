"""Checkpoints in and out: official MTL-LoRA `final_checkpoint.pt` in; PEFT LoRA/DoRA in and out."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .base import Conv1D
from .inject import adapter_layers, get_adapter_config, load_adapter_state_dict

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
_TO_PEFT_NAMES = {ours: peft for peft, ours in _PEFT_NAMES.items()}


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


def _check_peft_method(model: nn.Module) -> None:
    method = get_adapter_config(model).method
    if method not in ("lora", "dora"):
        raise ValueError(f"PEFT has LoRA and DoRA only; this model's adapters are {method!r}")


def to_peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns the LoRA/DoRA adapters as PEFT's saved state dict (`get_peft_model_state_dict` keys)."""
    _check_peft_method(model)
    out = {}
    for name, param in model.named_parameters():
        module, _, leaf = name.rpartition(".")
        peft_leaf = _TO_PEFT_NAMES.get(leaf)
        if peft_leaf is not None:
            out[f"{_PEFT_PREFIX}{module}.{peft_leaf}"] = param.detach()
    return out


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


def save_peft(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Writes `adapter_config.json` and `adapter_model.safetensors` that `peft.PeftModel.from_pretrained` loads;
    returns the directory. LoRA and DoRA only (PEFT has no MTL-LoRA)."""
    from peft import LoraConfig

    _check_peft_method(model)
    config = get_adapter_config(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        use_dora=config.method == "dora",
        fan_in_fan_out=all(type(layer.base_layer) is Conv1D for _, layer in adapter_layers(model)),  # GPT-2 family
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )
    peft_config.save_pretrained(str(directory))
    tensors = {k: v.contiguous().cpu() for k, v in to_peft_state_dict(model).items()}
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    return directory
