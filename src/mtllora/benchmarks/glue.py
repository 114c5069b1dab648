"""Multi-task GLUE: a shared encoder with adapters, one head per task (`MultiTaskClassifier`), every task trained
jointly."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProgressCallback,
    Trainer,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from ..adapters import check_task_id_range
from ..metrics import glue_metrics, glue_score_average, task_score
from ..models import ModelConfig, load_pretrained, load_tokenizer
from .base import Benchmark, ExportLayout, mix_tasks, seeded_subsample
from .glue_data import (
    GLUE_HUB_ID,
    GLUE_TASKS,
    glue_files,
    glue_input_columns,
    glue_task,
    load_glue_split,
    missing_glue_files,
)

POOLINGS = ("cls", "mean")
HEADS = ("linear", "mlp")
LOSS_BALANCES = ("none", "task_mean")
# Evaluation subsets are drawn with a fixed seed so that every run (method, seed) is scored on the same rows.
EVAL_SUBSAMPLE_SEED = 0


def _name_prediction_bar(trainer: Trainer, rows: int, name: str) -> None:
    """Opens HF's next prediction progress bar under `name` (HF's own carries none, so five tasks' bars look the
    same): its ProgressCallback updates a bar it finds open, and closes it when the prediction ends."""
    progress = next((c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)), None)
    if progress is None or not trainer.is_world_process_zero() or progress.prediction_bar is not None:
        return
    batches = math.ceil(math.ceil(rows / trainer.args.eval_batch_size) / trainer.args.world_size)  # this rank's
    progress.prediction_bar = tqdm(total=batches, desc=name, leave=progress.training_bar is None, dynamic_ncols=True)


class GlueBenchmark(Benchmark):
    """GLUE tasks trained jointly; task id = position in `tasks` (default order CoLA, SST-2, MRPC, QQP, STS-B,
    MNLI, QNLI, RTE). Evaluated on the dev sets (MNLI matched and mismatched) with the usual metrics."""

    task_heads = True
    task_labels: ClassVar[Mapping[str, str]] = {
        "cola": "CoLA",
        "sst2": "SST-2",
        "mrpc": "MRPC",
        "qqp": "QQP",
        "stsb": "STS-B",
        "mnli_m": "MNLI-m",
        "mnli_mm": "MNLI-mm",
        "qnli": "QNLI",
        "rte": "RTE",
    }
    metric_labels: ClassVar[Mapping[str, str]] = {
        "matthews_correlation": "MCC",
        "accuracy": "acc",
        "f1": "F1",
        "pearson": "Pearson",
        "spearmanr": "Spearman",
    }

    def __init__(
        self,
        name: str = "glue",
        tasks: Sequence[str] = GLUE_TASKS,
        data_dir: str | Path | None = None,
        task_dirs: Mapping[str, str] | None = None,
        max_length: int = 128,
        pooling: str = "cls",
        head: str = "mlp",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        mixing: str = "proportional",
        mixing_temperature: float = 2.0,
        loss_balance: str = "none",
        task_weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.tasks = [glue_task(t).name for t in tasks]  # raises on an unknown task name
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty list without repeats, got {list(tasks)}")
        for mapping_name, mapping in (("task_dirs", task_dirs or {}), ("task_weights", task_weights or {})):
            unknown = sorted(set(mapping) - set(self.tasks))
            if unknown:
                raise ValueError(f"{mapping_name} names task(s) {unknown} that are not in tasks {self.tasks}")
        self.data_dir = data_dir
        self.task_dirs = dict(task_dirs or {})
        self.max_length = max_length
        self.pooling = pooling
        self.head = head
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.mixing = mixing
        self.mixing_temperature = mixing_temperature
        self.loss_balance = loss_balance
        self.task_weights = [float((task_weights or {}).get(t, 1.0)) for t in self.tasks]
        self.seed = seed
        self._splits: dict[tuple[str, str], Dataset] = {}

    @property
    def trainable(self) -> list[str]:
        return [r"^heads\."]

    def check_inputs(self) -> None:
        """Checks that a local GLUE copy has every train and dev file of the tasks, then reads each one (kept for
        training and evaluation, so nothing is read twice): one error lists every file without data rows, with
        bytes that are not UTF-8, or with a malformed line or label (file and line)."""
        if self.data_dir is None:
            return  # the hub's copy is complete
        if missing := missing_glue_files(self.tasks, self.data_dir, self.task_dirs):
            raise FileNotFoundError(
                f"the local GLUE copy data_dir={self.data_dir} lacks {len(missing)} file(s) of tasks {self.tasks}: "
                f"{', '.join(missing)}. Complete it (GLUE download script layout <TASK>/train.tsv, dev.tsv; MNLI "
                f"dev_matched.tsv, dev_mismatched.tsv), choose tasks it has (benchmark.tasks=[...]), or load from the "
                f"Hugging Face hub with paths.data_dir=null (unset MTLLORA_DATA_DIR)."
            )
        problems = []
        for task in self.tasks:
            for split in ("train", *glue_task(task).eval_splits.values()):
                try:
                    self._read(task, split)
                except ValueError as err:
                    problems.append(str(err))
        if problems:
            raise ValueError(
                f"the local GLUE copy data_dir={self.data_dir} has {len(problems)} unusable file(s) of tasks "
                f"{self.tasks}:\n" + "".join(f"  - {problem}\n" for problem in problems)
            )

    def hub_datasets(self) -> list[str]:
        return [] if self.data_dir is not None else [GLUE_HUB_ID]

    def data_files(self) -> list[Path]:
        return [] if self.data_dir is None else glue_files(self.tasks, self.data_dir, self.task_dirs)

    def build_model(
        self, model_cfg: ModelConfig, with_tokenizer: bool = True
    ) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
        model = MultiTaskClassifier(
            load_pretrained(model_cfg, AutoModel),
            num_labels=[glue_task(t).num_labels for t in self.tasks],
            pooling=self.pooling,
            head=self.head,
            loss_balance=self.loss_balance,
            task_weights=self.task_weights,
        )
        return model, load_tokenizer(model_cfg) if with_tokenizer else None

    def _read(self, task: str, split: str) -> Dataset:
        """Returns a split as read once per run (`check_inputs` reads every split before the model loads)."""
        if (task, split) not in self._splits:
            self._splits[task, split] = load_glue_split(task, split, self.data_dir, self.task_dirs.get(task))
        return self._splits[task, split]

    def _load(self, task: str, split: str, cap: int | None, seed: int) -> Dataset:
        dataset = self._read(task, split)
        # In the order drawn, as GLUE's recorded runs took it: the rows' order reaches the Trainer's seeded shuffle.
        keep = seeded_subsample(len(dataset), cap, seed, in_drawn_order=True)
        return dataset if keep is None else dataset.select(keep)

    def _tokenize(self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task_id: int) -> Dataset:
        pair = dataset[0]["text_b"] is not None if len(dataset) else False

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
            encoded = tokenizer(*texts, truncation=True, max_length=self.max_length)
            # One float label column for every task (class ids are exact in float32); the model casts per task.
            encoded["labels"] = [float(label) for label in batch["label"]]
            encoded["task_ids"] = [task_id] * len(batch["label"])
            return encoded

        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenize task {task_id}")

    def train_dataset(self, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        per_task = [
            self._tokenize(self._load(task, "train", self.max_train_samples, self.seed), tokenizer, task_id)
            for task_id, task in enumerate(self.tasks)
        ]
        return mix_tasks(per_task, self.mixing, self.mixing_temperature, seed=self.seed)

    def eval_datasets(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, tuple[str, Dataset]]:
        """Returns {eval key (e.g. `mnli_m`): (task, tokenised dev set)} in task order. Each set is sorted by
        length so that batches carry little padding; the metrics do not depend on the order."""
        sets = {}
        for task_id, task in enumerate(self.tasks):
            for key, split in glue_task(task).eval_splits.items():
                raw = self._load(task, split, self.max_eval_samples, EVAL_SUBSAMPLE_SEED)
                tokenized = self._tokenize(raw, tokenizer, task_id)
                lengths = [len(ids) for ids in tokenized["input_ids"]]
                sets[key] = (task, tokenized.select(np.argsort(lengths, kind="stable")))
        return sets

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return DataCollatorWithPadding(tokenizer)

    def evaluate(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
        results = {}
        for key, (task, dataset) in self.eval_datasets(tokenizer).items():
            _name_prediction_bar(trainer, len(dataset), f"evaluate {key}")
            output = trainer.predict(dataset, metric_key_prefix=key)
            results[key] = glue_metrics(task, task_predictions(task, output.predictions), output.label_ids)
        return results

    def input_problem(self, task: str, record: Mapping[str, Any]) -> str | None:
        """Returns what keeps `record` from being an input of `task` (its hub text fields, e.g. sentence1 and
        sentence2), or None."""
        for column in filter(None, glue_input_columns(task)):
            if not isinstance(record.get(column), str):
                return f"{task} needs a string {column!r} (fields {[c for c in glue_input_columns(task) if c]})"
        return None

    def predict(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        task: str,
        records: list[dict[str, Any]],
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """Returns {"prediction": label name, or the score for STS-B} per record, computed as `evaluate` does
        (length-sorted batches, the task's head)."""
        first, second = glue_input_columns(task)
        rows = Dataset.from_dict(
            {
                "text_a": [r[first] for r in records],
                "text_b": [r[second] for r in records] if second else [None] * len(records),
                "label": [0.0] * len(records),
            }
        )
        dataset = self._tokenize(rows, tokenizer, self.tasks.index(task)).remove_columns("labels")
        order = np.argsort([len(ids) for ids in dataset["input_ids"]], kind="stable")
        collate = self.collator(tokenizer)
        device = next(model.parameters()).device
        logits = np.zeros((len(records), max(glue_task(t).num_labels for t in self.tasks)), dtype=np.float32)
        model.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=f"predict {task}"):
                rows_here = order[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate([dataset[int(i)] for i in rows_here]).items()}
                logits[rows_here] = model(**batch).logits.float().cpu().numpy()
        labels = glue_task(task).label_names
        values = task_predictions(task, logits)
        return [{"prediction": float(v) if not labels else labels[int(v)]} for v in values]

    def export_layout(self, model: nn.Module, task_id: int) -> ExportLayout:
        """Task t as `AutoModelForSequenceClassification`: the encoder, and head t as its classification head. Exact
        for first-token pooling with the mlp head (dense + tanh + linear), which BERT's pooler + classifier and
        RoBERTa's classification head compute; other poolings and heads have no such class."""
        if (self.pooling, self.head) != ("cls", "mlp"):
            raise ValueError(
                f"GLUE heads with pooling={self.pooling!r}, head={self.head!r} have no Hugging Face "
                f"AutoModelForSequenceClassification equivalent (exportable: pooling='cls', head='mlp'); predict "
                f"with the run itself: python -m mtllora.predict RUN_DIR --task ..."
            )
        task = glue_task(self.tasks[task_id])
        config = copy.deepcopy(model.encoder.config)
        config.num_labels = task.num_labels
        config.problem_type = "regression" if task.is_regression else "single_label_classification"
        if task.label_names:
            config.id2label = dict(enumerate(task.label_names))
            config.label2id = {name: i for i, name in enumerate(task.label_names)}
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(config)
        config.architectures = [type(skeleton).__name__]
        prefix, modules = skeleton.base_model_prefix, {name for name, _ in skeleton.named_modules()}
        if {"classifier.dense", "classifier.out_proj"} <= modules:  # RoBERTa family
            dense, out = "classifier.dense", "classifier.out_proj"
        elif {f"{prefix}.pooler.dense", "classifier"} <= modules:  # BERT family
            dense, out = f"{prefix}.pooler.dense", "classifier"
        else:
            raise ValueError(
                f"{type(skeleton).__name__} has neither BERT's pooler + classifier nor RoBERTa's classifier.dense + "
                f"out_proj, so GLUE head {task_id} has no place in it"
            )
        head = f"heads.{task_id}."
        places = {"encoder.pooler": None, "encoder": prefix, f"{head}1": dense, f"{head}4": out}

        def rename(path: str) -> str | None:
            for ours, theirs in places.items():  # the encoder's own pooler is unused: replaced or absent
                if path == ours or path.startswith(ours + "."):
                    return None if theirs is None else theirs + path[len(ours) :]
            return None

        def standalone(merged: nn.Module) -> PreTrainedModel:
            state = {name: v for k, v in merged.state_dict().items() if (name := rename(k)) is not None}
            standard = AutoModelForSequenceClassification.from_config(config).to(next(merged.parameters()).dtype)
            missing, unexpected = standard.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"export of head {task_id}: missing {missing[:3]}, unexpected {unexpected[:3]}")
            return standard.eval()

        return ExportLayout("AutoModelForSequenceClassification", config, rename, standalone, "SEQ_CLS")

    def task_score(self, metrics: Mapping[str, float]) -> float:
        return task_score(metrics)

    @classmethod
    def score_average(cls, task_scores: Mapping[str, float]) -> float:
        return glue_score_average(task_scores)


def task_predictions(task: str, logits: np.ndarray) -> np.ndarray:
    """Returns the predictions of `task` from the model's [rows, max labels] logits: the score (column 0) for a
    regression task, else the arg-max over the task's own label columns."""
    num_labels = glue_task(task).num_labels
    logits = np.asarray(logits)[:, :num_labels]
    return logits[:, 0] if num_labels == 1 else logits.argmax(axis=-1)


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

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """The same under its pre-5.2x name, which older transformers' Trainer calls (5.17's with `every_n_layers`
        and `offload` as well): every keyword goes on to the encoder's method of that name."""
        self.encoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
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
