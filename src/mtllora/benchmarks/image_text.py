"""Image-text understanding (docs/image-text.md): VL-BART trained jointly on VQAv2, GQA, NLVR2 and COCO Caption, the
unified multi-task setup of VL-Adapter and DoRA, scored by generation.

Data and features are read in the VL-T5 formats (`image_text_data`); every example carries its image ids and its
region features are read from HDF5 when a batch is built (never all at once). Inputs are the task prompt plus the
question or statement (`--use_tasks_prompts`); NLVR2 examples see both images' tokens (72 with 36 per image) and the
batch pads visual tokens with a mask. Evaluation generates an answer per example under its task id
(`generate_image_text`) and scores it: VQAv2 accuracy over the 10 annotators' answers (VL-T5's evaluator, the
paper's; the `label` score dict when the raw answers are not there), GQA and NLVR2 exact match, COCO CIDEr-D and
BLEU-4. The average is the VL-Adapter/DoRA tables' mean of VQAv2, GQA, NLVR2 and CIDEr (×100).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase, Trainer

from ..metrics import caption_metrics, exact_match_accuracy, vqa_accuracy, vqa_score_accuracy
from ..models import ModelConfig, load_pretrained, load_tokenizer
from ..vl_bart import VLBartForConditionalGeneration
from .base import Benchmark, mix_tasks, seeded_subsample
from .generation import eval_merged, generate_image_text, needs_synced_gpus, pad_visual_tokens, write_jsonl
from .image_text_data import (
    EXPECTED_LAYOUT,
    OFFICIAL_SPLITS,
    TASKS,
    ImageFeatures,
    ImageTextRecord,
    annotation_file,
    image_text_root,
    input_text,
    load_task,
    official_feature_paths,
    open_h5,
    sample_target,
)

SCORE_KEYS = {"vqa": "accuracy", "gqa": "accuracy", "nlvr": "accuracy", "caption": "CIDEr"}
# multitask.py derives each task's batch from --batch_size: GQA int(B * 100 / 60), NLVR2 int(B * 20 / 60), caption
# int(B * 50 / 60), VQA B.
OFFICIAL_TASK_BATCH_SCALE = {"vqa": "1", "gqa": "100/60", "nlvr": "20/60", "caption": "50/60"}
# A per-task setting: one value for every task or {task: value}.
PerTask = int | None | Mapping[str, int | None]


class ImageTextBenchmark(Benchmark):
    """VQAv2, GQA, NLVR2 and COCO Caption trained jointly on VL-BART; task i of `tasks` has task id i (official
    order vqa 0, gqa 1, nlvr 2, caption 3).

    `data_dir`: a VL-T5 `datasets/` folder, or a data root holding one as `image_text/`. `features`: {task: feature
    files or folders} or one list for every task; null takes the official CLIP-RN101 layout under data_dir
    (`official_feature_paths`). `n_boxes` pools a larger grid to that many regions (VL-Adapter's 7×7 → 36);
    `zero_boxes` feeds zero boxes, as the official CLIP-feature runs do. `trainable`: regexes of base parameters
    trained with the adapters (the recipe's `--unfreeze_bias --unfreeze_layer_norms` and the visual embedding).
    `max_text_length`, `max_target_length` (tokens, special tokens included; None: no limit) and `max_new_tokens`
    are one value or {task: value}. `task_batches`: every training batch holds one task, of
    floor(per-device batch × `task_batch_scale[task]`) examples (`train_batch_sampler`), as the official
    multitask loader; false: mixed batches of the Trainer's size."""

    task_labels: ClassVar[Mapping[str, str]] = {"vqa": "VQAv2", "gqa": "GQA", "nlvr": "NLVR2", "caption": "COCO Cap."}
    metric_labels: ClassVar[Mapping[str, str]] = {"accuracy": "acc", "CIDEr": "CIDEr", "BLEU-4": "BLEU-4"}

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        tasks: Sequence[str] = TASKS,
        features: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
        name: str = "image_text",
        splits: Mapping[str, Mapping[str, str]] | None = None,
        eval_split: str = "test",
        n_boxes: int | None = 36,
        zero_boxes: bool = True,
        use_task_prompts: bool = True,
        max_text_length: PerTask = 40,
        max_target_length: PerTask = 40,
        trainable: Sequence[str] = (r"visual_embedding", r"\.bias$", r"layer_?norm"),
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_batch_size: int = 64,
        max_new_tokens: PerTask = 20,
        num_beams: int = 1,
        eval_merged: bool = False,
        vqa_evaluator: str = "vl-t5",
        task_batches: bool = False,
        task_batch_scale: Mapping[str, int | float | str] | None = None,
        seed: int = 0,
    ) -> None:
        if data_dir is None:
            raise ValueError(
                "image_text needs a VL-T5 datasets/ folder (benchmark.data_dir): the real data (docs/image-text.md), "
                "given as benchmark.data_dir or MTLLORA_DATA_DIR (a root holding image_text/, or that folder), or the "
                "synthetic set of `python -m mtllora.benchmarks.image_text_synthetic`"
            )
        self.name = name
        self.tasks = list(tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names from {list(TASKS)}, got {list(tasks)}")
        self.data_dir = image_text_root(data_dir)
        self.splits = {task: {**OFFICIAL_SPLITS[task], **dict((splits or {}).get(task, {}))} for task in self.tasks}
        if eval_split not in ("validation", "test"):
            raise ValueError(f"eval_split must be 'validation' or 'test', got {eval_split!r}")
        self.eval_split = eval_split
        self.feature_paths = self._feature_paths(features)
        self.n_boxes = n_boxes
        self._features: dict[str, ImageFeatures] | None = None
        self.zero_boxes = zero_boxes
        self.use_task_prompts = use_task_prompts
        self.max_text_length = self._per_task(max_text_length, "max_text_length")
        self.max_target_length = self._per_task(max_target_length, "max_target_length")
        self._trainable = list(trainable)
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.eval_batch_size = eval_batch_size
        self.max_new_tokens = self._per_task(max_new_tokens, "max_new_tokens")
        if any(n is None or n < 1 for n in self.max_new_tokens.values()):
            raise ValueError(f"benchmark.max_new_tokens must be >= 1 for every task, got {self.max_new_tokens}")
        self.num_beams = num_beams
        if not isinstance(eval_merged, bool):
            raise ValueError(f"benchmark.eval_merged must be true or false, got {eval_merged!r}")
        self.eval_merged = eval_merged
        self.vqa_evaluator = vqa_evaluator
        self.task_batches = task_batches
        scale = self._per_task(task_batch_scale or OFFICIAL_TASK_BATCH_SCALE, "task_batch_scale")
        self.task_batch_scale = {task: _fraction(value, f"task_batch_scale.{task}") for task, value in scale.items()}
        self.seed = seed

    def _per_task(self, value: Any, name: str) -> dict[str, Any]:
        """Returns {task: value} of a setting given once for every task or per task (for every task of the run;
        other known tasks may be there too)."""
        if not isinstance(value, Mapping):
            return dict.fromkeys(self.tasks, value)
        missing, unknown = [t for t in self.tasks if t not in value], [t for t in value if t not in TASKS]
        if missing or unknown:
            raise ValueError(
                f"benchmark.{name} must give one value or one per task of {self.tasks}; missing {missing}, "
                f"unknown {unknown} in {dict(value)}"
            )
        return {task: value[task] for task in self.tasks}

    def _read_splits(self, task: str) -> list[str]:
        """Returns the single splits (comma-joined ones taken apart) of `task` that a run reads: train and eval."""
        joined = ",".join(self.splits[task][split] for split in ("train", self.eval_split))
        return list(dict.fromkeys(part.strip() for part in joined.split(",")))

    def _feature_paths(self, features: Any) -> dict[str, list[Path]]:
        """Each task's feature sources: the configured paths (relative ones under data_dir) or the official ones
        of the splits the run reads."""
        sources = {}
        for task in self.tasks:
            if features is None:
                paths: Sequence[Any] = official_feature_paths(task, ",".join(self._read_splits(task)), self.data_dir)
            else:
                paths = features.get(task, ()) if isinstance(features, Mapping) else features
                if not paths:
                    raise ValueError(f"benchmark.features names no feature file for task {task!r}")
            sources[task] = [self.data_dir / p for p in paths]
        return sources

    @property
    def features(self) -> dict[str, ImageFeatures]:
        """One feature store per task, opened on first use (after `check_inputs` has named anything missing); every
        image must have the width of the first task's first image, which the model's visual embedding takes."""
        if self._features is None:
            stores = {task: ImageFeatures(paths, n_boxes=self.n_boxes) for task, paths in self.feature_paths.items()}
            dim = stores[self.tasks[0]].expected_dim()
            for store in stores.values():
                store.dim = dim
            self._features = stores
        return self._features

    def check_inputs(self) -> None:
        """Raises one FileNotFoundError listing every annotation file and feature file or folder that the run's
        tasks and splits (train and eval) need and data_dir lacks, with the expected layout."""
        needed = [
            path
            for task in self.tasks
            for path in (
                *(annotation_file(task, split, self.data_dir) for split in self._read_splits(task)),
                *self.feature_paths[task],
            )
        ]
        missing = [str(path) for path in dict.fromkeys(needed) if not path.exists()]
        if missing:
            raise FileNotFoundError(
                f"image_text: data_dir {self.data_dir} lacks {len(missing)} file(s) or folder(s) of tasks "
                f"{self.tasks}: {', '.join(missing)}. Expected a VL-T5 datasets/ folder (or a data "
                f"root holding it as image_text/): {EXPECTED_LAYOUT}"
            )
        unreadable = []
        for path in dict.fromkeys(path for paths in self.feature_paths.values() for path in paths):
            if path.is_file():  # opening reads the header only; a truncated file fails here, not mid-training
                try:
                    open_h5(path).close()
                except OSError as err:
                    unreadable.append(str(err))
        if unreadable:
            raise OSError(f"image_text: {len(unreadable)} unreadable feature file(s): {'; '.join(unreadable)}")

    def data_files(self) -> list[Path]:
        """The JSON files beside each annotation file the run reads (its splits, and the answer vocabularies and VQA
        annotations that loading reads when present), and the feature files or folders."""
        read = [annotation_file(task, split, self.data_dir) for task in self.tasks for split in self._read_splits(task)]
        folders = dict.fromkeys(path.parent for path in read)
        features = [path for task in self.tasks for path in self.feature_paths[task]]
        return [*(f for folder in folders for f in sorted(folder.glob("*.json"))), *dict.fromkeys(features)]

    @property
    def trainable(self) -> list[str]:
        return self._trainable

    # --- data -----------------------------------------------------------------------------------------------

    def records(self, task: str, split: str, cap: int | None, seed: int) -> list[ImageTextRecord]:
        """Returns a task's records of `split` ("train", "validation" or "test"; a seeded subsample of `cap`), after
        checking up front that every image has features."""
        loaded = load_task(task, self.splits[task][split], self.data_dir)
        records = loaded.records
        if (keep := seeded_subsample(len(records), cap, seed)) is not None:
            records = [records[i] for i in keep]
        self.features[task].check([i for r in records for i in r.image_ids], f"{task} {split}")
        return records

    def _encode(self, tokenizer: PreTrainedTokenizerBase, record: ImageTextRecord) -> list[int]:
        """Returns a record's input ids, cut to its task's `max_text_length` (None: whole)."""
        limit = self.max_text_length[record.task]
        text = input_text(record, self.use_task_prompts)
        return tokenizer(text, truncation=limit is not None, max_length=limit)["input_ids"]

    def _eval_text(self, tokenizer: PreTrainedTokenizerBase, record: ImageTextRecord) -> str:
        """Returns a record's input text as training feeds it: a text longer than its task's `max_text_length` is
        cut to the decoded first tokens (generation tokenises text itself); shorter texts stay as they are."""
        text = input_text(record, self.use_task_prompts)
        ids = self._encode(tokenizer, record)
        if len(ids) < len(tokenizer(text)["input_ids"]):
            return tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def train_dataset(self, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        per_task = []
        for task_id, task in enumerate(self.tasks):
            # Targets are drawn once per run (seeded; VL-T5 redraws VQA/GQA answers every epoch).
            rng = np.random.default_rng(self.seed + task_id)
            rows = [
                {
                    "input_ids": self._encode(tokenizer, record),
                    "labels": tokenizer(
                        text_target=sample_target(record, rng),
                        truncation=self.max_target_length[task] is not None,
                        max_length=self.max_target_length[task],
                    )["input_ids"],
                    "task_ids": task_id,
                    "image_ids": list(record.image_ids),
                }
                for record in self.records(task, "train", self.max_train_samples, self.seed + task_id)
            ]
            per_task.append(Dataset.from_list(rows))
        return mix_tasks(per_task, seed=self.seed)

    def train_batch_sampler(
        self, dataset: Dataset, batch_size: int, world_size: int, rank: int, seed: int
    ) -> TaskBatchSampler | None:
        """With `task_batches`, one-task batches of floor(`batch_size` × `task_batch_scale[task]`) examples each
        (the official multitask loader's --batch_size rule), this rank's share; else None (mixed batches)."""
        if not self.task_batches:
            return None
        sizes = {}
        for task_id, task in enumerate(self.tasks):
            sizes[task_id] = math.floor(batch_size * self.task_batch_scale[task])
            if sizes[task_id] < 1:
                raise ValueError(
                    f"task batch of {task} is floor({batch_size} × {self.task_batch_scale[task]}) = 0 examples; raise "
                    f"the per-device batch or benchmark.task_batch_scale.{task}"
                )
        return TaskBatchSampler(dataset["task_ids"], sizes, world_size=world_size, rank=rank, seed=seed)

    def visual_inputs(self, task: str, image_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Returns one example's visual tokens: vis_feats [V, D], vis_pos [V, 4] and img_order_ids [V] (the images'
        tokens concatenated, ids 0, 1, ... per image, as VL-T5 feeds NLVR2)."""
        feats, boxes, order = [], [], []
        for index, image_id in enumerate(image_ids):
            f, b = self.features[task].get(image_id)
            feats.append(torch.from_numpy(f))
            boxes.append(torch.zeros_like(torch.from_numpy(b)) if self.zero_boxes else torch.from_numpy(b))
            order.append(torch.full((len(f),), index, dtype=torch.long))
        return {"vis_feats": torch.cat(feats), "vis_pos": torch.cat(boxes), "img_order_ids": torch.cat(order)}

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return _ImageTextCollator(self, tokenizer)

    # --- model and evaluation -------------------------------------------------------------------------------

    def build_model(
        self, model_cfg: ModelConfig, with_tokenizer: bool = True
    ) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
        feat_dim = self.features[self.tasks[0]].expected_dim()  # every image's width (`features`)
        model = load_pretrained(model_cfg, VLBartForConditionalGeneration, feat_dim=feat_dim)
        return model, load_tokenizer(model_cfg) if with_tokenizer else None

    def evaluate(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
        records = {task: self.records(task, self.eval_split, self.max_eval_samples, seed=0) for task in self.tasks}
        answers: dict[str, list[str]] = {}
        # One generation pass per answer length (the official caption length differs from the questions').
        for max_new_tokens in dict.fromkeys(self.max_new_tokens.values()):
            items = [(t, r) for t in self.tasks if self.max_new_tokens[t] == max_new_tokens for r in records[t]]
            visual = [self.visual_inputs(task, record.image_ids) for task, record in items]
            generated = iter(
                generate_image_text(
                    trainer.model,
                    tokenizer,
                    [self._eval_text(tokenizer, record) for _, record in items],
                    [v["vis_feats"] for v in visual],
                    [v["vis_pos"] for v in visual],
                    [self.tasks.index(task) for task, _ in items],
                    img_order_ids=[v["img_order_ids"] for v in visual],
                    batch_size=self.eval_batch_size,
                    max_new_tokens=max_new_tokens,
                    num_beams=self.num_beams,
                    synced_gpus=needs_synced_gpus(trainer),
                    merged=eval_merged(trainer, self.eval_merged),
                    desc=f"{self.name} eval",
                )
            )
            for task, _ in items:
                answers.setdefault(task, []).append(next(generated).strip())
        results = {}
        for task in self.tasks:
            predictions = answers.get(task, [])
            results[task] = self.score(task, predictions, records[task])
            if trainer.is_world_process_zero():
                rows = [
                    {
                        "id": r.example_id,
                        "images": list(r.image_ids),
                        "input": input_text(r),
                        "prediction": p,
                        "label": list(r.references) if r.task == "caption" else r.answer,
                    }
                    for r, p in zip(records[task], predictions, strict=True)
                ]
                write_jsonl(Path(trainer.args.output_dir) / "predictions" / f"{task}.jsonl", rows)
        return results

    def score(self, task: str, predictions: Sequence[str], records: Sequence[ImageTextRecord]) -> dict[str, float]:
        """Returns a task's metrics (fractions; CIDEr as coco-caption returns it) for predictions in record order."""
        if task == "caption":
            missing = [r.example_id for r in records if not r.references]
            if missing:
                raise ValueError(f"caption: {len(missing)} evaluation images have no reference captions: {missing[:5]}")
            return caption_metrics(predictions, [r.references for r in records])
        if task == "vqa":
            if all(r.answers for r in records):
                return {"accuracy": vqa_accuracy(predictions, [r.answers for r in records], self.vqa_evaluator)}
            return {"accuracy": vqa_score_accuracy(predictions, [r.label or {} for r in records])}
        return {"accuracy": exact_match_accuracy(predictions, [r.answer or "" for r in records])}

    def task_score(self, metrics: Mapping[str, float]) -> float:
        return 100.0 * (metrics["CIDEr"] if "CIDEr" in metrics else metrics["accuracy"])


class _ImageTextCollator:
    """Pads text (right), labels (-100) and visual tokens (zeros, with `vis_attention_mask` when the examples of a
    batch have different numbers of visual tokens), reading each example's features from HDF5; rows come out
    ordered by task."""

    def __init__(self, benchmark: ImageTextBenchmark, tokenizer: PreTrainedTokenizerBase) -> None:
        self.benchmark = benchmark
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        # Rows ordered by task (the loss does not depend on row order): MTL-LoRA then adds each task's up-projection
        # with one GEMM per task instead of gathering one per row.
        examples = sorted(examples, key=lambda e: e["task_ids"])
        visual = [self.benchmark.visual_inputs(self.benchmark.tasks[e["task_ids"]], e["image_ids"]) for e in examples]
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], self.pad_id),
            "labels": _pad([e["labels"] for e in examples], -100),
            "task_ids": torch.tensor([e["task_ids"] for e in examples]),
            **pad_visual_tokens(visual),
        }
        batch["attention_mask"] = (batch["input_ids"] != self.pad_id).long()
        return batch


def _pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    longest = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [value] * (longest - len(s)) for s in sequences])


def _fraction(value: int | float | str, name: str) -> Fraction:
    """Returns a batch scale given as a number or an exact ratio string ("100/60"), checked to be positive."""
    try:
        fraction = Fraction(value)
    except (TypeError, ValueError):
        raise ValueError(f"benchmark.{name} must be a number or a ratio like '100/60', got {value!r}") from None
    if fraction <= 0:
        raise ValueError(f"benchmark.{name} must be positive, got {value!r}")
    return fraction


class TaskBatchSampler(Sampler[list[int]]):
    """Batches of training-set indices that each hold ONE task, as the official multitask loader builds them, for
    one rank of `world_size`.

    Every epoch (`set_epoch`, which the Trainer calls) task t's examples are shuffled, cut to a multiple of
    `world_size` (dropping at most world_size - 1, a different few each epoch; none on one device) and dealt out,
    rank r taking every world_size-th; its share is cut into batches of `batch_sizes[t]` (the last one smaller).
    The order of the batches' tasks is shuffled too. Both draws depend on (seed, epoch) only, so every rank holds
    the same number of batches, works on the same task at every step, and the ranks' examples are disjoint."""

    def __init__(
        self, task_ids: Sequence[int], batch_sizes: Mapping[int, int], world_size: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        task_ids = np.asarray(task_ids)
        unknown = sorted(set(np.unique(task_ids).tolist()) - set(batch_sizes))
        if unknown:
            raise ValueError(f"task ids {unknown} of the training set have no batch size in {dict(batch_sizes)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size} ranks")
        self.indices = {t: np.flatnonzero(task_ids == t) for t in sorted(batch_sizes)}
        self.batch_sizes = dict(batch_sizes)
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose shuffle `__iter__` yields."""
        self.epoch = epoch

    def _per_rank(self, task_id: int) -> int:
        return len(self.indices[task_id]) // self.world_size

    def __len__(self) -> int:
        return sum(math.ceil(self._per_rank(t) / self.batch_sizes[t]) for t in self.indices)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = {}
        for task_id, indices in self.indices.items():
            share = rng.permutation(indices)[: self._per_rank(task_id) * self.world_size][self.rank :: self.world_size]
            size = self.batch_sizes[task_id]
            batches[task_id] = iter([share[i : i + size].tolist() for i in range(0, len(share), size)])
        order = [t for t in self.indices for _ in range(math.ceil(self._per_rank(t) / self.batch_sizes[t]))]
        for task_id in rng.permutation(order):
            yield next(batches[task_id])
