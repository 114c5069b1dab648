"""Backbones and task heads: a shared encoder with one head per task for multi-task classification."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from .adapters import check_task_id_range

POOLINGS = ("cls", "mean")
HEADS = ("linear", "mlp")
LOSS_BALANCES = ("none", "task_mean")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model/` config group: which pretrained backbone, and how heads read it."""

    name: str
    name_or_path: str
    pooling: str = "cls"
    head: str = "mlp"
    target_modules: Sequence[str] = ()
    max_length: int = 128
    dtype: str = "float32"
    gguf_file: str | None = None

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r} for model {self.name!r}; expected one of {POOLINGS}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r} for model {self.name!r}; expected one of {HEADS}")
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


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Returns the backbone's tokenizer (hub id or local folder, optionally a GGUF file in it)."""
    return AutoTokenizer.from_pretrained(cfg.name_or_path, gguf_file=cfg.gguf_file)


def load_encoder(cfg: ModelConfig) -> nn.Module:
    """Returns the pretrained encoder (AutoModel, no task head) in the configured dtype."""
    return AutoModel.from_pretrained(cfg.name_or_path, dtype=cfg.torch_dtype, gguf_file=cfg.gguf_file)


class MultiTaskClassifier(nn.Module):
    """A shared encoder and one head per task (`heads.<t>`): classification with the task's label count, or
    regression where the count is 1. Each sample goes through its own task's head (`task_ids`)."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: Sequence[int],
        pooling: str = "cls",
        head: str = "mlp",
        loss_balance: str = "none",
        task_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if loss_balance not in LOSS_BALANCES:
            raise ValueError(f"unknown loss_balance {loss_balance!r}; expected one of {LOSS_BALANCES}")
        if task_weights is not None and len(task_weights) != len(num_labels):
            raise ValueError(f"task_weights has {len(task_weights)} entries for {len(num_labels)} tasks")
        self.encoder = encoder
        self.num_labels = list(num_labels)
        self.pooling = pooling
        self.loss_balance = loss_balance
        self.task_weights = list(task_weights) if task_weights is not None else [1.0] * len(num_labels)
        hidden = encoder.config.hidden_size
        p = getattr(encoder.config, "hidden_dropout_prob", 0.1)
        dtype = next(encoder.parameters()).dtype
        self.heads = nn.ModuleList(_head(head, hidden, n, p).to(dtype) for n in self.num_labels)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Checkpoints the encoder's layers (what HF Trainer calls for `gradient_checkpointing=true`); the heads are
        too small to be worth recomputing."""
        self.encoder.activation_checkpointing_enable(
            activation_checkpointing_kwargs=activation_checkpointing_kwargs,
            every_n_layers=every_n_layers,
            offload=offload,
        )

    @property
    def is_activation_checkpointing(self) -> bool:
        """Whether the encoder recomputes its activations in backward (HF Trainer reads it to configure DDP)."""
        return self.encoder.is_activation_checkpointing

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Returns one vector per sequence: the first token's state, or the mean over real tokens."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        task_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Logits are [batch, max labels] (a task's first `num_labels[t]` columns; column 0 for regression);
        the loss is each sample's loss under its own task, combined as `loss_balance` says."""
        check_task_id_range(task_ids, len(self.heads), f"{len(self.heads)} task heads")
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        # Every head sees every row and the sample's own head is picked by indexing: heads of tasks absent from
        # the batch then get zero gradients rather than none, so all ranks reduce the same gradients (ZeRO/DDP).
        width = max(self.num_labels)
        stacked = torch.stack(
            [F.pad(head(pooled), (0, width - n)) for head, n in zip(self.heads, self.num_labels, strict=True)]
        )
        logits = stacked[task_ids, torch.arange(len(task_ids), device=task_ids.device)]
        if labels is None:
            return SequenceClassifierOutput(logits=logits)
        total, task_means = logits.new_zeros((), dtype=torch.float32), []
        for task, n in enumerate(self.num_labels):
            rows = (task_ids == task).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            if n == 1:
                loss = F.mse_loss(logits[rows, 0].float(), labels[rows].float(), reduction="none")
            else:
                loss = F.cross_entropy(logits[rows, :n].float(), labels[rows].long(), reduction="none")
            loss = loss * self.task_weights[task]
            total = total + loss.sum()
            task_means.append(loss.mean())
        loss = total / len(task_ids) if self.loss_balance == "none" else torch.stack(task_means).mean()
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _head(kind: str, hidden: int, num_labels: int, dropout: float) -> nn.Sequential:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_labels))
    # The BERT/RoBERTa classification head: dense + tanh on the pooled state, then the output projection.
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, num_labels)
    )
