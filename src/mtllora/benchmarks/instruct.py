"""Multi-task instruction tuning of a causal LM, evaluated by generation: any user's own multi-task data.

Records are `{instruction, input, output, answer?, task | task_id}` in JSON lists or JSONL files. Training
follows the official MTL-LoRA recipe (Alpaca prompt, prompt tokens masked out of the loss, `cutoff_len`, EOS when
it fits); evaluation generates an answer for every test record under its task's id and scores what the task's
extractor finds in it against the record's `answer` (or its `output` when there is none).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DataCollatorForSeq2Seq,
    PreTrainedTokenizerBase,
    Trainer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ..metrics import RunWarning
from ..models import ModelConfig, load_pretrained, load_tokenizer
from .base import Benchmark, ExportLayout, read_text, same_model_layout, seeded_subsample
from .generation import eval_merged, generate, needs_synced_gpus, write_jsonl

# The official training prompt (mlora_finetune.py), whitespace included: the 16-space indentation and the trailing
# spaces of its f-strings are part of what the model learns. The official evaluator's copy differs in whitespace
# (one trailing space, unindented blank lines); here one template serves both, so they are byte-identical.
_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.  "
_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. "
)
_INDENT = " " * 16


def alpaca_prompt(instruction: str, input: str = "", output: str = "") -> str:
    """Returns the official Alpaca-style prompt; with `output=""` it is the prompt that generation continues."""
    parts = [f"### Instruction:\n{_INDENT}{instruction}\n{_INDENT}\n"]
    if input:
        parts.append(f"{_INDENT}### Input:\n{_INDENT}{input}\n{_INDENT}\n")
    parts.append(f"{_INDENT}### Response:\n{_INDENT}{output}")
    return f"{_HEADER_INPUT if input else _HEADER}\n\n{_INDENT}" + "".join(parts)


class RecordError(ValueError):
    """A data record is malformed (the message names the file and the record's index)."""


class InputsError(ValueError):
    """The data files of a run are missing or malformed; the message lists every problem found."""


def read_records(path: str | Path, check: Callable[[dict[str, Any]], str | None] | None = None) -> list[dict[str, Any]]:
    """Returns the records of a JSON list or JSON Lines file (see `read_json_records`), each checked for string
    `instruction`, `input` (may be "") and `output`, and a string `answer` when present; other keys are kept;
    `check` may add a benchmark's own rule (it returns the problem, or None)."""
    return read_json_records(path, lambda record: _record_problem(record) or (check(record) if check else None))


def read_json_records(
    path: str | Path, check: Callable[[dict[str, Any]], str | None] | None = None
) -> list[dict[str, Any]]:
    """Returns the JSON objects of a JSON list or JSON Lines file (one object per line; the first character
    decides), each checked by `check` (it returns the problem, or None). Raises RecordError naming the file and
    the record (and line) or, for invalid JSON, the line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    text = read_text(path)
    start = text.lstrip()[:1]
    if start == "[":
        records = _parse_json(path, text)
        where = [f"record {i}" for i in range(len(records))]
    elif start == "{":
        records, where = [], []
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
            if line.strip():
                records.append(_parse_json(path, line, line_offset=number - 1))
                where.append(f"record {len(records) - 1} (line {number})")
    else:
        got = "an empty file" if not start else f"{start!r}"
        raise RecordError(f"{path}: expected a JSON list of records or JSON Lines (one object per line), got {got}")
    for record, place in zip(records, where, strict=True):
        if not isinstance(record, dict):
            raise RecordError(f"{path}: {place}: expected a JSON object, got {type(record).__name__}")
        problem = check(record) if check is not None else None
        if problem:
            raise RecordError(f"{path}: {place}: {problem}")
    return records


def _parse_json(path: Path, text: str, line_offset: int = 0) -> Any:
    """Returns json.loads(text); invalid JSON is a RecordError naming the file, line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(
            f"{path}: invalid JSON at line {err.lineno + line_offset} column {err.colno}: {err.msg}"
        ) from err


def _record_problem(record: Any) -> str | None:
    """Returns what is wrong with an instruction record, or None."""
    for key in ("instruction", "input", "output"):
        if key not in record:
            return f"missing {key!r} (has {', '.join(map(repr, record)) or 'no keys'})"
    for key in ("instruction", "input", "output", "answer"):
        if key in record and not isinstance(record[key], str):
            return f"{key!r} must be a string, got {type(record[key]).__name__} {record[key]!r:.60}"
    return None


def label_problem(record: Mapping[str, Any]) -> str | None:
    """Returns what keeps a test record from being scored, or None: its label (`answer`, else `output`) is empty, which
    a response without an answer (prediction "") would match."""
    key = "answer" if "answer" in record else "output"
    if not record[key].strip():
        label = f"{key!r} is {record[key]!r}" + ("" if key == "answer" else " and there is no 'answer'")
        return f"empty label: {label}; a test record needs the answer its response is scored against"
    return None


def training_problem(
    task: str, records: Sequence[Mapping[str, Any]], source: str, where: Callable[[int], str]
) -> str | None:
    """Returns why the training records of `task`, read from `source`, cannot train it, or None: there are none (the
    task would be evaluated untrained), or every `output` is empty (it would learn to answer with EOS alone).
    `where(i)` names record i (e.g. "train.json: record 3"). Some empty outputs among others are a warning
    (`warn_empty_outputs`)."""
    if not records:
        return f"task {task!r} has no training records in {source}; every task of benchmark.tasks needs some"
    if all(not record["output"].strip() for record in records):
        return (
            f"task {task!r}: all {len(records)} training records have an empty 'output' (first: {where(0)}); the "
            f"model would learn to answer with EOS alone"
        )
    return None


def warn_empty_outputs(name: str, tasks: Sequence[str], records: Sequence[Mapping[str, Any]]) -> None:
    """Warns (RunWarning, kept in metrics.json) about each task whose training records include some with an empty
    `output`: each of them trains the model to stop at once, which the run's numbers then reflect."""
    empty: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        if not record["output"].strip():
            empty.setdefault(record["task_id"], []).append(record)
    totals = Counter(record["task_id"] for record in records)
    for task_id, rows in sorted(empty.items()):
        warnings.warn(
            f"{name}: {len(rows)} of {totals[task_id]} training records of task {tasks[task_id]!r} have an empty "
            f"'output' (first: instruction {rows[0]['instruction']!r:.80}); each trains the model to answer with EOS "
            f"alone",
            RunWarning,
            stacklevel=2,
        )


def _compile_pattern(task: str, pattern: str) -> re.Pattern[str]:
    """Returns benchmark.answer_patterns' regex of `task`, or an error naming the task and the pattern."""
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(
            f"benchmark.answer_patterns.{task}: {pattern!r} is not a valid regular expression ({err}); expected a "
            f"Python regex whose first match (group 1 if it has one) is the answer"
        ) from None


class InstructBenchmark(Benchmark):
    """Multi-task instruction data: `train_files` (records name their `task` or `task_id`) and `test_files`
    ({task: file}); task i of `tasks` has task id i. Scoring: `answer_patterns` ({task: regex}) extracts the
    answer from a response (first match; group 1 if the regex has a group), else the stripped first line is the
    answer; it is correct when it equals the label."""

    def __init__(
        self,
        tasks: Sequence[str] | None,
        train_files: Sequence[str | Path],
        test_files: Mapping[str, str | Path],
        name: str = "instruct",
        cache_dir: str | Path = "data/cache",
        cutoff_len: int = 256,
        train_on_inputs: bool = False,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        eval_batch_size: int = 16,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        answer_patterns: Mapping[str, str] | None = None,
        eval_merged: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(eval_merged, bool):
            raise ValueError(f"benchmark.eval_merged must be true or false, got {eval_merged!r}")
        self.name = name
        self.train_files = [Path(f) for f in train_files]
        # Without a configured list, tasks are the records' `task` names in order of first appearance.
        self.tasks = list(tasks) if tasks is not None else self._tasks_in_data()
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be a non-empty list without repeats, got {list(tasks)}")
        missing = [t for t in self.tasks if t not in test_files]
        unknown = sorted(set(test_files) - set(self.tasks)) + sorted(set(answer_patterns or {}) - set(self.tasks))
        if missing or unknown:
            raise ValueError(
                f"test_files must name a file for each of tasks {self.tasks}: missing {missing}, "
                f"unknown task(s) {unknown}"
            )
        self.test_files = {t: Path(f) for t, f in test_files.items()}
        self.cutoff_len = cutoff_len
        self.train_on_inputs = train_on_inputs
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.eval_batch_size = eval_batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.eval_merged = eval_merged
        self.answer_patterns = {t: _compile_pattern(t, p) for t, p in (answer_patterns or {}).items()}
        self.cache_dir = Path(cache_dir)
        self.seed = seed

    # --- what a subclass (e.g. commonsense) changes ---------------------------------------------------------

    def prompt(self, record: Mapping[str, Any], output: str = "") -> str:
        """Returns the record's prompt, continued by `output` (the training target) or by nothing (evaluation)."""
        return alpaca_prompt(record["instruction"], record["input"], output)

    def extract_answer(self, task: str, response: str) -> str:
        """Returns the answer found in a generated response ("" when the task's pattern matches nothing)."""
        pattern = self.answer_patterns.get(task)
        if pattern is None:
            return response.strip().split("\n", 1)[0].strip()
        match = pattern.search(response)
        return "" if match is None else match.group(1 if pattern.groups else 0)

    def is_correct(self, task: str, prediction: str, label: str) -> bool:
        """Returns whether an extracted answer counts as correct for the label."""
        return prediction == label.strip()

    def score(self, task: str, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Returns the metrics of `task` from its evaluation rows ({label, response, prediction, ...}), marking each
        row `correct`: accuracy and the share of responses with no answer found."""
        if not rows:
            raise ValueError(f"{self.name}: task {task!r} has no evaluation records to score")
        for row in rows:
            row["correct"] = self.is_correct(task, row["prediction"], row["label"])
        return {
            "accuracy": float(np.mean([row["correct"] for row in rows])),
            "no_answer": float(np.mean([row["prediction"] == "" for row in rows])),
        }

    def train_records(self) -> list[dict[str, Any]]:
        """Returns the training records, each with an integer `task_id`."""
        return [r for path in self.train_files for r in self._with_task_ids(read_records(path), path)]

    def test_records(self, task: str) -> list[dict[str, Any]]:
        """Returns the evaluation records of `task` (a fixed seeded subsample when max_eval_samples is set); each
        has a label (its `answer`, else its `output`) that is not empty."""
        records = read_records(self.test_files[task], check=label_problem)
        return self._subsample(records, self.max_eval_samples, seed=0)

    # --- the Benchmark interface ----------------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Reads every train and test file and checks every record (and its task); raises one InputsError listing
        each problem."""
        problems = []
        per_task: list[list[dict[str, Any]]] = [[] for _ in self.tasks]
        places: list[list[str]] = [[] for _ in self.tasks]
        for path in self.train_files:
            try:
                for index, record in enumerate(self._with_task_ids(read_records(path), path)):
                    per_task[record["task_id"]].append(record)
                    places[record["task_id"]].append(f"{path}: record {index}")
            except (OSError, ValueError) as err:
                problems.append(str(err))
        if not problems:  # a file that failed leaves its tasks' records uncounted
            source = ", ".join(map(str, self.train_files)) or "benchmark.train_files (none given)"
            for task, records, where in zip(self.tasks, per_task, places, strict=True):
                if problem := training_problem(task, records, source, where.__getitem__):
                    problems.append(problem)
        for task, path in self.test_files.items():
            try:
                if not read_records(path, check=label_problem):
                    problems.append(f"{path}: no records (the test file of task {task!r})")
            except (OSError, ValueError) as err:
                problems.append(f"{err} (the test file of task {task!r})")
        if problems:
            raise InputsError(
                f"{self.name}: {len(problems)} problem(s) with benchmark.train_files/test_files:\n"
                + "".join(f"  - {problem}\n" for problem in problems)
                + "Records: JSON lists or JSON Lines of {instruction, input, output, answer?, task | task_id}."
            )

    def data_files(self) -> list[Path]:
        return [*self.train_files, *(self.test_files[task] for task in self.tasks)]

    def build_model(
        self, model_cfg: ModelConfig, with_tokenizer: bool = True
    ) -> tuple[nn.Module, PreTrainedTokenizerBase | None]:
        config = AutoConfig.from_pretrained(model_cfg.name_or_path, gguf_file=model_cfg.gguf_file)
        causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        # What the checkpoint holds matters: BERT has a causal-LM class, but a BertModel checkpoint is an encoder.
        saved = config.architectures or []
        if causal is None or (saved and causal not in saved and not any(a.endswith("ForCausalLM") for a in saved)):
            raise ValueError(
                f"{self.name} trains a causal LM, but model {model_cfg.name!r} ({model_cfg.name_or_path}) is a "
                f"{config.model_type!r} model ({', '.join(saved) or 'no architecture'}) without a causal-LM head "
                f"(e.g. LlamaForCausalLM, Qwen2ForCausalLM)"
            )
        model = load_pretrained(model_cfg, AutoModelForCausalLM)
        if not with_tokenizer:
            return model, None
        tokenizer = load_tokenizer(model_cfg)
        if tokenizer.pad_token_id is None:
            # The official recipe pads with unk (id 0 for LLaMA-2); models without unk pad with eos.
            tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    def train_dataset(self, tokenizer: PreTrainedTokenizerBase) -> Dataset:
        per_task: dict[int, list[dict[str, Any]]] = {}
        for record in self.train_records():
            per_task.setdefault(record["task_id"], []).append(record)
        records = [
            r
            for task_id in sorted(per_task)
            for r in self._subsample(per_task[task_id], self.max_train_samples, seed=self.seed + task_id)
        ]
        warn_empty_outputs(self.name, self.tasks, records)
        dataset = Dataset.from_list(
            [
                {"instruction": r["instruction"], "input": r["input"], "output": r["output"], "task_ids": r["task_id"]}
                for r in records
            ]
        )
        tokenized = dataset.map(
            self._tokenize,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=["instruction", "input", "output"],
            desc="tokenize",
            cache_file_name=str(self._cache_file(tokenizer, records)),
        )
        kept = tokenized.filter(lambda row: any(label != -100 for label in row["labels"]), desc="drop empty targets")
        dropped = len(tokenized) - len(kept)
        if dropped:
            warnings.warn(
                f"{dropped} of {len(tokenized)} training records have a prompt of {self.cutoff_len} tokens or more "
                f"(cutoff_len) and no target token left; they are left out",
                stacklevel=2,
            )
        return kept

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)

    def evaluate(self, trainer: Trainer, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict[str, float]]:
        records = {task: self.test_records(task) for task in self.tasks}
        answered = iter(
            self.respond(
                trainer.model,
                tokenizer,
                [(task, r) for task in self.tasks for r in records[task]],
                synced_gpus=needs_synced_gpus(trainer),
                merged=eval_merged(trainer, self.eval_merged),
            )
        )
        results = {}
        for task in self.tasks:
            rows = [
                {
                    "index": index,
                    "prompt": self.prompt(record),
                    "label": record.get("answer", record["output"]),
                    **next(answered),
                }
                for index, record in enumerate(records[task])
            ]
            results[task] = self.score(task, rows)
            if trainer.is_world_process_zero():
                write_jsonl(Path(trainer.args.output_dir) / "predictions" / f"{task}.jsonl", rows)
        return results

    def respond(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        items: Sequence[tuple[str, Mapping[str, Any]]],
        synced_gpus: bool = False,
        merged: bool | None = None,
    ) -> list[dict[str, str]]:
        """Returns {"response", "prediction"} for every (task, record): the generated response to the record's
        prompt under the task's id (tasks share batches; `merged`, by default the benchmark's `eval_merged`: each
        task's rows apart, with its update merged) and the answer extracted from it. Evaluation and `predict` both
        answer through it, so a prediction is what the evaluation scored."""
        task_ids = {task: i for i, task in enumerate(self.tasks)}
        responses = generate(
            model,
            tokenizer,
            [self.prompt(record) for _, record in items],
            [task_ids[task] for task, _ in items],
            batch_size=self.eval_batch_size,
            max_new_tokens=self.max_new_tokens,
            num_beams=self.num_beams,
            synced_gpus=synced_gpus,
            merged=self.eval_merged if merged is None else merged,
            desc=f"{self.name} generate",
        )
        return [
            {"response": response, "prediction": self.extract_answer(task, response)}
            for (task, _), response in zip(items, responses, strict=True)
        ]

    def input_problem(self, task: str, record: Mapping[str, Any]) -> str | None:
        """An input record has a string `instruction` and, optionally, a string `input`."""
        for key in ("instruction", "input"):
            if (key == "instruction" or key in record) and not isinstance(record.get(key), str):
                return f"{key!r} must be a string, got {record.get(key)!r:.60}"
        return None

    def predict(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, records: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        return self.respond(model, tokenizer, [(task, {"input": "", **r}) for r in records])

    def export_layout(self, model: nn.Module, task_id: int) -> ExportLayout:
        return same_model_layout(model, "AutoModelForCausalLM", "CAUSAL_LM")

    def task_score(self, metrics: Mapping[str, float]) -> float:
        return 100.0 * metrics["accuracy"]

    # --- helpers --------------------------------------------------------------------------------------------

    def _tasks_in_data(self) -> list[str]:
        names: dict[str, None] = {}
        for path in self.train_files:
            for index, record in enumerate(read_records(path)):
                if not isinstance(record.get("task"), str):
                    raise RecordError(
                        f"{path}: record {index}: without benchmark.tasks every record needs a 'task' name, got "
                        f"{record.get('task')!r}"
                    )
                names[record["task"]] = None
        return list(names)

    def _with_task_ids(self, records: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
        out = []
        for index, record in enumerate(records):
            if "task_id" in record:
                task_id = record["task_id"]
                if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(self.tasks):
                    raise RecordError(
                        f"{path} record {index}: task_id {task_id!r} is out of range for tasks {self.tasks} "
                        f"(valid ids 0..{len(self.tasks) - 1})"
                    )
            elif record.get("task") in self.tasks:
                task_id = self.tasks.index(record["task"])
            else:
                raise RecordError(
                    f"{path}: record {index}: needs a 'task' (one of {self.tasks}) or an integer 'task_id', got "
                    f"task={record.get('task')!r}"
                )
            out.append({**record, "task_id": task_id})
        return out

    @staticmethod
    def _subsample(records: list[dict[str, Any]], cap: int | None, seed: int) -> list[dict[str, Any]]:
        keep = seeded_subsample(len(records), cap, seed)
        return records if keep is None else [records[i] for i in keep]

    def _tokenize(self, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
        """The official tokenisation: truncate to cutoff_len, append EOS when there is room, and mask the prompt
        (the template with an empty output) out of the labels unless train_on_inputs."""
        ids = tokenizer(self.prompt(row, row["output"]), truncation=True, max_length=self.cutoff_len)["input_ids"]
        if ids[-1] != tokenizer.eos_token_id and len(ids) < self.cutoff_len:
            ids = [*ids, tokenizer.eos_token_id]
        labels = list(ids)
        if not self.train_on_inputs:
            prompt_ids = tokenizer(self.prompt(row), truncation=True, max_length=self.cutoff_len)["input_ids"]
            labels = [-100] * len(prompt_ids) + labels[len(prompt_ids) :]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels[: len(ids)]}

    def _cache_file(self, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]]) -> Path:
        """A tokenisation cache under data/cache, keyed by everything the tokenised set depends on."""
        key = hashlib.sha256()
        key.update(
            json.dumps(
                [
                    type(self).__name__,
                    self.cutoff_len,
                    self.train_on_inputs,
                    tokenizer.name_or_path,
                    len(tokenizer),
                    tokenizer.eos_token_id,
                    self.prompt({"instruction": "i", "input": ""}),
                ]
            ).encode()
        )
        for record in records:
            key.update(
                json.dumps([record["instruction"], record["input"], record["output"], record["task_id"]]).encode()
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir / f"{self.name}-{key.hexdigest()[:16]}.arrow"
