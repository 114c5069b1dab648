"""Multi-task GLUE: a shared encoder with adapters, one head per task, every task trained jointly."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from torch import nn
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer

from ..metrics import glue_average, glue_metrics, task_score
from ..models import ModelConfig, MultiTaskClassifier, load_encoder, load_tokenizer
from .base import Benchmark, mix_tasks
from .glue_data import GLUE_TASKS, glue_task, load_glue_split, missing_glue_files

# Evaluation subsets are drawn with a fixed seed so that every run (method, seed) is scored on the same rows.
EVAL_SUBSAMPLE_SEED = 0


class GlueBenchmark(Benchmark):
    """GLUE tasks trained jointly; task id = position in `tasks` (default order CoLA, SST-2, MRPC, QQP, STS-B,
    MNLI, QNLI, RTE). Evaluated on the dev sets (MNLI matched and mismatched) with the usual metrics."""

    def __init__(
        self,
        name: str = "glue",
        tasks: Sequence[str] = GLUE_TASKS,
        data_dir: str | Path | None = None,
        task_dirs: Mapping[str, str] | None = None,
        max_length: int = 128,
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
        if len(set(self.tasks)) != len(self.tasks) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty list without repeats, got {list(tasks)}")
        for mapping_name, mapping in (("task_dirs", task_dirs or {}), ("task_weights", task_weights or {})):
            unknown = sorted(set(mapping) - set(self.tasks))
            if unknown:
                raise ValueError(f"{mapping_name} names task(s) {unknown} that are not in tasks {self.tasks}")
        if data_dir is not None and (missing := missing_glue_files(self.tasks, data_dir, task_dirs)):
            raise FileNotFoundError(
                f"the local GLUE copy data_dir={data_dir} lacks {len(missing)} file(s) of tasks {self.tasks}: "
                f"{', '.join(missing)}. Complete it (GLUE download script layout <TASK>/train.tsv, dev.tsv; MNLI "
                f"dev_matched.tsv, dev_mismatched.tsv), choose tasks it has (benchmark.tasks=[...]), or load from the "
                f"Hugging Face hub with paths.data_dir=null (unset MTLLORA_DATA_DIR)."
            )
        self.data_dir = data_dir
        self.task_dirs = dict(task_dirs or {})
        self.max_length = max_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.mixing = mixing
        self.mixing_temperature = mixing_temperature
        self.loss_balance = loss_balance
        self.task_weights = [float((task_weights or {}).get(t, 1.0)) for t in self.tasks]
        self.seed = seed

    @property
    def trainable(self) -> list[str]:
        return [r"^heads\."]

    def build_model(self, model_cfg: ModelConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        model = MultiTaskClassifier(
            load_encoder(model_cfg),
            num_labels=[glue_task(t).num_labels for t in self.tasks],
            pooling=model_cfg.pooling,
            head=model_cfg.head,
            loss_balance=self.loss_balance,
            task_weights=self.task_weights,
        )
        return model, load_tokenizer(model_cfg)

    def _load(self, task: str, split: str, cap: int | None, seed: int) -> Dataset:
        dataset = load_glue_split(task, split, self.data_dir, self.task_dirs.get(task))
        if cap is not None and cap < len(dataset):
            dataset = dataset.select(np.random.default_rng(seed).permutation(len(dataset))[:cap])
        return dataset

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
            output = trainer.predict(dataset, metric_key_prefix=key)
            num_labels = glue_task(task).num_labels
            logits = np.asarray(output.predictions)[:, :num_labels]
            predictions = logits[:, 0] if num_labels == 1 else logits.argmax(axis=-1)
            results[key] = glue_metrics(task, predictions, output.label_ids)
        return results

    def task_score(self, metrics: Mapping[str, float]) -> float:
        return task_score(metrics)

    def average(self, results: Mapping[str, Mapping[str, float]]) -> float:
        return glue_average(results)
