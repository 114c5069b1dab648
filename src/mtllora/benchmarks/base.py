"""The interface between the trainer and a benchmark, and what benchmarks share (task mixing).

The trainer knows nothing about any benchmark: it instantiates the `benchmark` config node, asks it for a model,
a training set with a `task_ids` column and a collator, trains, then hands it the trainer to evaluate.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from datasets import Dataset, concatenate_datasets
from torch import nn
from torch.utils.data import Sampler
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer

from ..models import ModelConfig

MIXINGS = ("proportional", "temperature", "uniform")


@dataclasses.dataclass(frozen=True)
class ExportLayout:
    """One task of a benchmark's model as a standard Hugging Face model, which `mtllora.export` writes.

    `rename` maps a parameter or module path of the benchmark's model to its path in the standard model (None: it
    has no place there, e.g. another task's head); `standalone` turns the benchmark's model, adapters merged for the
    task, into the standard model; `config` is that model's config; `peft_task_type` is PEFT's task type for it.
    """

    auto_class_name: str
    config: PretrainedConfig
    rename: Callable[[str], str | None]
    standalone: Callable[[nn.Module], PreTrainedModel]
    peft_task_type: str | None = None


def same_model_layout(model: PreTrainedModel, auto_class_name: str, peft_task_type: str) -> ExportLayout:
    """Returns the layout of a benchmark whose model already is a standard Hugging Face model (a causal LM)."""
    return ExportLayout(auto_class_name, model.config, lambda path: path, lambda merged: merged, peft_task_type)


class Benchmark(abc.ABC):
    """A multi-task benchmark: task i of `tasks` has task id i."""

    name: str
    tasks: list[str]
    # True when each task has its own head, so that even a task-agnostic adapter exports one model per task.
    task_heads: bool = False
    # How the tables (`mtllora.tables`) name its eval sets and their metrics, read from the class (no data needed);
    # eval sets in this order when the tables combine single-task runs. A key not listed is shown as it is.
    task_labels: ClassVar[Mapping[str, str]] = {}
    metric_labels: ClassVar[Mapping[str, str]] = {}

    @property
    def trainable(self) -> list[str]:
        """Regexes of base-model parameters trained with the adapters (e.g. task heads)."""
        return []

    @abc.abstractmethod
    def check_inputs(self) -> None:
        """Resolves and validates every data file this run reads, raising with the file and what was expected.

        The trainer calls it before any model loads, so a missing or partial data set fails in seconds instead of
        after a 7B model has loaded."""

    def hub_datasets(self) -> list[str]:
        """Returns the Hugging Face hub dataset ids this run downloads (`mtllora.preflight` checks access first)."""
        return []

    def data_files(self) -> list[Path]:
        """Returns the local files (or folders, e.g. one feature file per image) this run reads its data from, after
        `check_inputs`: their content fingerprint identifies the run (`mtllora.rundir.data_fingerprint`), so that a
        rerun on other data is refused. [] for data from the Hugging Face hub (`hub_datasets`, named by the config)."""
        return []

    def data_facts(self) -> dict[str, Any]:
        """Returns facts about the data this run used that its results depend on (e.g. a partial train set), for
        metrics.json's `data` (left out when empty)."""
        return {}

    @classmethod
    def for_serving(cls, config: Mapping[str, Any], tasks: Sequence[str] | None = None) -> Benchmark:
        """Returns the benchmark of a trained run as `mtllora.export` and `mtllora.predict` use it (model, prompts,
        answer parsing, export layout), built from the run's benchmark `config` (the node without `_target_`) with
        `tasks` (None: the config's), without its data: serving a trained adapter needs the model and the task
        names only. The default is the constructor, for benchmarks whose constructor reads no data; one that needs
        its data there overrides this (training never calls it, so its data checks stay as they are)."""
        return cls(**config) if tasks is None else cls(**{**config, "tasks": list(tasks)})

    @abc.abstractmethod
    def build_model(
        self, model_cfg: ModelConfig, with_tokenizer: bool = True
    ) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
        """Returns (model whose forward takes the collated batch incl. `task_ids`, tokenizer); `with_tokenizer=False`
        returns None for the tokenizer, without loading it (an adapter export needs the weights only)."""

    @abc.abstractmethod
    def train_dataset(self, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        """Returns the tokenised, task-mixed training set; it has a `task_ids` column."""

    def train_batch_sampler(
        self, dataset: Dataset, batch_size: int, world_size: int, rank: int, seed: int
    ) -> Sampler[list[int]] | None:
        """Returns this rank's batches of `dataset` indices, already split across the `world_size` ranks and
        reshuffled by its `set_epoch(epoch)`, when the benchmark batches its own way (e.g. one task per batch, as the
        official image-text loader); None: the Trainer's shuffled batches of `batch_size` (the per-device batch)."""
        return None

    @abc.abstractmethod
    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        """Returns the function that pads a list of examples into a batch."""

    @abc.abstractmethod
    def evaluate(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
        """Returns {eval set: {metric: value}} computed with the trained model."""

    @abc.abstractmethod
    def task_score(self, metrics: Mapping[str, float]) -> float:
        """Returns one number (0–100) for an eval set's metrics, as the benchmark's tables report it."""

    @classmethod
    def score_average(cls, task_scores: Mapping[str, float]) -> float:
        """Returns the benchmark's headline average (×100) of its eval sets' task scores (`task_score`): their
        unweighted mean, unless the benchmark's convention says otherwise (GLUE counts MNLI once). A class method, so
        that the tables recompute it from stored scores (single-task runs combined) exactly as a run computes it."""
        return float(np.mean(list(task_scores.values())))

    def average(self, results: Mapping[str, Mapping[str, float]]) -> float:
        """Returns the benchmark's headline average over the eval sets: `score_average` of their task scores."""
        return self.score_average({key: self.task_score(metrics) for key, metrics in results.items()})

    def export_layout(self, model: nn.Module, task_id: int) -> ExportLayout:
        """Returns how task `task_id` of this benchmark's model maps onto a standard Hugging Face model (for
        `mtllora.export`); raises when it has no such form."""
        raise ValueError(f"{self.name} models have no standard Hugging Face form to export to")

    def input_problem(self, task: str, record: Mapping[str, Any]) -> str | None:
        """Returns what keeps `record` from being an input record of `task` for `predict`, or None."""
        return None

    def predict(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Returns one prediction row per input record of `task` (as the benchmark's evaluation computes it), for
        `mtllora.predict`; raises when the benchmark has no prediction from raw inputs."""
        raise ValueError(f"{self.name} has no prediction from raw input records")


def read_text(path: str | os.PathLike[str]) -> str:
    """Returns the text of a UTF-8 data file as it is (a byte-order mark included); bytes that are not UTF-8 are an
    error naming the file, the line and the byte offset (Python's own error names neither file nor line)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}: line {line} (byte offset {err.start}): {data[err.start : err.end]!r} is not valid UTF-8; "
            f"expected a UTF-8 text file (re-save it as UTF-8)"
        ) from None


def mix_tasks(
    datasets: Sequence[Dataset], strategy: str = "proportional", temperature: float = 2.0, seed: int = 0
) -> Dataset:
    """Returns one training set drawn from the per-task sets (same total size as their sum).

    proportional: every example once (the official code concatenates all tasks);
    temperature: task t gets a share ∝ n_t^(1/T) of the examples (T=1 is proportional, T→∞ uniform);
    uniform: equal shares. Within a task, examples are taken in a seeded random order, cycling when a task
    is oversampled. The draw happens once per run; the Trainer shuffles the result every epoch.
    """
    if strategy not in MIXINGS:
        raise ValueError(f"unknown mixing {strategy!r}; expected one of {MIXINGS}")
    if strategy == "proportional":
        return concatenate_datasets(list(datasets))
    if strategy == "temperature" and not temperature > 0:
        raise ValueError(f"mixing_temperature must be > 0, got {temperature}")
    sizes = np.array([len(d) for d in datasets], dtype=float)
    weights = np.ones_like(sizes) if strategy == "uniform" else sizes ** (1.0 / temperature)
    total = sum(len(d) for d in datasets)
    counts = _largest_remainder(weights / weights.sum() * total, total)
    rng = np.random.default_rng(seed)
    parts = []
    for dataset, count in zip(datasets, counts, strict=True):
        order = rng.permutation(len(dataset))
        parts.append(dataset.select(np.resize(order, count)))
    return concatenate_datasets(parts)


def seeded_subsample(size: int, cap: int | None, seed: int, *, in_drawn_order: bool = False) -> np.ndarray | None:
    """Returns the positions of `cap` of `size` items drawn with `seed` (the head of a seeded permutation), in the
    items' own order, or in the order drawn (`in_drawn_order`); None when `cap` is None or keeps every item."""
    if cap is None or cap >= size:
        return None
    drawn = np.random.default_rng(seed).permutation(size)[:cap]
    return drawn if in_drawn_order else np.sort(drawn)


def _largest_remainder(quotas: np.ndarray, total: int) -> list[int]:
    """Rounds quotas (summing to `total`) to integers with the same sum, largest remainders first."""
    counts = np.floor(quotas).astype(int)
    for i in np.argsort(-(quotas - counts))[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()
