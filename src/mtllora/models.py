"""Which pretrained weights a run uses (the `model/` config group) and how they are loaded.

Each benchmark builds its own kind of model from these weights (GLUE: an encoder with task heads; commonsense: a
causal LM); this module only knows where the weights and tokenizer are and in which dtype to load them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model/` config group: a hub id or local folder (optionally a GGUF file in it), the dtype to load, the
    modules adapters target, and the longest input its benchmarks tokenise by default."""

    name: str
    name_or_path: str
    target_modules: Sequence[str] = ()
    max_length: int = 128
    dtype: str = "float32"
    gguf_file: str | None = None
    # The architecture's config values (model_type, sizes) for `mtllora.plan` where the hub is unreachable; training
    # always reads the real config.
    shapes: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {self.dtype!r} for model {self.name!r}; expected e.g. float32, bfloat16")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """Builds the config from a Hydra node; unknown keys raise naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**{k: (list(v) if k == "target_modules" else v) for k, v in cfg.items()})

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the weights are loaded in."""
        return getattr(torch, self.dtype)


def is_local_path(name_or_path: str) -> bool:
    """Whether `name_or_path` means a local path rather than a hub id (`name` or `owner/name`): it exists, or it is
    written as a path (absolute, ./, ../, ~, more than one '/', or a folder that exists followed by a name)."""
    path = Path(name_or_path).expanduser()
    return (
        path.exists()
        or name_or_path.startswith(("/", "./", "../", "~"))
        or name_or_path.count("/") > 1
        or ("/" in name_or_path and path.parent.is_dir())
    )


def model_path_problem(name_or_path: str) -> str | None:
    """What is wrong with a local model path, or None (also for a hub id, which the preflight checks): a path that
    does not exist, where transformers would report a malformed hub id instead."""
    if not is_local_path(name_or_path) or Path(name_or_path).expanduser().exists():
        return None
    return (
        f"{name_or_path!r}: no such local folder; expected a folder holding the model (config.json, weights, "
        f"tokenizer files) or a hub id (owner/name)"
    )


def _require_local_model(cfg: ModelConfig) -> None:
    if (problem := model_path_problem(cfg.name_or_path)) is not None:
        raise FileNotFoundError(f"model {cfg.name!r}: {problem}")


def load_tokenizer(cfg: ModelConfig, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Returns the backbone's tokenizer (hub id or local folder, optionally a GGUF file in it); `kwargs` go to
    `from_pretrained` (e.g. padding_side).

    A local folder without the tokenizer's files is an error: transformers would build the tokenizer class from
    the model config with an empty vocabulary (its special tokens only), and every word would become unknown."""
    _require_local_model(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, gguf_file=cfg.gguf_file, **kwargs)
    folder = Path(cfg.name_or_path).expanduser()
    files = sorted(set(getattr(tokenizer, "vocab_files_names", {}).values()))
    if cfg.gguf_file is None and folder.is_dir() and files and not any((folder / f).exists() for f in files):
        raise FileNotFoundError(
            f"model {cfg.name!r}: the folder {folder} holds no tokenizer files: {type(tokenizer).__name__} reads "
            f"{' or '.join(files)}, none is there (without them every word would be unknown); save the model's "
            f"tokenizer into it (tokenizer.save_pretrained)"
        )
    return tokenizer


def load_pretrained(cfg: ModelConfig, auto_class: Any, **kwargs: Any) -> nn.Module:
    """Returns `auto_class.from_pretrained(...)` (e.g. AutoModel, AutoModelForCausalLM) in the configured dtype;
    `kwargs` go to `from_pretrained` (e.g. VL-BART's feat_dim).

    GGUF weights are dequantised by transformers on load, but the model keeps a GGUF quantizer that makes HF
    Trainer refuse to train it; it is dropped here, since the loaded weights are plain tensors."""
    _require_local_model(cfg)
    model = auto_class.from_pretrained(cfg.name_or_path, dtype=cfg.torch_dtype, gguf_file=cfg.gguf_file, **kwargs)
    if cfg.gguf_file is not None:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model
