"""Commonsense reasoning (commonsense_170k, LLM-Adapters format): tasks and ids, files, records, answer parsing.

Records are LLM-Adapters instruction records: `{"instruction", "input", "output", "answer"}`, optionally with the
task as `task` (a name of TASKS) or `task_id` (its position in TASKS). The instruction ends with the answer
format, e.g. "...\\n\\nAnswer format: answer1/answer2/answer3"; the output is "the correct answer is <answer>".

Files, under `data_dir` (the shared data root holding `commonsense/`, LLM-Adapters' checkout holding `dataset/`, or
the folder itself): `<task>/test.json` and, per task, `<task>/train.json` (LLM-Adapters' own layout) or
`train/<task>_train.json` (the shared copy's). The union of the train files is `commonsense_170k.json` (170,420
records); `commonsense_170k_taskid.json` adds `task_id`. A combined file without ids gets them from `assign_task_ids`.
Training on fewer records than LLM-Adapters' full train split of a task (the shared copy's HellaSwag) is an error
unless `allow_partial_train`.

Scoring follows the official evaluators of pUmpKin-Co/MTL-LoRA (docs/commonsense.md): the first match of the task's
answer pattern in the response, compared with the `answer` field. Mode "official" is `mlora_evaluate.py` (MTL-LoRA,
MoELoRA, MultiLoRA runs): a bare-digit fallback for the answerN tasks and a substring rule. Mode "strict" is
`lora_evaluate.py` (the PEFT LoRA and DoRA baselines, `script/llama2_7B_dora_qkvo_eval.sh`): no fallback, exact
equality. Every evaluation scores the same generations under both (`accuracy_official`, `accuracy_strict`); `mode` picks
the headline `accuracy`.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .instruct import InputsError, InstructBenchmark, label_problem, read_records, training_problem

logger = logging.getLogger(__name__)

Record = dict[str, Any]

# Task id = position (pUmpKin-Co/MTL-LoRA mlora_evaluate.py `task_name_to_id`); names are the LLM-Adapters folders.
TASKS: tuple[str, ...] = (
    "boolq",
    "piqa",
    "social_i_qa",
    "hellaswag",
    "winogrande",
    "ARC-Challenge",
    "ARC-Easy",
    "openbookqa",
)
TASK_IDS: dict[str, int] = {task: i for i, task in enumerate(TASKS)}
MODES = ("official", "strict")

# The official patterns, case-sensitive; the first match anywhere in the response is the prediction.
_ANSWER = re.compile(r"answer1|answer2|answer3|answer4|answer5")
ANSWER_PATTERNS: dict[str, re.Pattern[str]] = {
    "boolq": re.compile(r"true|false"),
    "piqa": re.compile(r"solution1|solution2"),
    "social_i_qa": _ANSWER,
    "hellaswag": re.compile(r"ending1|ending2|ending3|ending4"),
    "winogrande": re.compile(r"option1|option2"),
    "ARC-Challenge": _ANSWER,
    "ARC-Easy": _ANSWER,
    "openbookqa": _ANSWER,
}
# Official mode only, for these tasks, when the pattern finds nothing: the first digit 1-4 anywhere in the response
# (the regex `1|2|3|4` is not anchored, so "12 apples" gives "1"; there is no 5). It counts through the substring
# rule of `is_correct`: "2" in "answer2".
DIGIT_FALLBACK = re.compile(r"1|2|3|4")
DIGIT_FALLBACK_TASKS = frozenset({"social_i_qa", "ARC-Challenge", "ARC-Easy", "openbookqa"})

# Records of LLM-Adapters' train file of each task: commonsense_170k.json is their union (170,420 records).
FULL_TRAIN_RECORDS: dict[str, int] = {
    "boolq": 9427,
    "piqa": 16113,
    "social_i_qa": 33410,
    "hellaswag": 39905,
    "winogrande": 63238,
    "ARC-Challenge": 1119,
    "ARC-Easy": 2251,
    "openbookqa": 4957,
}

_HELLASWAG_DERIVED_TEST = "test_reconstructed.json"
_HELLASWAG_PARTIAL_TRAIN = "hellaswag_train_partial.json"
_DATA_SOURCE = "https://github.com/AGI-Edgerunners/LLM-Adapters/tree/main/dataset"
_SOURCE_HINT = (
    "Get it from AGI-Edgerunners/LLM-Adapters: dataset/{task}/{split}.json, saved as {layout} under data_dir "
    "(data_dir, or MTLLORA_DATA_DIR, may be the shared data root holding commonsense/, the LLM-Adapters checkout "
    "holding dataset/, or that folder itself)."
)
_LAYOUT = (
    f"Expected under data_dir (the shared data root holding commonsense/, the LLM-Adapters checkout holding dataset/, "
    f"or that folder): <task>/test.json for each task, and the train set as <task>/train.json or "
    f"train/<task>_train.json for each task, or one combined file passed as benchmark.train_file, e.g. "
    f"make reproduce-commonsense ARGS='benchmark.train_file=/path/to/commonsense_170k_taskid.json' (or the "
    f"commonsense_170k.json URL). Download: {_DATA_SOURCE} (commonsense_170k.json at the repository root)."
)


def _check_task(dataset: str) -> None:
    if dataset not in TASK_IDS:
        raise ValueError(f"unknown commonsense dataset {dataset!r}; expected one of {', '.join(TASKS)}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; expected one of {MODES}")


# ---------------------------------------------------------------------------------------------------------------
# Answer parsing


def extract_answer(dataset: str, response: str, mode: str = "official") -> str:
    """Returns the answer the response gives for `dataset` ("true", "solution2", "answer3", "3", ...), or "".

    The first match of the task's case-sensitive pattern ("True." matches nothing for boolq); in official mode the
    answerN tasks fall back to the first digit 1-4 of the response.
    """
    _check_task(dataset)
    _check_mode(mode)
    match = ANSWER_PATTERNS[dataset].search(response)
    if match is None and mode == "official" and dataset in DIGIT_FALLBACK_TASKS:
        match = DIGIT_FALLBACK.search(response)
    return match.group() if match else ""


def is_correct(prediction: str, label: str, mode: str = "official") -> bool:
    """Whether an extracted prediction scores: official `label == pred or (pred != "" and pred in label)`, so a
    fallback digit counts ("2" for "answer2"); strict: exact equality."""
    _check_mode(mode)
    if mode == "strict":
        return prediction == label
    return label == prediction or (prediction != "" and prediction in label)


# ---------------------------------------------------------------------------------------------------------------
# Records and files


def load_records(path: str | os.PathLike[str]) -> list[Record]:
    """Returns the records of an LLM-Adapters file (`read_records`: a JSON list or JSON Lines), where `task` must
    also be a name of TASKS and `task_id` an id 0-7 (both: they must agree). Errors name the file and the record."""
    return read_records(path, check=_task_problem)


def _task_problem(record: Record) -> str | None:
    """Returns what is wrong with a record's `task`/`task_id`, or None."""
    task, task_id = record.get("task"), record.get("task_id")
    if "task" in record and task not in TASK_IDS:
        return f"unknown task {task!r}; expected one of {', '.join(TASKS)}"
    if "task_id" in record:
        if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(TASKS):
            return f"task_id must be an integer 0-{len(TASKS) - 1}, got {task_id!r}"
        if "task" in record and TASKS[task_id] != task:
            return f"task {task!r} and task_id {task_id} ({TASKS[task_id]}) disagree"
    return None


def _root(data_dir: str | os.PathLike[str]) -> Path:
    """Returns the commonsense folder: `data_dir/commonsense` or `data_dir/dataset` (LLM-Adapters) if one exists,
    else `data_dir`."""
    data_dir = Path(data_dir)
    return next((data_dir / sub for sub in ("commonsense", "dataset") if (data_dir / sub).is_dir()), data_dir)


def test_file(data_dir: str | os.PathLike[str], dataset: str) -> Path:
    """Returns `<data_dir>/<dataset>/test.json` (data_dir: the shared data root holding commonsense/, LLM-Adapters'
    checkout holding dataset/, or that folder).

    HellaSwag: LLM-Adapters' test.json if present, else `test_reconstructed.json`, a file derived from the official
    validation set (same items, labels and order; WikiHow prompts without the [header]/[step] tags; data README).
    """
    candidates = _test_candidates(data_dir, dataset)
    for path in candidates:
        if path.is_file():
            if path.name == _HELLASWAG_DERIVED_TEST:
                logger.info("hellaswag: using %s, reconstructed from the official validation set", path)
            return path
    hint = _SOURCE_HINT.format(task=dataset, split="test", layout=f"{dataset}/test.json")
    raise FileNotFoundError(f"commonsense test set {dataset!r}: no file {' or '.join(map(str, candidates))}. {hint}")


test_file.__test__ = False  # a library function named test_*, not a test for pytest to collect


def _test_candidates(data_dir: str | os.PathLike[str], dataset: str) -> list[Path]:
    """The paths a test set may have, in order of preference."""
    _check_task(dataset)
    folder = _root(data_dir) / dataset
    return [
        folder / name for name in (["test.json", _HELLASWAG_DERIVED_TEST] if dataset == "hellaswag" else ["test.json"])
    ]


def load_test(data_dir: str | os.PathLike[str], dataset: str) -> list[Record]:
    """Returns the test records of `dataset`; each must carry `answer` (the label the evaluation compares with)."""
    return read_records(test_file(data_dir, dataset), check=_test_problem)


def _test_problem(record: Record) -> str | None:
    """Returns what is wrong with a test record (its task, its `answer` label), or None."""
    if "answer" not in record:
        return "missing 'answer' (the label of a test record)"
    return _task_problem(record) or label_problem(record)


def train_files(data_dir: str | os.PathLike[str], missing_ok: bool = False) -> dict[str, Path]:
    """Returns {task: its train file} in TASKS order: `<task>/train.json` (LLM-Adapters' layout) or
    `train/<task>_train.json` (the shared copy's); for HellaSwag, else `train/hellaswag_train_partial.json` (the
    shared copy's first 3,368 of 39,905 rows; `CommonsenseBenchmark` refuses it unless `allow_partial_train`).

    Both layouts holding a task's file is an error (which one trains would be a silent choice). A missing file is
    an error naming all of them, unless `missing_ok` (then the tasks found are returned).
    """
    root = _root(data_dir)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for task in TASKS:
        full = [path for path in _train_candidates(root, task) if path.is_file()]
        if len(full) > 1:
            raise ValueError(
                f"commonsense train set {task!r}: both {full[0]} and {full[1]} exist; keep one (they may differ)"
            )
        partial = root / "train" / _HELLASWAG_PARTIAL_TRAIN
        path = full[0] if full else (partial if task == "hellaswag" and partial.is_file() else None)
        if path is None:
            missing.append(" or ".join(str(p.relative_to(root)) for p in _train_candidates(root, task)))
        else:
            found[task] = path
    if missing and not missing_ok:
        raise FileNotFoundError(f"commonsense train files missing in {root}: {', '.join(missing)}. {_LAYOUT}")
    return found


def _train_candidates(root: Path, task: str) -> list[Path]:
    """The paths a complete train file of `task` may have under the commonsense folder `root`."""
    return [root / task / "train.json", root / "train" / f"{task}_train.json"]


def load_train(
    data_dir: str | os.PathLike[str] | None = None, train_file: str | os.PathLike[str] | None = None
) -> dict[str, list[Record]]:
    """Returns {task: training records} in TASKS order, each record a copy with its `task_id` set (a task without
    records maps to []).

    From `train_file` when given: one combined file (commonsense_170k_taskid.json, commonsense_170k.json, or any file
    `load_records` reads); records without `task_id`/`task` get one from `assign_task_ids`, using the per-task train
    files under `data_dir` as reference when present; a record left without a task is an error saying how to fix
    it. Otherwise from the per-task train files under `data_dir` (`train_files`); a record there that names another
    task is an error.
    """
    grouped: dict[str, list[Record]] = {task: [] for task in TASKS}
    if train_file is None:
        if data_dir is None:
            raise ValueError("load_train needs data_dir (per-task train files) or train_file (one combined file)")
        for task, path in train_files(data_dir).items():
            for i, record in enumerate(load_records(path)):
                own = TASKS[record["task_id"]] if "task_id" in record else record.get("task", task)
                if own != task:
                    raise ValueError(f"{path}: record {i}: task {own!r} in the train file of {task!r}")
                grouped[task].append({**record, "task_id": TASK_IDS[task]})
        return grouped
    records = load_records(train_file)
    reference = None
    if data_dir is not None and not all("task_id" in r or "task" in r for r in records):
        present = train_files(data_dir, missing_ok=True)
        reference = {task: load_records(path) for task, path in present.items()} or None
    ids, report = assign_task_ids(records, reference)
    if not report.complete:
        raise ValueError(f"{train_file}: {report.summary()}")
    for record, task_id in zip(records, ids, strict=True):
        grouped[TASKS[task_id]].append({**record, "task_id": task_id})
    logger.info("%s: %s", train_file, report.summary())
    return grouped


# ---------------------------------------------------------------------------------------------------------------
# Task ids for a combined file


# Answer-format family (the option names without their numbers) -> the tasks that use it.
_FAMILIES: dict[str, tuple[str, ...]] = {
    "true/false": ("boolq",),
    "solution": ("piqa",),
    "ending": ("hellaswag",),
    "option": ("winogrande",),
    "answer": ("social_i_qa", "ARC-Challenge", "ARC-Easy", "openbookqa"),
}
_MULTIPLE_CHOICE_TASKS = ("ARC-Challenge", "ARC-Easy", "openbookqa")
_FORMAT = re.compile(r"Answer format: (\S+)\s*$")
_FIX = (
    "Fix: train from commonsense_170k_taskid.json (every record carries task_id), or put the per-task train files "
    "(train/<task>_train.json) under data_dir so that instructions are matched exactly."
)


def answer_format(instruction: str) -> tuple[str, int] | None:
    """Returns (family, number of options) of the "Answer format: ..." suffix, e.g. ("answer", 3) for
    "answer1/answer2/answer3" and ("true/false", 2); None when the instruction has no recognised format."""
    match = _FORMAT.search(instruction)
    if match is None:
        return None
    options = match.group(1).split("/")
    if options == ["true", "false"]:
        return "true/false", 2
    family = options[0].rstrip("0123456789")
    if family not in _FAMILIES or options != [f"{family}{i}" for i in range(1, len(options) + 1)]:
        return None
    return family, len(options)


def format_candidates(instruction: str) -> tuple[str, ...]:
    """Returns the tasks whose records can have this instruction's answer format (() if unrecognised)."""
    form = answer_format(instruction)
    return _FAMILIES[form[0]] if form else ()


@dataclass
class TaskIdReport:
    """How `assign_task_ids` found each id, and the records it could not place."""

    total: int = 0
    # method -> records: "record" (own task_id/task), "reference" (exact instruction match), "format"
    by_method: Counter[str] = field(default_factory=Counter)
    # Assigned social_i_qa because the format has three answers (ARC has a few three-answer questions: 7 in train).
    three_answer_rule: int = 0
    # candidate tasks -> indices of the records that could be any of them
    ambiguous: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    unrecognised: list[int] = field(default_factory=list)  # no task, no reference match, no known answer format
    conflicts: list[str] = field(default_factory=list)  # a record's own task contradicts its answer format

    @property
    def complete(self) -> bool:
        """True when every record has an id and none contradicts its format."""
        return not (self.ambiguous or self.unrecognised or self.conflicts)

    def summary(self) -> str:
        """Returns one paragraph: counts per method, then every problem with examples and the fix."""
        methods = ", ".join(f"{n:,} by {m}" for m, n in self.by_method.items())
        parts = [f"Task ids for {self.total:,} records: {methods or 'none assigned'}"]
        if self.three_answer_rule:
            parts.append(
                f"{self.three_answer_rule:,} of those by format are three-answer questions taken as social_i_qa "
                f"(a few ARC questions also have three answers; a reference match avoids this)"
            )
        for candidates, indices in self.ambiguous.items():
            parts.append(
                f"{len(indices):,} records are ambiguous between {'/'.join(candidates)}: the answer format "
                f"cannot tell them apart (first indices: {indices[:5]})"
            )
        if self.unrecognised:
            parts.append(
                f"{len(self.unrecognised):,} records have no task, no reference match and no known 'Answer format:' "
                f"suffix (first indices: {self.unrecognised[:5]})"
            )
        if self.conflicts:
            parts.append(f"{len(self.conflicts):,} records contradict their answer format: {self.conflicts[:3]}")
        if not self.complete:
            parts.append(_FIX)
        return ". ".join(part.rstrip(".") for part in parts) + "."


def assign_task_ids(
    records: Sequence[Mapping[str, Any]], reference: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> tuple[list[int | None], TaskIdReport]:
    """Returns (task id or None per record, report) for records of a combined file such as commonsense_170k.json.

    In order: the record's own `task_id`/`task` (checked against its answer format); else the task of the
    reference records (e.g. the per-task train files) with exactly the same instruction; else the answer format
    where it names one task (true/false boolq, solutionN piqa, endingN hellaswag, optionN winogrande) or has three
    answers (social_i_qa; counted in the report, as a few ARC questions have three answers too). ARC-Challenge,
    ARC-Easy and openbookqa share the answerN format: such records stay None and are reported as ambiguous,
    never guessed.
    """
    index: dict[str, set[str]] = {}
    for task, task_records in (reference or {}).items():
        _check_task(task)
        for record in task_records:
            index.setdefault(record["instruction"], set()).add(task)
    report = TaskIdReport(total=len(records))
    ids: list[int | None] = []
    for i, record in enumerate(records):
        instruction = record["instruction"]
        candidates = format_candidates(instruction)
        own = TASKS[record["task_id"]] if "task_id" in record else record.get("task")
        if own is not None:
            if candidates and own not in candidates:
                report.conflicts.append(f"record {i}: task {own!r}, answer format of {'/'.join(candidates)}")
            report.by_method["record"] += 1
            ids.append(TASK_IDS[own])
            continue
        matched = sorted(index.get(instruction, ()), key=TASK_IDS.__getitem__)
        narrowed = [t for t in matched if t in candidates] if len(matched) > 1 and candidates else matched
        if len(narrowed) == 1:
            report.by_method["reference"] += 1
            ids.append(TASK_IDS[narrowed[0]])
            continue
        form = answer_format(instruction)
        if len(narrowed) > 1:
            task, candidates = None, tuple(narrowed)
        elif len(candidates) == 1:
            task = candidates[0]
        elif form == ("answer", 3):
            task = "social_i_qa"
            report.three_answer_rule += 1
        else:
            task = None
            candidates = tuple(t for t in candidates if t in _MULTIPLE_CHOICE_TASKS)
        if task is not None:
            report.by_method["format"] += 1
            ids.append(TASK_IDS[task])
        elif candidates:
            report.ambiguous.setdefault(candidates, []).append(i)
            ids.append(None)
        else:
            report.unrecognised.append(i)
            ids.append(None)
    return ids, report


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


class CommonsenseBenchmark(InstructBenchmark):
    """Commonsense reasoning as the paper trains and scores it: one adapter on the eight training sets, greedy
    generation on the eight test sets, the official answer parsing (`mode` picks the headline; both parsers are
    recorded). Task i of `tasks` has id i; the default order is the official mapping (boolq 0 ... openbookqa 7),
    which official checkpoints assume. A task with fewer train records than LLM-Adapters' (`FULL_TRAIN_RECORDS`)
    is an error unless `allow_partial_train`, and then metrics.json says so (`data_facts`)."""

    # The paper's column order (ARC-e before ARC-c), not the task-id order.
    task_labels: ClassVar[Mapping[str, str]] = {
        "boolq": "BoolQ",
        "piqa": "PIQA",
        "social_i_qa": "SIQA",
        "hellaswag": "HellaS.",
        "winogrande": "WinoG.",
        "ARC-Easy": "ARC-e",
        "ARC-Challenge": "ARC-c",
        "openbookqa": "OBQA",
    }
    metric_labels: ClassVar[Mapping[str, str]] = {"accuracy": "acc"}

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        train_file: str | os.PathLike[str] | None = None,
        tasks: Sequence[str] = TASKS,
        mode: str = "official",
        allow_partial_train: bool = False,
        name: str = "commonsense",
        **kwargs: Any,
    ) -> None:
        if data_dir is None:
            raise ValueError(
                "commonsense needs a local copy of the LLM-Adapters data (AGI-Edgerunners/LLM-Adapters dataset/: "
                "<task>/test.json; <task>/train.json, train/<task>_train.json or a combined "
                "commonsense_170k_taskid.json as benchmark.train_file): set MTLLORA_DATA_DIR or paths.data_dir"
            )
        for task in tasks:
            _check_task(task)
        _check_mode(mode)
        self.data_dir = Path(data_dir)
        self.train_file = train_file
        self.mode = mode
        self.allow_partial_train = allow_partial_train
        self._train: dict[str, list[Record]] | None = None
        # The first existing candidate, else the preferred path: `check_inputs` lists every missing one at once.
        candidates = {task: _test_candidates(data_dir, task) for task in tasks}
        test_files = {task: next((p for p in paths if p.is_file()), paths[0]) for task, paths in candidates.items()}
        super().__init__(tasks=list(tasks), train_files=[], test_files=test_files, name=name, **kwargs)

    @classmethod
    def for_serving(cls, config: Mapping[str, Any], tasks: Sequence[str] | None = None) -> CommonsenseBenchmark:
        """Export and predict read no data: without a data_dir on this machine, the data paths name that (any file
        read from them fails naming `<no data: serving only>`)."""
        return super().for_serving({**config, "data_dir": config.get("data_dir") or "<no data: serving only>"}, tasks)

    def check_inputs(self) -> None:
        """Reads and validates the test file of every task and the whole train set (per-task files or
        `train_file`, downloaded if a URL), refusing a partial train set unless `allow_partial_train`; raises one
        InputsError listing every problem, the expected layout and where to download the data."""
        problems = []
        for task in self.tasks:
            try:
                if not load_test(self.data_dir, task):
                    problems.append(f"test set {task!r}: {test_file(self.data_dir, task)} has no records")
            except FileNotFoundError:
                tried = " or ".join(map(str, _test_candidates(self.data_dir, task)))
                problems.append(f"test set {task!r}: no file {tried}")
            except ValueError as err:
                problems.append(str(err))
        try:
            train = self._train_by_task()
        except (OSError, ValueError) as err:
            problems.append(str(err).replace(f" {_LAYOUT}", ""))
        else:
            per_task_files = train_files(self.data_dir) if self.train_file is None else {}
            for task, records in train.items():
                source = per_task_files.get(task, self.train_file)
                where = f"{source}: {task} record {{}}".format  # record i of the task in its source
                if problem := training_problem(task, records, str(source), where):
                    problems.append(problem)
        if problems:
            raise InputsError(
                f"{self.name}: the data under data_dir={self.data_dir} is not usable:\n"
                + "".join(f"  - {problem}\n" for problem in problems)
                + _LAYOUT
            )

    def data_facts(self) -> dict[str, Any]:
        """Records per task of the train set this run trained on (before `max_train_samples`), LLM-Adapters' counts,
        and whether some task is partial (allowed by `allow_partial_train`)."""
        counts = {task: len(records) for task, records in self._train_by_task().items()}
        return {
            "train_source": str(self.train_file) if self.train_file is not None else str(_root(self.data_dir)),
            "train_records": counts,
            "full_train_records": {task: FULL_TRAIN_RECORDS[task] for task in self.tasks},
            "partial": bool(_partial_tasks(counts)),
        }

    def data_files(self) -> list[Path]:
        """The test file of each task and the train set: `train_file`, else the per-task train files."""
        train = self._local_train_file()
        tests = [test_file(self.data_dir, task) for task in self.tasks]
        return [*tests, *([train] if train is not None else train_files(self.data_dir).values())]

    def train_records(self) -> list[Record]:
        grouped = self._train_by_task()
        return [{**r, "task_id": i} for i, task in enumerate(self.tasks) for r in grouped[task]]

    def _train_by_task(self) -> dict[str, list[Record]]:
        """{task of `tasks`: train records}, loaded once (`check_inputs` reads them before the model loads, training
        reuses them); a partial task is an error unless `allow_partial_train`."""
        if self._train is None:
            grouped = load_train(self.data_dir, self._local_train_file())
            train = {task: grouped[task] for task in self.tasks}
            partial = _partial_tasks({task: len(records) for task, records in train.items()})
            if partial and not self.allow_partial_train:
                raise ValueError(
                    f"partial train set: {_describe_partial(partial)} "
                    f"({sum(map(len, train.values())):,} of {sum(FULL_TRAIN_RECORDS[t] for t in self.tasks):,} "
                    "records of LLM-Adapters' commonsense_170k). The paper trains on all of them: pass the complete "
                    "files (e.g. benchmark.train_file=commonsense_170k_taskid.json), or opt in to training on this "
                    "subset with benchmark.allow_partial_train=true (metrics.json then records the counts)"
                )
            if partial:
                logger.warning("training on a partial train set (allow_partial_train): %s", _describe_partial(partial))
            self._train = train
        return self._train

    def _local_train_file(self) -> Path | None:
        """The combined train file as a local path; a URL (e.g. the LLM-Adapters commonsense_170k.json) is
        downloaded once into the cache folder."""
        if self.train_file is None or "://" not in str(self.train_file):
            return None if self.train_file is None else Path(self.train_file)
        url = str(self.train_file)
        local = self.cache_dir / url.rstrip("/").rsplit("/", 1)[-1]
        if not local.exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            part = local.with_name(f"{local.name}.{os.getpid()}.part")  # one per process: DeepSpeed ranks race
            try:
                with urllib.request.urlopen(url) as response:
                    part.write_bytes(response.read())
            except OSError as err:
                raise OSError(f"could not download benchmark.train_file {url}: {err}") from err
            part.replace(local)
        return local

    def test_records(self, task: str) -> list[Record]:
        return self._subsample(load_test(self.data_dir, task), self.max_eval_samples, seed=0)

    def extract_answer(self, task: str, response: str) -> str:
        return extract_answer(task, response, self.mode)

    def is_correct(self, task: str, prediction: str, label: str) -> bool:
        return is_correct(prediction, label, self.mode)

    def score(self, task: str, rows: list[dict[str, Any]]) -> dict[str, float]:
        """The headline metrics (`mode`), plus `accuracy_official` and `accuracy_strict`: both official parsers on
        the same responses (the paper scored LoRA/DoRA with the strict one, the others with the official one);
        each row gets its `prediction_<mode>` and `correct_<mode>`."""
        metrics = super().score(task, rows)
        for mode in MODES:
            for row in rows:
                row[f"prediction_{mode}"] = extract_answer(task, row["response"], mode)
                row[f"correct_{mode}"] = is_correct(row[f"prediction_{mode}"], row["label"], mode)
            metrics[f"accuracy_{mode}"] = sum(row[f"correct_{mode}"] for row in rows) / len(rows)
        return metrics


def _partial_tasks(counts: Mapping[str, int]) -> dict[str, int]:
    """{task: records} of the tasks with fewer train records than LLM-Adapters' train file."""
    return {task: n for task, n in counts.items() if n < FULL_TRAIN_RECORDS[task]}


def _describe_partial(partial: Mapping[str, int]) -> str:
    return ", ".join(f"{task} has {n:,} of {FULL_TRAIN_RECORDS[task]:,} records" for task, n in partial.items())
