"""Image-text understanding (spec §3.3): VL-BART trained jointly on VQAv2, GQA, NLVR2 and COCO Caption, the unified
multi-task setup of VL-Adapter and DoRA, scored by generation.

Data and features are read in the VL-T5 formats (`image_text_data`); every example carries its image ids and its
region features are read from HDF5 when a batch is built (never all at once). Inputs are the task prompt plus the
question or statement (`--use_tasks_prompts`); NLVR2 examples see both images' tokens (72 with 36 per image) and the
batch pads visual tokens with a mask. Evaluation generates an answer per example under its task id
(`generate_image_text`) and scores it: VQAv2 accuracy over the 10 annotators' answers (VL-T5's evaluator, the
paper's; the `label` score dict when the raw answers are not there), GQA and NLVR2 exact match, COCO CIDEr-D and
BLEU-4. The average is the VL-Adapter/DoRA tables' mean of VQAv2, GQA, NLVR2 and CIDEr (×100).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Trainer

from ..metrics import caption_metrics, exact_match_accuracy, vqa_accuracy, vqa_score_accuracy
from ..models import ModelConfig, load_pretrained
from ..vl_bart import VLBartForConditionalGeneration
from .base import Benchmark, mix_tasks
from .generation import generate_image_text, pad_visual_tokens, write_jsonl
from .image_text_data import (
    OFFICIAL_SPLITS,
    TASKS,
    ImageFeatures,
    ImageTextRecord,
    input_text,
    load_task,
    official_feature_paths,
    sample_target,
)

SCORE_KEYS = {"vqa": "accuracy", "gqa": "accuracy", "nlvr": "accuracy", "caption": "CIDEr"}


class ImageTextBenchmark(Benchmark):
    """VQAv2, GQA, NLVR2 and COCO Caption trained jointly on VL-BART; task i of `tasks` has task id i (official
    order vqa 0, gqa 1, nlvr 2, caption 3).

    `data_dir`: a VL-T5 `datasets/` folder. `features`: {task: feature files or folders} or one list for every task;
    null takes the official CLIP-RN101 layout under data_dir (`official_feature_paths`). `n_boxes` pools a larger
    grid to that many regions (VL-Adapter's 7×7 → 36); `zero_boxes` feeds zero boxes, as the official CLIP-feature
    runs do. `trainable`: regexes of base parameters trained with the adapters (the recipe's `--unfreeze_bias
    --unfreeze_layer_norms` and the visual embedding)."""

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
        max_text_length: int = 40,
        max_target_length: int = 40,
        trainable: Sequence[str] = (r"visual_embedding", r"\.bias$", r"layer_?norm"),
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_batch_size: int = 64,
        max_new_tokens: int = 20,
        num_beams: int = 5,
        vqa_evaluator: str = "vl-t5",
        seed: int = 0,
    ) -> None:
        if data_dir is None:
            raise ValueError(
                "image_text needs a VL-T5 datasets/ folder (benchmark.data_dir): the real data (README, Image-text) or "
                "the synthetic set of scripts/make-synthetic-image-text.py"
            )
        self.name = name
        self.tasks = list(tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names from {list(TASKS)}, got {list(tasks)}")
        self.data_dir = Path(data_dir)
        self.splits = {task: {**OFFICIAL_SPLITS[task], **dict((splits or {}).get(task, {}))} for task in self.tasks}
        if eval_split not in ("validation", "test"):
            raise ValueError(f"eval_split must be 'validation' or 'test', got {eval_split!r}")
        self.eval_split = eval_split
        self.features = self._feature_sources(features, n_boxes)
        self.zero_boxes = zero_boxes
        self.use_task_prompts = use_task_prompts
        self.max_text_length = max_text_length
        self.max_target_length = max_target_length
        self._trainable = list(trainable)
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.eval_batch_size = eval_batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.vqa_evaluator = vqa_evaluator
        self.seed = seed

    def _feature_sources(self, features: Any, n_boxes: int | None) -> dict[str, ImageFeatures]:
        """One feature store per task: the configured paths (relative ones under data_dir) or the official ones."""
        stores = {}
        for task in self.tasks:
            if features is None:
                splits = ",".join(self.splits[task].values())
                paths: Sequence[Any] = official_feature_paths(task, splits, self.data_dir)
            else:
                paths = features.get(task, ()) if isinstance(features, Mapping) else features
                if not paths:
                    raise ValueError(f"benchmark.features names no feature file for task {task!r}")
            stores[task] = ImageFeatures([self.data_dir / p for p in paths], n_boxes=n_boxes)
        return stores

    @property
    def trainable(self) -> list[str]:
        return self._trainable

    # --- data -----------------------------------------------------------------------------------------------

    def records(self, task: str, split: str, cap: int | None, seed: int) -> list[ImageTextRecord]:
        """Returns a task's records of `split` ("train", "validation" or "test"; a seeded subsample of `cap`), after
        checking up front that every image has features."""
        loaded = load_task(task, self.splits[task][split], self.data_dir)
        records = loaded.records
        if cap is not None and cap < len(records):
            records = [records[i] for i in np.sort(np.random.default_rng(seed).permutation(len(records))[:cap])]
        self.features[task].check([i for r in records for i in r.image_ids], f"{task} {split}")
        return records

    def _encode(self, tokenizer: PreTrainedTokenizerBase, record: ImageTextRecord) -> list[int]:
        return tokenizer(input_text(record, self.use_task_prompts), truncation=True, max_length=self.max_text_length)[
            "input_ids"
        ]

    def train_dataset(self, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        per_task = []
        for task_id, task in enumerate(self.tasks):
            # Targets are drawn once per run (seeded; VL-T5 redraws VQA/GQA answers every epoch).
            rng = np.random.default_rng(self.seed + task_id)
            rows = [
                {
                    "input_ids": self._encode(tokenizer, record),
                    "labels": tokenizer(
                        text_target=sample_target(record, rng), truncation=True, max_length=self.max_target_length
                    )["input_ids"],
                    "task_ids": task_id,
                    "image_ids": list(record.image_ids),
                }
                for record in self.records(task, "train", self.max_train_samples, self.seed + task_id)
            ]
            per_task.append(Dataset.from_list(rows))
        return mix_tasks(per_task, seed=self.seed)

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

    def build_model(self, model_cfg: ModelConfig) -> tuple[nn.Module, PreTrainedTokenizerBase]:
        feat_dim = self.features[self.tasks[0]].feature_dim()
        model = load_pretrained(model_cfg, VLBartForConditionalGeneration, feat_dim=feat_dim)
        return model, AutoTokenizer.from_pretrained(model_cfg.name_or_path)

    def evaluate(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
        items = [
            (task, record)
            for task in self.tasks
            for record in self.records(task, self.eval_split, self.max_eval_samples, seed=0)
        ]
        visual = [self.visual_inputs(task, record.image_ids) for task, record in items]
        ds_config = trainer.args.hf_deepspeed_config.config if trainer.is_deepspeed_enabled else {}
        answers = iter(
            generate_image_text(
                trainer.model,
                tokenizer,
                [input_text(record, self.use_task_prompts) for _, record in items],
                [v["vis_feats"] for v in visual],
                [v["vis_pos"] for v in visual],
                [self.tasks.index(task) for task, _ in items],
                img_order_ids=[v["img_order_ids"] for v in visual],
                batch_size=self.eval_batch_size,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                synced_gpus=ds_config.get("zero_optimization", {}).get("stage") == 3,
                desc=f"{self.name} eval",
            )
        )
        results = {}
        for task in self.tasks:
            records = [record for t, record in items if t == task]
            predictions = [next(answers).strip() for _ in records]
            results[task] = self.score(task, predictions, records)
            if trainer.is_world_process_zero():
                rows = [
                    {"id": r.example_id, "images": list(r.image_ids), "input": input_text(r), "prediction": p}
                    for r, p in zip(records, predictions, strict=True)
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

    def average(self, results: Mapping[str, Mapping[str, float]]) -> float:
        return float(np.mean([self.task_score(m) for m in results.values()]))


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
