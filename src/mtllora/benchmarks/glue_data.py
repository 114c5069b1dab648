"""GLUE tasks as `datasets.Dataset`s with one schema, from the Hugging Face hub or local GLUE tsv files.

Every split has the columns `text_a` (str), `text_b` (str, or None for the single-sentence tasks CoLA and
SST-2), `label` (int64 class id; float32 similarity score for STS-B) and `idx` (int64, row order in the source).
Class ids follow the hub dataset `nyu-mll/glue`, so a model trained on one source can be evaluated on the other.

Local files use the layout written by the GLUE download script: `<data_dir>/<TASK>/{train,dev}.tsv` (MNLI:
`dev_matched.tsv`, `dev_mismatched.tsv`). They are parsed strictly: tab-separated, no quote processing (GLUE
text contains unbalanced quotes), and any malformed line is an error naming the file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .base import read_text

logger = logging.getLogger(__name__)

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
GLUE_HUB_ID = "nyu-mll/glue"
_COLUMNS = ("text_a", "text_b", "label", "idx")
_STSB_RANGE = (0.0, 5.0)

# Split name -> tsv file name in the GLUE download script's layout.
_TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its files live, its labels and which splits are evaluated."""

    name: str
    directory: str
    num_labels: int
    label_names: tuple[str, ...]
    # Metrics key -> split name; excluded from the hash because dicts are unhashable.
    eval_splits: dict[str, str] = field(hash=False)

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a float score rather than a class id."""
        return self.num_labels == 1


@dataclass(frozen=True)
class _TaskSpec:
    """A task plus how its columns are named on the hub and in the tsv files (the per-task differences)."""

    task: GlueTask
    hub_text: tuple[str, str | None]  # text_a, text_b columns of nyu-mll/glue
    tsv_text: tuple[str, str | None]  # text_a, text_b columns of the tsv header
    tsv_label: str  # label column of the tsv header
    tsv_label_values: tuple[str, ...]  # label as written in the tsv, position = class id; () for regression
    tsv_columns: tuple[str, ...] = ()  # fixed column names of a file without a header row (CoLA)


def _spec(
    name: str,
    directory: str,
    label_names: tuple[str, ...],
    hub_text: tuple[str, str | None],
    tsv_text: tuple[str, str | None],
    tsv_label: str,
    tsv_label_values: tuple[str, ...],
    tsv_columns: tuple[str, ...] = (),
    eval_splits: dict[str, str] | None = None,
) -> _TaskSpec:
    """Returns a _TaskSpec; tasks are evaluated on "validation" unless `eval_splits` says otherwise (MNLI)."""
    num_labels = len(label_names) or 1  # a regression task has one output and no label names
    task = GlueTask(name, directory, num_labels, label_names, eval_splits or {name: "validation"})
    return _TaskSpec(task, hub_text, tsv_text, tsv_label, tsv_label_values, tsv_columns)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_SPECS: dict[str, _TaskSpec] = {
    spec.task.name: spec
    for spec in (
        # CoLA has no header row; its columns are: source, label, the author's original mark, sentence.
        _spec(
            "cola",
            "CoLA",
            ("unacceptable", "acceptable"),
            ("sentence", None),
            ("sentence", None),
            "label",
            _BINARY,
            tsv_columns=("source", "label", "original_judgment", "sentence"),
        ),
        _spec("sst2", "SST-2", ("negative", "positive"), ("sentence", None), ("sentence", None), "label", _BINARY),
        _spec(
            "mrpc",
            "MRPC",
            ("not_equivalent", "equivalent"),
            ("sentence1", "sentence2"),
            ("#1 String", "#2 String"),
            "Quality",
            _BINARY,
        ),
        _spec(
            "qqp",
            "QQP",
            ("not_duplicate", "duplicate"),
            ("question1", "question2"),
            ("question1", "question2"),
            "is_duplicate",
            _BINARY,
        ),
        _spec("stsb", "STS-B", (), ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", ()),
        # MNLI dev files have label1..label5 before gold_label, train only label1: columns are found by header name.
        _spec(
            "mnli",
            "MNLI",
            ("entailment", "neutral", "contradiction"),
            ("premise", "hypothesis"),
            ("sentence1", "sentence2"),
            "gold_label",
            ("entailment", "neutral", "contradiction"),
            eval_splits={"mnli_m": "validation_matched", "mnli_mm": "validation_mismatched"},
        ),
        _spec("qnli", "QNLI", _NLI2, ("question", "sentence"), ("question", "sentence"), "label", _NLI2),
        _spec("rte", "RTE", _NLI2, ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2),
    )
}


def _task_spec(name: str) -> _TaskSpec:
    """Returns the spec of task `name`, or raises ValueError listing the known tasks."""
    if name not in _SPECS:
        raise ValueError(f"unknown GLUE task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return _SPECS[name]


def glue_task(name: str) -> GlueTask:
    """Returns the GlueTask called `name` (e.g. "mnli"), so callers size heads and pick eval splits from one table."""
    return _task_spec(name).task


def glue_input_columns(name: str) -> tuple[str, str | None]:
    """Returns the names of task `name`'s text fields in the hub dataset (e.g. ("sentence1", "sentence2")), the
    fields a user's own input records carry."""
    return _task_spec(name).hub_text


def _features(task: GlueTask) -> datasets.Features:
    """Returns the common schema of every split; the label dtype depends on regression vs classification."""
    return datasets.Features(
        {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.Value("float32" if task.is_regression else "int64"),
            "idx": datasets.Value("int64"),
        }
    )


def _check_split(task: GlueTask, split: str) -> None:
    """Raises ValueError unless `split` is "train" or one of the task's evaluation splits."""
    splits = ("train", *task.eval_splits.values())
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for GLUE task {task.name!r}; expected one of {', '.join(splits)}")


def _layout_hint(task: GlueTask) -> str:
    """Returns how to provide the data for `task`, appended to every missing-data error."""
    files = ", ".join(_TSV_FILES[split] for split in ("train", *task.eval_splits.values()))
    return (
        f"Expected the GLUE download script layout <data_dir>/{task.directory}/{{{files}}} "
        f"(data_dir, or MTLLORA_DATA_DIR, may also be the parent folder holding glue/); "
        f"or pass data_dir=None to load {GLUE_HUB_ID!r} from the Hugging Face hub."
    )


def _load_hub(spec: _TaskSpec, split: str) -> datasets.Dataset:
    """Returns `split` of the task from the hub with the hub columns mapped onto _COLUMNS."""
    task = spec.task
    try:
        dataset = datasets.load_dataset(GLUE_HUB_ID, task.name)[split]
    except OSError as err:  # datasets raises ConnectionError offline, FileNotFoundError for missing files
        raise OSError(
            f"could not load GLUE task {task.name!r} from the Hugging Face hub ({GLUE_HUB_ID!r}, config "
            f"{task.name!r}): {err}. Without hub access, use a local copy: pass data_dir (or set MTLLORA_DATA_DIR) "
            f"to a folder in the GLUE download script layout, glue_data/<TASK>/{{train,dev}}.tsv "
            f"(MNLI: dev_matched.tsv, dev_mismatched.tsv)."
        ) from err
    hub_a, hub_b = spec.hub_text
    dataset = dataset.select_columns([name for name in (hub_a, hub_b, "label", "idx") if name is not None])
    dataset = dataset.rename_columns({hub_a: "text_a"} | ({hub_b: "text_b"} if hub_b is not None else {}))
    if hub_b is None:
        dataset = dataset.add_column("text_b", [None] * len(dataset), feature=datasets.Value("string"))
    return dataset.select_columns(list(_COLUMNS)).cast(_features(task))


def _task_directory(spec: _TaskSpec, data_dir: Path, task_dir: str | None) -> Path:
    """Returns the folder holding the task's tsv files: `data_dir/<dir>` or, failing that, `data_dir/glue/<dir>`.

    Both are accepted so that MTLLORA_DATA_DIR may name the shared data root (which holds glue/) or a GLUE
    download directly; if both exist the choice would be a guess, so that is an error.
    """
    relative = task_dir if task_dir is not None else spec.task.directory
    candidates = list(dict.fromkeys((data_dir / relative, data_dir / "glue" / relative)))
    found = [path for path in candidates if path.is_dir()]
    if len(found) > 1:
        raise ValueError(
            f"GLUE task {spec.task.name!r}: both {found[0]} and {found[1]} exist under data_dir={data_dir}; "
            f"point data_dir at the folder that holds the one to use"
        )
    if not found:
        raise FileNotFoundError(
            f"GLUE task {spec.task.name!r}: no folder {' or '.join(map(str, candidates))}. {_layout_hint(spec.task)}"
        )
    return found[0]


def _parse_label(spec: _TaskSpec, value: str, where: str) -> int | float:
    """Returns the label id (or STS-B score) written as `value`; `where` ("file:line") prefixes errors."""
    if spec.task.is_regression:
        low, high = _STSB_RANGE
        try:
            score = float(value)
        except ValueError:
            score = None
        if score is None or not low <= score <= high:  # the comparison also rejects nan
            raise ValueError(f"{where}: score {value!r} is not a number in [{low:g}, {high:g}]")
        return score
    try:
        return spec.tsv_label_values.index(value)
    except ValueError:
        expected = ", ".join(repr(v) for v in spec.tsv_label_values)
        raise ValueError(f"{where}: unknown label {value!r}, expected one of {expected}") from None


def _read_tsv(spec: _TaskSpec, path: Path) -> dict[str, list]:
    """Returns the rows of a GLUE tsv file as _COLUMNS -> values, raising ValueError at the first bad line."""
    # The byte-order mark that starts the MRPC files goes; "\r" inside text stays as is.
    lines = read_text(path).removeprefix("\ufeff").split("\n")
    if lines[-1] == "":  # the final newline, not an empty row
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]  # CRLF line ends
    first = 0
    columns = spec.tsv_columns
    if not columns:
        if not lines:
            raise ValueError(f"{path}: empty file, expected a header row")
        columns, first = tuple(lines[0].split("\t")), 1
    wanted = [name for name in (*spec.tsv_text, spec.tsv_label) if name is not None]
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise ValueError(f"{path}:1: header has no column {missing[0]!r}; columns: {', '.join(columns)}")
    col_a, col_label = columns.index(spec.tsv_text[0]), columns.index(spec.tsv_label)
    col_b = None if spec.tsv_text[1] is None else columns.index(spec.tsv_text[1])
    rows: dict[str, list] = {name: [] for name in _COLUMNS}
    for idx, line in enumerate(lines[first:]):
        number = first + idx + 1  # 1-based line number in the file, header included
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(
                f"{path}:{number}: expected {len(columns)} tab-separated fields ({', '.join(columns)}), "
                f"got {len(fields)}"
            )
        rows["text_a"].append(fields[col_a])
        rows["text_b"].append(None if col_b is None else fields[col_b])
        rows["label"].append(_parse_label(spec, fields[col_label], f"{path}:{number}"))
        rows["idx"].append(idx)
    if not rows["idx"]:
        # A split without rows would train without the task, or score it on nothing, and still report numbers.
        header = "" if spec.tsv_columns else " besides its header"
        raise ValueError(f"{path}: no data rows{header}; expected at least one row of {', '.join(columns)}")
    return rows


def missing_glue_files(
    tasks: Sequence[str], data_dir: str | Path, task_dirs: Mapping[str, str] | None = None
) -> list[str]:
    """Returns the train/dev files (or task folders) of `tasks` that a local GLUE copy lacks, so that a run can
    name them all before it starts instead of failing on the first one after loading the model."""
    missing = []
    for task in tasks:
        spec = _task_spec(task)
        try:
            folder = _task_directory(spec, Path(data_dir).expanduser(), (task_dirs or {}).get(task))
        except FileNotFoundError:
            relative = (task_dirs or {}).get(task) or spec.task.directory
            missing.append(f"{Path(data_dir) / relative}/ (or {Path(data_dir) / 'glue' / relative}/)")
            continue
        for split in ("train", *spec.task.eval_splits.values()):
            if not (folder / _TSV_FILES[split]).is_file():
                missing.append(str(folder / _TSV_FILES[split]))
    return missing


def glue_files(tasks: Sequence[str], data_dir: str | Path, task_dirs: Mapping[str, str] | None = None) -> list[Path]:
    """Returns the train and dev tsv files of `tasks` that a local GLUE copy holds (`missing_glue_files` names
    those it lacks): what a run reads, for its data fingerprint."""
    files = []
    for task in tasks:
        spec = _task_spec(task)
        folder = _task_directory(spec, Path(data_dir).expanduser(), (task_dirs or {}).get(task))
        files += [folder / _TSV_FILES[split] for split in ("train", *spec.task.eval_splits.values())]
    return files


def load_glue_split(
    task: str, split: str, data_dir: str | Path | None = None, task_dir: str | None = None
) -> datasets.Dataset:
    """Returns one split of a GLUE task with the columns text_a, text_b, label, idx.

    `split` is "train" or "validation" ("validation_matched"/"validation_mismatched" for MNLI). With
    `data_dir=None` the split comes from the hub (`nyu-mll/glue`); otherwise from the tsv files under
    `data_dir/<TASK>/` or `data_dir/glue/<TASK>/`. `task_dir` replaces `<TASK>` with another folder relative to
    `data_dir`, e.g. "MNLI/k-shot/16-42" for a k-shot subset. text_b is None for CoLA and SST-2.
    """
    spec = _task_spec(task)
    _check_split(spec.task, split)
    if data_dir is None:
        if task_dir is not None:
            raise ValueError(f"task_dir={task_dir!r} is relative to data_dir; pass data_dir as well")
        return _load_hub(spec, split)
    path = _task_directory(spec, Path(data_dir).expanduser(), task_dir) / _TSV_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"GLUE task {task!r} split {split!r}: no file {path}. {_layout_hint(spec.task)}")
    logger.info("GLUE %s %s: reading %s", task, split, path)
    return datasets.Dataset.from_dict(_read_tsv(spec, path), features=_features(spec.task))
