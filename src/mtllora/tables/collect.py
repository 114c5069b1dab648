"""The tables' data: runs read from their records (`RunRecord`) and grouped into blocks of rows, with their seed-paired
differences, parser views and ablation blocks; and reference blocks read from yaml. No rendering here
(`mtllora.tables.render`); the module docstring of `mtllora.tables` says what the tables show.

What a benchmark contributes (its eval sets' display names, its metrics' names, its average) comes from its class,
named by the run's stored config (`config.benchmark._target_`), read without building it or reading its data.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from ..benchmarks.base import Benchmark
from ..record import RecordError, RunRecord, nested_value
from ..rundir import suffix_overrides

# Row order of the paper's tables; variants of other methods follow, alphabetically by label.
METHOD_ORDER = ("lora", "dora", "multilora", "moelora", "mtl_lora")
AVERAGE = "average"  # key of the Avg column among the task keys
RUNS_SOURCE = "runs"  # `Block.source` of blocks built from our own runs
SINGLE_TASK_LABEL = "LoRA (single-task)"
# Directory-naming overrides left out of a sweep row's label: the row's label and its columns already show them.
SHOWN_KEYS = ("method.label", "benchmark.tasks")
# The default seed-paired differences under each block of our runs (`python -m mtllora.tables --pair FIRST SECOND`
# replaces them), as (first, second) row labels: first − second, for every block that has a row of each. The headline
# pair first: MTL-LoRA against LoRA at MTL-LoRA's parameter count (r=16); then against the r=8 LoRA the paper compares
# with and the other baselines; then what each multi-task variant gains or loses against training the tasks apart
# (one LoRA per task).
DIFF_PAIRS: tuple[tuple[str, str], ...] = (
    *(("MTL-LoRA", label) for label in ("LoRA (r=16)", "LoRA", "DoRA", "MultiLoRA", "MoELoRA")),
    *((label, SINGLE_TASK_LABEL) for label in ("MTL-LoRA", "LoRA", "LoRA (r=16)", "DoRA", "MultiLoRA", "MoELoRA")),
)
# The official commonsense evaluators (docs/commonsense.md), by the `benchmark.mode` that reproduces their answer
# parsing.
PARSER_SCRIPTS = {
    "official": "mlora_evaluate.py: first match, bare-digit fallback, substring rule",
    "strict": "lora_evaluate.py: first match, exact equality",
}
# The parser of the evaluator each method's official script used: the PEFT LoRA and DoRA baselines were scored by
# lora_evaluate.py (script/llama2_7B_dora_qkvo_eval.sh), MTL-LoRA, MultiLoRA and MoELoRA by mlora_evaluate.py.
PAPER_PARSERS = {"lora": "strict", "dora": "strict"}
DEFAULT_PAPER_PARSER = "official"
PAPER_VIEW = "paper's evaluators"
PAPER_VIEW_NOTE = (
    "As the paper compares them: each method under the evaluator of its official script (LoRA, DoRA: strict, "
    f"{PARSER_SCRIPTS['strict']}; the others: official, {PARSER_SCRIPTS['official']})."
)
MISSING = "—"  # a cell of a parser view whose run did not record that parser
# The default ablation blocks (`--ablation LABEL` replaces them): the rows of the same method as the row of this label
# but labelled otherwise (configs/method/mtl_lora_*.yaml: "MTL-LoRA (no Λ_t)", ...) leave the block of their profile
# for a block of their own, "ablations of MTL-LoRA", beside that row, each paired with it (variant − MTL-LoRA).
ABLATIONS: tuple[str, ...] = ("MTL-LoRA",)


class TablesError(Exception):
    """Input that cannot be tabulated: no runs, or a malformed metrics.json or reference yaml (named in the message)."""


@dataclass(frozen=True)
class Run:
    """One training run, as recorded in its metrics.json (task metrics in 0..1, task scores and average ×100)."""

    path: Path
    benchmark: str
    profile: str
    model: str
    method: str
    label: str
    seed: int
    task_order: tuple[str, ...]
    metrics: dict[str, dict[str, float]]
    task_scores: dict[str, float]
    average: float
    trainable: int
    total: int
    # The class of its benchmark (config.benchmark._target_): its eval sets' and metrics' names and its average.
    kind: type[Benchmark]
    parts: int = 1  # number of metrics.json files combined into this run (single-task runs of one seed)
    # Commonsense: the headline's answer parser (benchmark.mode), and {parser: {task: score ×100}} for each parser the
    # run recorded; None and {} for benchmarks without parsers.
    parser: str | None = None
    parser_scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    view: str = ""  # the parser view this run was derived for ("" for a run as recorded)
    # The overrides that name its directory besides the run name's own parts, as (key, value shown), e.g.
    # (("trainer.learning_rate", "0.002"),): a sweep's run; () for a run of the config as it stands.
    setting: tuple[tuple[str, str], ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # the run's stored config ({} when it has none)
    warnings: tuple[str, ...] = ()  # its metrics.json's "warnings" (RunWarning messages: caveats on its numbers)

    @property
    def variant(self) -> str:
        """The label of the run's row: its label, then its setting (`LoRA, trainer.learning_rate=0.002`)."""
        return ", ".join([self.label, *(f"{key}={value}" for key, value in self.setting)])


@dataclass(frozen=True)
class Row:
    """One table row: the numbers behind each column key (for the CSV and the plot) and their display text."""

    label: str
    method: str
    seeds: int | None  # None for reference rows
    stats: dict[str, tuple[float | None, float | None]]  # key -> (mean, std); std None for a single value
    cells: dict[str, str]
    params: str
    trainable: int | None = None
    total: int | None = None
    runs: tuple[Run, ...] = ()  # the (combined) runs behind a row of our own runs, one per seed
    note: str = ""  # shown under the table, e.g. why there is no Avg


@dataclass(frozen=True)
class Difference:
    """The seed-paired difference of two rows of one block: first − second."""

    first: str
    second: str
    seeds: int  # seeds both rows have
    stats: dict[str, tuple[float, float | None, int]]  # key -> (mean, standard error or None under 2 pairs, pairs)

    @property
    def label(self) -> str:
        return f"{self.first} − {self.second}"


@dataclass(frozen=True)
class Block:
    """One table: our runs of one (profile, model), or one reference source."""

    title: str
    source: str
    profile: str
    model: str
    note: str
    columns: list[str]  # task keys
    metric_columns: list[str]  # "task.metric" keys of the tasks scored by more than one metric
    rows: list[Row]
    differences: tuple[Difference, ...] = ()
    view: str = ""  # the parser view of the block's runs ("" for the runs as recorded)
    # Display names of its task keys and metric names (`Benchmark.task_labels`, `metric_labels`); a key not listed
    # is shown as it is.
    task_labels: Mapping[str, str] = field(default_factory=dict)
    metric_labels: Mapping[str, str] = field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...] = ()  # the (first, second) labels whose differences it shows, where both exist
    part: str = ""  # "" for a profile's block, "ablations of <label>" for its ablation block

    def task_name(self, key: str) -> str:
        """The display name of a task key (`CoLA` for `cola`), or the key itself."""
        return self.task_labels.get(key, key)

    def metric_name(self, key: str) -> str:
        """The display name of a `task.metric` key (`MRPC F1` for `mrpc.f1`)."""
        task, metric = key.split(".", 1)
        return f"{self.task_name(task)} {self.metric_labels.get(metric, metric)}"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _get(data: Any, where: str | Path, *keys: str) -> Any:
    return nested_value(data, where, *keys, error=TablesError)


def read_run_record(path: Path) -> Run:
    """Returns the run recorded in `path` (a metrics.json, read as a `RunRecord`); raises TablesError naming the file
    and what is wrong (bad JSON, a missing key, a value of the wrong type, a benchmark class that cannot be found)."""
    try:
        record = RunRecord.read(path)
        task_order = tuple(record.task_order)
        task_scores = {task: float(record.task_scores[task]) for task in task_order}
        config = record.config or {}
        parser = config.get("benchmark", {}).get("mode")
        return Run(
            path=path,
            benchmark=str(record.benchmark),
            profile=str(record.profile),
            model=str(record.model),
            method=str(record.method),
            label=str(record.label),
            seed=int(record.seed),
            task_order=task_order,
            metrics={task: {k: float(v) for k, v in record.tasks[task].items()} for task in task_order},
            task_scores=task_scores,
            average=float(record.average),
            trainable=int(record.params["trainable"]),
            total=int(record.params["total"]),
            kind=benchmark_class(config, path),
            parser=parser if parser in PARSER_SCRIPTS else None,
            parser_scores=_parser_scores(record, parser, task_scores) if parser in PARSER_SCRIPTS else {},
            setting=run_setting(config),
            config=config,
            warnings=tuple(str(message) for message in record.warnings),
        )
    except (ValueError, TypeError, AttributeError) as err:  # RecordError, or a value of the wrong type
        raise TablesError(str(err) if isinstance(err, RecordError) else f"{path}: {err}") from None


def benchmark_class(config: Mapping[str, Any], path: Path) -> type[Benchmark]:
    """Returns the benchmark class a run's stored config names (`benchmark._target_`), imported but not built;
    raises TablesError naming the file when the config names none or something that is not a Benchmark."""
    target = _get({"config": config}, path, "config", "benchmark", "_target_")
    try:
        cls = get_class(str(target))
    except (ImportError, ValueError) as err:
        raise TablesError(f"{path}: config.benchmark._target_ {target!r} cannot be imported ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
        raise TablesError(f"{path}: config.benchmark._target_ {target!r} is not a Benchmark class")
    return cls


_ABSENT = object()


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """Returns the value at dotted `key` of a stored config, or `_ABSENT`."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def run_setting(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Returns (key, value shown) for each override named in the config's `run_name` (`suffix_overrides`) but not
    in `SHOWN_KEYS`: the value the config holds, or the name's own text where the config lacks the key (a `~key`
    deletion)."""
    run_name = config.get("run_name")
    setting = []
    for item in suffix_overrides(run_name) if isinstance(run_name, str) else []:
        key, _, text = item.partition("=")
        if key not in SHOWN_KEYS:
            value = config_value(config, key)
            setting.append((key, text if value is _ABSENT else _format_value(value)))
    return tuple(setting)


def _parser_scores(record: RunRecord, headline: str, task_scores: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{parser: {task: accuracy ×100}} for each parser whose `accuracy_<parser>` every task records; the headline
    parser falls back to the task scores (a metrics.json written before both parsers were recorded)."""
    scores = {}
    for parser in PARSER_SCRIPTS:
        key = f"accuracy_{parser}"
        if all(key in record.tasks[task] for task in task_scores):
            scores[parser] = {task: 100 * float(record.tasks[task][key]) for task in task_scores}
    scores.setdefault(headline, dict(task_scores))
    return scores


def _task_rank(run: Run, task: str) -> int:
    """A task's place in its benchmark's order (`Benchmark.task_labels`); tasks it does not list come last."""
    order = list(run.kind.task_labels)
    return order.index(task) if task in order else len(order)


def combine_runs(runs: Sequence[Run]) -> Run:
    """Returns the runs of one variant and seed as one run: itself for one run; for several (single-task runs),
    their tasks in their benchmark's task order (unknown ones after, in run order), each task's metrics and score from
    the run that trained it, the average over all of them as one run computes it (`Benchmark.score_average`), and the
    sum of their trainable parameters (the frozen backbone counted once in the total).

    Raises TablesError naming two of the runs when they share a task: that seed's task would be counted twice.
    """
    for first, second in itertools.combinations(runs, 2):
        shared = [task for task in first.task_order if task in second.task_order]
        if shared:
            raise TablesError(
                f"{first.path} and {second.path} both record {first.variant} seed {first.seed} "
                f"(both have {', '.join(shared)}); remove one: runs of one variant and seed are combined only when "
                "their tasks are disjoint (single-task runs)"
            )
    if len(runs) == 1:
        return runs[0]
    tasks = [task for run in runs for task in run.task_order]
    order = tuple(sorted(tasks, key=lambda task: (_task_rank(runs[0], task), tasks.index(task))))
    owner = {task: run for run in runs for task in run.task_order}
    trainable = sum(run.trainable for run in runs)
    task_scores = {task: owner[task].task_scores[task] for task in order}
    return Run(
        path=runs[0].path,
        benchmark=runs[0].benchmark,
        profile=runs[0].profile,
        model=runs[0].model,
        method=runs[0].method,
        label=runs[0].label,
        seed=runs[0].seed,
        setting=runs[0].setting,
        config=runs[0].config,
        task_order=order,
        metrics={task: owner[task].metrics[task] for task in order},
        task_scores=task_scores,
        average=runs[0].kind.score_average(task_scores),
        trainable=trainable,
        kind=runs[0].kind,
        total=max(run.total - run.trainable for run in runs) + trainable,
        parts=sum(run.parts for run in runs),
        warnings=tuple(message for run in runs for message in run.warnings),
        parser=runs[0].parser if len({run.parser for run in runs}) == 1 else None,
        parser_scores={
            parser: {task: owner[task].parser_scores[parser][task] for task in order}
            for parser in PARSER_SCRIPTS
            if all(parser in run.parser_scores for run in runs)
        },
    )


def load_runs(runs_dir: Path) -> list[Run]:
    """Returns every run under `runs_dir` (its metrics.json files, searched recursively), sorted by path, with the
    runs of one variant and seed combined by `combine_runs` (single-task runs; `Run.parts` counts the files).

    Raises TablesError when there is none, or when two files record the same variant and seed on a common task:
    averaging both would count that seed twice.
    """
    paths = sorted(runs_dir.rglob("metrics.json"))
    if not paths:
        raise TablesError(f"no runs to tabulate: no metrics.json under {runs_dir}/ (train some runs first)")
    groups: dict[tuple, list[Run]] = {}
    for run in map(read_run_record, paths):
        key = (run.benchmark, run.profile, run.model, run.method, run.label, run.setting, run.seed)
        groups.setdefault(key, []).append(run)
    return [combine_runs(group) for group in groups.values()]


def format_params(trainable: int, total: int) -> str:
    """Returns the #Params cell, e.g. "0.12M (0.54%)": trainable count in millions and its share of `total`."""
    return f"{trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)"


def _format_mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _variant_order(method: str, label: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, label


def _setting_order(setting: Sequence[tuple[str, str]]) -> tuple:
    """Sorts a sweep's rows by their values, numbers as numbers (5e-4 before 0.001)."""

    def rank(text: str) -> tuple[int, float, str]:
        try:
            return 0, float(text), ""
        except ValueError:
            return 1, 0.0, text

    return tuple((key, rank(value)) for key, value in setting)


def _run_value(run: Run, key: str, columns: Sequence[str]) -> float | None:
    """Returns a run's score for a task key, or its Avg when it covers all of `columns` (else None)."""
    if key == AVERAGE:
        return run.average if set(columns) <= set(run.task_order) else None
    return run.task_scores.get(key)


def _run_row(method: str, label: str, runs: Sequence[Run], columns: Sequence[str]) -> Row:
    """The row of one variant: per key the mean and sample std over its runs (one per seed); no Avg when a run lacks
    some of the block's `columns`."""
    values: dict[str, list[float]] = {}
    for run in runs:
        for task in run.task_order:
            values.setdefault(task, []).append(run.task_scores[task])
            for metric, value in run.metrics[task].items():
                values.setdefault(f"{task}.{metric}", []).append(100 * value)
    lacking = {run.seed: [task for task in columns if task not in run.task_order] for run in runs}
    lacking = {seed: tasks for seed, tasks in lacking.items() if tasks}
    if not lacking:  # an Avg over fewer tasks than the other rows' would not compare with them
        values[AVERAGE] = [run.average for run in runs]
    stats = {key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None) for key, v in values.items()}
    first = runs[0]  # seeds do not change the architecture, hence the parameter count
    params = format_params(first.trainable, first.total)
    return Row(
        label=label,
        method=method,
        seeds=len(runs),
        stats=stats,
        cells={key: _format_mean_std(*stat) for key, stat in stats.items()},
        params=params if first.parts == 1 else f"{params}, sum of {first.parts} runs",
        trainable=first.trainable,
        total=first.total,
        runs=tuple(runs),
        note=""
        if not lacking
        else f"{label}: no Avg, its runs miss tasks of this block ("
        + "; ".join(
            f"seed {seed}: {', '.join(first.kind.task_labels.get(t, t) for t in tasks)}"
            for seed, tasks in lacking.items()
        )
        + ").",
    )


def paired_difference(first: Row, second: Row, columns: Sequence[str]) -> Difference:
    """Returns first − second per task of `columns` and for Avg, pairing their runs by seed: for each key, the mean
    over the seeds where both runs have a value (Avg: where both cover every column) of the per-seed difference,
    its standard error (sample std of those differences / √n; None with fewer than 2), and n. Keys without a pair
    are left out."""
    second_runs = {run.seed: run for run in second.runs}
    pairs = [(run, second_runs[run.seed]) for run in first.runs if run.seed in second_runs]
    stats = {}
    for key in [*columns, AVERAGE]:
        values = [(_run_value(a, key, columns), _run_value(b, key, columns)) for a, b in pairs]
        diffs = [a - b for a, b in values if a is not None and b is not None]
        if diffs:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
            stats[key] = (statistics.fmean(diffs), se, len(diffs))
    return Difference(first.label, second.label, len(pairs), stats)


def _run_order(run: Run) -> tuple:
    return run.profile, run.model, *_variant_order(run.method, run.label), _setting_order(run.setting), run.seed


def _run_blocks(
    runs: Sequence[Run], pairs: Sequence[tuple[str, str]] = DIFF_PAIRS, ablations: Sequence[str] = ABLATIONS
) -> list[Block]:
    """Returns the blocks of our runs: one per (profile, model, parser view), its rows the variants, with the
    differences of `pairs` that have both rows; then, for each label of `ablations` with variants in that block
    (rows of its method labelled otherwise), the block of those variants beside that label's row, each paired with
    it. Raises TablesError when a label of a pair names more than one row of a block."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in sorted(runs, key=_run_order):
        groups.setdefault((run.profile, run.model, run.view), []).append(run)
    blocks = []
    for (profile, model, view), group in groups.items():
        # Overrides every run of the block shares are the block's setting, not a row's: said once in its note,
        # so that the rows keep their plain labels (and their paired differences).
        common = set.intersection(*(set(run.setting) for run in group))
        shared = ", ".join(f"{key}={value}" for key, value in group[0].setting if (key, value) in common)
        group = [replace(run, setting=tuple(item for item in run.setting if item not in common)) for run in group]
        parts = [("", group, tuple(pairs))]  # (part, its runs, its pairs): the profile's block first
        for base in ablations:
            main = parts[0][1]
            methods = {run.method for run in main if run.variant == base}
            variants = [run for run in main if run.method in methods and run.label != base]
            if variants:
                ablation_pairs = tuple((label, base) for label in _unique(run.variant for run in variants))
                parts[0] = ("", [run for run in main if run not in variants], parts[0][2])
                members = [run for run in main if run.variant == base or run in variants]
                parts.append((f"ablations of {base}", members, ablation_pairs))
        for part, members, part_pairs in parts:
            notes = [_headline_parser_note(members) if not view else ""]
            if part:
                base = part_pairs[0][1]
                notes.insert(
                    0,
                    f"Ablations of {base}: each variant switches one of its parts (its label says which); "
                    f"differences: variant − {base}, paired by seed.",
                )
            if shared:
                notes.insert(0, f"Every row: {shared} (overrides that name the run directories).")
            note = " ".join(filter(None, notes))
            blocks.append(_runs_block(profile, model, view, part, members, part_pairs, note))
    return blocks


def _runs_block(
    profile: str,
    model: str,
    view: str,
    part: str,
    runs: Sequence[Run],
    pairs: Sequence[tuple[str, str]],
    note: str,
) -> Block:
    """One block of our runs (in row order): its columns, a row per variant, and the differences of `pairs`."""
    parser_metrics = {f"accuracy_{parser}" for parser in PARSER_SCRIPTS}  # shown in the parser views instead
    columns = _unique(task for run in runs for task in run.task_order)
    metric_columns = []
    for task in columns:
        names = _unique(
            metric
            for run in runs
            if task in run.metrics
            for metric in run.metrics[task]
            if metric not in parser_metrics
        )
        if len(names) > 1:  # a one-metric task's metric is its score column already
            metric_columns += [f"{task}.{name}" for name in names]
    variants: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        variants.setdefault((run.method, run.variant), []).append(run)
    rows = [_run_row(method, label, members, columns) for (method, label), members in variants.items()]
    title = " · ".join(filter(None, [profile, model, part, view]))
    differences = []
    for first, second in pairs:
        matches = [[row for row in rows if row.label == label] for label in (first, second)]
        for label, found in zip((first, second), matches, strict=True):
            if len(found) > 1:
                methods = ", ".join(row.method for row in found)
                raise TablesError(f"{title}: {len(found)} rows labelled {label!r} (methods {methods}); cannot pair")
        if all(matches):
            differences.append(paired_difference(matches[0][0], matches[1][0], columns))
    kinds = list(dict.fromkeys(run.kind for run in runs))
    return Block(
        title,
        RUNS_SOURCE,
        profile,
        model,
        note,
        columns,
        metric_columns,
        rows,
        tuple(differences),
        view,
        task_labels=merged_labels(cls.task_labels for cls in kinds),
        metric_labels=merged_labels(cls.metric_labels for cls in kinds),
        pairs=tuple(pairs),
        part=part,
    )


def merged_labels(mappings: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """The union of display-name mappings, the first one's name kept for a key two of them name."""
    out: dict[str, str] = {}
    for mapping in mappings:
        for key, name in mapping.items():
            out.setdefault(key, name)
    return out


def _headline_parser_note(runs: Sequence[Run]) -> str:
    """Which answer parser the block's scores come from, for runs that record one ("" otherwise)."""
    parsers = {run.parser for run in runs}
    if parsers == {None}:
        return ""
    if len(parsers) == 1:
        parser = parsers.pop()
        return f"Answers parsed by the {parser} parser ({PARSER_SCRIPTS[parser]}) for every row."
    by_label = ", ".join(_unique(f"{run.variant}: {run.parser}" for run in runs))
    return f"Answers parsed by different parsers (benchmark.mode): {by_label}; see the one-parser views below."


def _parser_run(run: Run, parser: str, view: str) -> Run | None:
    """The run with its task scores and Avg under `parser`, for block `view`; None when it did not record them."""
    scores = run.parser_scores.get(parser)
    if scores is None:
        return None
    return replace(
        run,
        task_scores=dict(scores),
        average=run.kind.score_average(scores),
        metrics={task: {"accuracy": score / 100} for task, score in scores.items()},
        view=view,
    )


def with_parser_views(blocks: Sequence[Block]) -> list[Block]:
    """Returns `blocks` with, after each block of runs that record answer parsers, its parser views (module
    docstring of `mtllora.tables`): one block per view, with the block's pairs, rows of variants without that
    parser's scores showing "—"."""
    out = []
    for block in blocks:
        out.append(block)
        runs = [run for row in block.rows for run in row.runs]
        if block.source != RUNS_SOURCE or block.view or not any(run.parser_scores for run in runs):
            continue
        views = {PAPER_VIEW: (lambda run: PAPER_PARSERS.get(run.method, DEFAULT_PAPER_PARSER), PAPER_VIEW_NOTE)}
        for parser in PARSER_SCRIPTS:
            if any(run.parser != parser for run in runs):  # else the block itself shows it for every row
                note = f"The fair comparison: every method under the {parser} parser ({PARSER_SCRIPTS[parser]})."
                views[f"one parser for all: {parser}"] = (lambda run, parser=parser: parser, note)
        for view, (parser_of, view_note) in views.items():
            derived = [_parser_run(run, parser_of(run), view) for run in runs]
            if not any(derived):
                continue
            (view_block,) = _run_blocks([run for run in derived if run is not None], block.pairs, ablations=())
            present = {(row.method, row.label) for row in view_block.rows}
            missing = {}
            for run, got in zip(runs, derived, strict=True):
                if got is None:
                    missing.setdefault((run.method, run.variant), []).append(run)
            rows = list(view_block.rows)
            for (method, label), lacking in missing.items():
                parser = parser_of(lacking[0])
                if (method, label) in present:
                    seeds = ", ".join(str(run.seed) for run in lacking)
                    note = f"{label}: seed(s) {seeds} recorded no {parser} parser scores and are left out."
                    rows = [
                        replace(row, note=" ".join(filter(None, [row.note, note]))) if row.label == label else row
                        for row in rows
                    ]
                    continue
                first = lacking[0]
                rows.append(
                    Row(
                        label=label,
                        method=method,
                        seeds=len(lacking),
                        stats={},
                        cells={key: MISSING for key in [*view_block.columns, AVERAGE]},
                        params=format_params(first.trainable, first.total),
                        trainable=first.trainable,
                        total=first.total,
                        note=f"{label}: {MISSING}: its metrics.json records no {parser} parser scores (written before "
                        "both parsers were recorded; a new evaluation records both).",
                    )
                )
            rows.sort(key=lambda row: _variant_order(row.method, row.label))
            note = f"{view_note} Same generations as the block above; only the answer parsing differs."
            title = " · ".join(filter(None, [block.profile, block.model, block.part, view]))
            out.append(replace(view_block, title=title, part=block.part, rows=rows, note=note))
    return out


def load_reference_blocks(
    path: Path, task_labels: Mapping[str, str] | None = None, metric_labels: Mapping[str, str] | None = None
) -> list[Block]:
    """Returns the reference blocks of a yaml file, their keys shown by `task_labels` and `metric_labels` (those of
    the benchmark's runs): one mapping, or a list of them, each shaped like

    {source: str, note: str?, model: str?, task_order: [task, ...]?,
     rows: [{label: str, params: str|null, tasks: {task: number|null}, average: number|null}]}.
    Numbers are on the ×100 scale and shown as written; task_order defaults to the order the rows name tasks in.
    """
    data = OmegaConf.to_container(OmegaConf.load(path))
    blocks = []
    for index, entry in enumerate(data if isinstance(data, list) else [data]):
        where = f"{path} entry {index}"
        source = str(_get(entry, where, "source"))
        rows_data = _get(entry, where, "rows")
        columns = entry.get("task_order") or _unique(
            task for i, row in enumerate(rows_data) for task in _get(row, f"{where} row {i}", "tasks")
        )
        rows = []
        for i, row in enumerate(rows_data):
            label = str(_get(row, f"{where} row {i}", "label"))
            values = {**_get(row, f"{where} row {i}", "tasks"), AVERAGE: row.get(AVERAGE)}
            for key, value in values.items():
                if value is not None and not isinstance(value, int | float):
                    raise TablesError(f"{where}: {label} {key}: expected a number or null, got {value!r}")
            params = row.get("params")
            rows.append(
                Row(
                    label=label,
                    method="",
                    seeds=None,
                    stats={key: (value, None) for key, value in values.items()},
                    cells={key: "" if value is None else str(value) for key, value in values.items()},
                    params="" if params is None else str(params),
                )
            )
        model = entry.get("model") or ""
        note = " ".join(filter(None, [f"Model: {model}." if model else "", entry.get("note") or ""]))
        blocks.append(
            Block(
                f"Reference: {source}",
                source,
                "",
                model,
                note,
                list(columns),
                [],
                rows,
                task_labels=dict(task_labels or {}),
                metric_labels=dict(metric_labels or {}),
            )
        )
    return blocks


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def sweep_lines(block: Block, key: str) -> dict[str, list[tuple[Any, Row]]]:
    """{line label: [(config value of `key`, row), ...] in the order of the values} for the rows of a block of runs
    that have an Avg and whose config has `key`: one line per variant and setting of the other overrides. Raises
    TablesError for a row whose seeds disagree on `key` (a key that does not name the run directory, e.g. seed)."""
    lines: dict[str, list[tuple[Any, Row]]] = {}
    for row in block.rows:
        if not row.runs or AVERAGE not in row.stats or config_value(row.runs[0].config, key) is _ABSENT:
            continue
        values = {json.dumps(config_value(run.config, key), default=str) for run in row.runs}
        if len(values) > 1:
            raise TablesError(f"{block.title}: the runs of row {row.label!r} have different {key} ({sorted(values)})")
        first = row.runs[0]
        other = ", ".join([first.label, *(f"{k}={v}" for k, v in first.setting if k != key)])
        lines.setdefault(other, []).append((config_value(first.config, key), row))
    for points in lines.values():
        numeric = all(map(_is_number, (value for value, _ in points)))
        points.sort(key=lambda point: point[0] if numeric else _format_value(point[0]))
    return lines
