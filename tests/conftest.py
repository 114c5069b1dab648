"""Tiny random models built from configs (no network) and helpers shared by the tests."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from mtllora.adapters import AdapterConfig, apply_adapters
from mtllora.testing import write_tiny_encoder, write_tiny_glue, write_tiny_llama  # noqa: F401 - the tests import them from here

# DeepSpeed JIT-builds its CPU ops behind a lock file that a build killed half-way leaves behind, and every later
# build (any checkout sharing ~/.cache) then waits on it forever; each virtual environment builds into its own folder.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))

NUM_TASKS = 3
# Small but non-trivial options per method (T=3 tasks, n=3 up-projections, E=4 experts of rank 2).
METHOD_OPTIONS = {
    "lora": {},
    "dora": {},
    "multilora": {"num_modules": 3},
    "moelora": {"num_tasks": NUM_TASKS, "num_experts": 4, "task_embedding_dim": 8},
    "mtl_lora": {"num_tasks": NUM_TASKS, "num_up": 3, "temperature": 0.5},
}
ALL_METHODS = list(METHOD_OPTIONS)
TASK_AWARE = ["moelora", "mtl_lora"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_config(method: str, **overrides) -> AdapterConfig:
    """Returns an AdapterConfig for `method` with the test defaults (r=8, alpha=16, q/k/v/o)."""
    kwargs = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": LLAMA_TARGETS, **METHOD_OPTIONS[method]}
    kwargs.update(overrides)
    return AdapterConfig(method=method, **kwargs)


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float64) -> LlamaForCausalLM:
    """Returns a 2-layer random LlamaForCausalLM (hidden 32, GQA 4/2 heads, vocab 64) in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


def tiny_bert(seed: int = 0, dtype: torch.dtype = torch.float64) -> BertModel:
    """Returns a 2-layer random BertModel (hidden 32, 4 heads, vocab 64) in eval mode."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return BertModel(config).to(dtype).eval()


def randomize_adapters(model: torch.nn.Module, seed: int = 1, std: float = 0.2) -> None:
    """Gives every trainable parameter a random non-trivial value (B ≠ 0, Λ ≠ I, ...)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)


def adapted(method: str, base=None, seed: int = 1, **overrides):
    """Returns a deep copy of `base` (default: tiny Llama) with `method` adapters holding random values."""
    model = copy.deepcopy(base if base is not None else tiny_llama())
    apply_adapters(model, make_config(method, **overrides))
    randomize_adapters(model, seed=seed)
    return model


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(1234)


# --- training fixtures: a tiny encoder on disk (real MiniLM tokenizer, random 2-layer BERT) and tiny GLUE tsvs --

SMALL_GLUE_TASKS = ("cola", "sst2", "mrpc", "stsb", "rte")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_encoder_no_dropout_dir(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder-no-dropout"), dropout=0.0)


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))
