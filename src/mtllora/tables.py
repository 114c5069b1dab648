"""The reproduction's result tables: `make tables`, i.e. `python -m mtllora.tables`.

Reads every run's `metrics.json` under `--runs` (default results/runs, searched recursively) and writes, for each
benchmark, `<out>/<benchmark>.md`, `.csv`, `.tex` and `.png` (default out: results/tables). Runs form one block per
(profile, model); a block has one row per variant (method and label) whose cells are mean ± sample std over its
seeds. Reference numbers from `<paper>/<benchmark>.yaml` (default results/paper) follow as extra blocks; a null
there (a number nobody could check) renders as an empty cell.

Single-task references: runs of one variant and seed whose task sets are disjoint (e.g. one LoRA run per task) are
combined into one run of that seed: each task's scores come from the run that trained it, Avg is recomputed over
their union like a multi-task run's (`benchmark_average`), and #Params is the sum over the runs, since serving every
task takes all of their adapters and heads. Runs of one variant and seed that share a task are an error.

Coverage: a row whose runs miss some of its block's tasks shows empty cells there and no Avg (an average over fewer
tasks would not compare with the others); a line under the table says which seed lacks which task.

Paired differences: for each pair of labels in `DIFF_PAIRS` that both have a row in a block, the block gets a
difference row, first − second: per task and for Avg, the mean over the seeds both rows have of the per-seed
difference, its standard error (sample std of the differences / √n) and n, and a sentence saying whether the Avg
difference exceeds twice its standard error. In the csv these rows have kind `paired_diff`, and their `<key>_std`
columns hold that standard error (kind `score` rows: the sample std over seeds).

Sweeps: runs that differ by overrides that name their run directory (`mtllora.rundir.run_suffix`, read back from the
`run_name` in their config, e.g. `glue-lora-minilm-l6-s1,trainer.learning_rate=0.002`) are rows of their own,
labelled by those overrides with their values in the run's config (`LoRA, trainer.learning_rate=0.002`); the rows of
one override set group their seeds as usual. Overrides that every run of a block shares are said once in the block's
note instead (so `-m method=lora,mtl_lora trainer.max_steps=2` keeps the labels LoRA and MTL-LoRA and their paired
difference). `method.label` and `benchmark.tasks` are left out of the label (the row's label and its columns show
them; single-task runs still combine). `--x KEY` also writes
`<benchmark>_by_<KEY>.png`: per block, Avg (mean ± std over seeds) against each row's config value of KEY, one line
per variant and setting of the other overrides.

Answer parsers (commonsense): a run whose config has `benchmark.mode` records each task's accuracy under both official
parsers (`accuracy_official`: mlora_evaluate.py, `accuracy_strict`: lora_evaluate.py) from the same generations. Its
block shows the headline (`mode`) scores and is followed by views of the same runs: "paper's evaluators" (each method
under the evaluator of its official script, `PAPER_PARSERS`: how the paper's table compares them) and "one parser for
all: <parser>" (the fair comparison; left out when the block already shows that parser for every row). A run from
before both parsers were recorded has only its headline parser's scores; its cells in a view that needs the other
parser read "—".

Warnings: a run's metrics.json "warnings" (caveats on its numbers, e.g. a checkpoint skipped on resume, a correlation
undefined) mark its row with †N, and the messages follow the table (`†N <row>, seed S: message`; in the tex file as
comments, in the csv in the row's `warnings` column).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import itertools
import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from .rundir import suffix_overrides

DEFAULT_RUNS = Path("results/runs")
DEFAULT_OUT = Path("results/tables")
DEFAULT_PAPER = Path("results/paper")

TASK_NAMES = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "stsb": "STS-B",
    "mnli_m": "MNLI-m",
    "mnli_mm": "MNLI-mm",
    "qnli": "QNLI",
    "rte": "RTE",
    "boolq": "BoolQ",
    "piqa": "PIQA",
    "social_i_qa": "SIQA",
    "hellaswag": "HellaS.",
    "winogrande": "WinoG.",
    "ARC-Easy": "ARC-e",
    "ARC-Challenge": "ARC-c",
    "openbookqa": "OBQA",
    "vqa": "VQAv2",
    "gqa": "GQA",
    "nlvr": "NLVR2",
    "caption": "COCO Cap.",
}
METRIC_NAMES = {
    "matthews_correlation": "MCC",
    "accuracy": "acc",
    "f1": "F1",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "CIDEr": "CIDEr",
    "BLEU-4": "BLEU-4",
}
# Row order of the paper's tables; variants of other methods follow, alphabetically by label.
METHOD_ORDER = ("lora", "dora", "multilora", "moelora", "mtl_lora")
AVERAGE = "average"  # key of the Avg column among the task keys
RUNS_SOURCE = "runs"  # `Block.source` of blocks built from our own runs
MNLI_PARTS = ("mnli_m", "mnli_mm")  # one task in the GLUE average, as in `mtllora.metrics.glue_average`
SINGLE_TASK_LABEL = "LoRA (single-task)"
# Directory-naming overrides left out of a sweep row's label: the row's label and its columns already show them.
SHOWN_KEYS = ("method.label", "benchmark.tasks")
# The seed-paired differences under each block of our runs, as (first, second) row labels: first − second, for every
# block that has a row of each. The headline pair first: MTL-LoRA against LoRA at MTL-LoRA's parameter count (r=16);
# then against the r=8 LoRA the paper compares with and the other baselines; then what each multi-task variant gains
# or loses against training the tasks apart (one LoRA per task).
DIFF_PAIRS: tuple[tuple[str, str], ...] = (
    *(("MTL-LoRA", label) for label in ("LoRA (r=16)", "LoRA", "DoRA", "MultiLoRA", "MoELoRA")),
    *((label, SINGLE_TASK_LABEL) for label in ("MTL-LoRA", "LoRA", "LoRA (r=16)", "DoRA", "MultiLoRA", "MoELoRA")),
)
# The official commonsense evaluators (spec §3.2), by the `benchmark.mode` that reproduces their answer parsing.
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
WARNING_MARK = "†"  # marks a row whose runs recorded warnings; the messages follow the table
SCORE_KIND = "score"  # csv `kind` of a variant's (or a reference's) row
DIFF_KIND = "paired_diff"  # csv `kind` of a difference row; its `_std` columns hold the standard error

CONVENTIONS = (
    "Cells: mean ± sample std (ddof=1) over seeds, ×100; `seeds` = number of seeds. A task's score is the mean of its "
    "metrics (MRPC, QQP: accuracy and F1; STS-B: Pearson and Spearman; CoLA: Matthews correlation); Avg is the "
    "average each run reports (GLUE: MNLI-m and MNLI-mm count as one task, see `mtllora.metrics.glue_average`). "
    "#Params: trainable parameters (share of all parameters). Empty cell: no value. "
    "Single-task rows: one run per task and seed, combined: a task's cell comes from the run that trained it, Avg is "
    "computed over the union of their tasks like a multi-task run's, #Params is the sum over the runs (all the "
    "adapters and heads it takes to serve every task; share of the backbone plus all of them). A row whose runs miss "
    "some of the block's tasks has empty cells there and no Avg. "
    "Paired differences (first − second): per task and Avg, the mean over the seeds both rows have of the per-seed "
    "difference ± its standard error (sample std of the differences / √n), n = paired seeds; a cell with fewer pairs "
    "than n says so. 2 SE is a rough yardstick, not a 5% test: with 3 seeds, Student's t needs 4.30 SE."
)


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


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _get(data: Any, where: str | Path, *keys: str) -> Any:
    """Returns data[keys[0]][keys[1]]...; raises TablesError naming `where` and the missing (dotted) key."""
    value = data
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise TablesError(f"{where}: missing key {'.'.join(keys)!r}")
        value = value[key]
    return value


def load_run(path: Path) -> Run:
    """Returns the run recorded in `path` (a metrics.json); extra keys are ignored, missing ones raise TablesError."""
    try:
        data = json.loads(path.read_text())
        task_order = tuple(_get(data, path, "task_order"))
        task_scores = {task: float(_get(data, path, "task_scores", task)) for task in task_order}
        config = data.get("config") or {}
        parser = config.get("benchmark", {}).get("mode")
        return Run(
            path=path,
            benchmark=str(_get(data, path, "benchmark")),
            profile=str(_get(data, path, "profile")),
            model=str(_get(data, path, "model")),
            method=str(_get(data, path, "method")),
            label=str(_get(data, path, "label")),
            seed=int(_get(data, path, "seed")),
            task_order=task_order,
            metrics={task: {k: float(v) for k, v in _get(data, path, "tasks", task).items()} for task in task_order},
            task_scores=task_scores,
            average=float(_get(data, path, "average")),
            trainable=int(_get(data, path, "params", "trainable")),
            total=int(_get(data, path, "params", "total")),
            parser=parser if parser in PARSER_SCRIPTS else None,
            parser_scores=_parser_scores(data, path, parser, task_scores) if parser in PARSER_SCRIPTS else {},
            setting=run_setting(config),
            config=config,
            warnings=tuple(str(message) for message in data.get("warnings") or ()),
        )
    except (ValueError, TypeError, AttributeError) as err:  # bad JSON or a value of the wrong type
        raise TablesError(f"{path}: {err}") from None


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


def _parser_scores(
    data: Mapping[str, Any], path: Path, headline: str, task_scores: Mapping[str, float]
) -> dict[str, dict[str, float]]:
    """{parser: {task: accuracy ×100}} for each parser whose `accuracy_<parser>` every task records; the headline
    parser falls back to the task scores (a metrics.json written before both parsers were recorded)."""
    scores = {}
    for parser in PARSER_SCRIPTS:
        key = f"accuracy_{parser}"
        if all(key in _get(data, path, "tasks", task) for task in task_scores):
            scores[parser] = {task: 100 * float(data["tasks"][task][key]) for task in task_scores}
    scores.setdefault(headline, dict(task_scores))
    return scores


def benchmark_average(task_scores: Mapping[str, float]) -> float:
    """Returns the average of task scores (×100) the way a multi-task run computes its own: their unweighted mean,
    with MNLI-m and MNLI-mm first averaged into one MNLI score (`mtllora.metrics.glue_average`, on stored scores)."""
    scores = [score for task, score in task_scores.items() if task not in MNLI_PARTS]
    mnli = [task_scores[task] for task in MNLI_PARTS if task in task_scores]
    if mnli:
        scores.append(statistics.fmean(mnli))
    return statistics.fmean(scores)


def _task_rank(task: str) -> int:
    return list(TASK_NAMES).index(task) if task in TASK_NAMES else len(TASK_NAMES)


def combine_runs(runs: Sequence[Run]) -> Run:
    """Returns the runs of one variant and seed as one run: itself for one run; for several (single-task runs),
    their tasks in the usual task order (unknown ones after, in run order), each task's metrics and score from the
    run that trained it, the average over all of them (`benchmark_average`), and the sum of their trainable
    parameters (the frozen backbone counted once in the total).

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
    order = tuple(sorted(tasks, key=lambda task: (_task_rank(task), tasks.index(task))))
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
        average=benchmark_average(task_scores),
        trainable=trainable,
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
    for run in map(load_run, paths):
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
        + "; ".join(f"seed {seed}: {', '.join(map(_task_name, tasks))}" for seed, tasks in lacking.items())
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


def difference_sentence(diff: Difference) -> str:
    """Returns the verdict on the Avg difference in words: whether it exceeds twice its standard error."""
    head = f"{diff.label} on Avg"
    if AVERAGE not in diff.stats:
        return f"{head}: no paired seeds (no seed with an Avg in both rows), so no difference."
    mean, se, n = diff.stats[AVERAGE]
    if se is None:
        return (
            f"{head}: {mean:+.2f} ({n} paired seed): fewer than 2 paired seeds, so no standard error and no "
            "statement on significance."
        )
    if abs(mean) > 2 * se:
        verdict = f"exceeds 2 SE: {diff.first if mean > 0 else diff.second} scores higher at this budget"
    else:
        verdict = "does not exceed 2 SE: no significant difference at this budget"
    return f"{head}: {mean:+.2f} ± {se:.2f} (SE, {n} paired seeds): {verdict}."


def _run_order(run: Run) -> tuple:
    return run.profile, run.model, *_variant_order(run.method, run.label), _setting_order(run.setting), run.seed


def _run_blocks(runs: Sequence[Run], pairs: Sequence[tuple[str, str]] = DIFF_PAIRS) -> list[Block]:
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in sorted(runs, key=_run_order):
        groups.setdefault((run.profile, run.model, run.view), []).append(run)
    blocks = []
    parser_metrics = {f"accuracy_{parser}" for parser in PARSER_SCRIPTS}  # shown in the parser views instead
    for (profile, model, view), group in groups.items():
        # Overrides every run of the block shares are the block's setting, not a row's: said once in its note,
        # so that the rows keep their plain labels (and their paired differences).
        common = set.intersection(*(set(run.setting) for run in group))
        shared = ", ".join(f"{key}={value}" for key, value in group[0].setting if (key, value) in common)
        group = [replace(run, setting=tuple(item for item in run.setting if item not in common)) for run in group]
        columns = _unique(task for run in group for task in run.task_order)
        metric_columns = []
        for task in columns:
            names = _unique(
                metric
                for run in group
                if task in run.metrics
                for metric in run.metrics[task]
                if metric not in parser_metrics
            )
            if len(names) > 1:  # a one-metric task's metric is its score column already
                metric_columns += [f"{task}.{name}" for name in names]
        variants: dict[tuple[str, str], list[Run]] = {}
        for run in group:
            variants.setdefault((run.method, run.variant), []).append(run)
        rows = [_run_row(method, label, members, columns) for (method, label), members in variants.items()]
        title = f"{profile} · {model}" + (f" · {view}" if view else "")
        differences = []
        for first, second in pairs:
            matches = [[row for row in rows if row.label == label] for label in (first, second)]
            for label, found in zip((first, second), matches, strict=True):
                if len(found) > 1:
                    methods = ", ".join(row.method for row in found)
                    raise TablesError(f"{title}: {len(found)} rows labelled {label!r} (methods {methods}); cannot pair")
            if all(matches):
                differences.append(paired_difference(matches[0][0], matches[1][0], columns))
        note = "" if view else _headline_parser_note(group)
        if shared:
            note = " ".join(filter(None, [f"Every row: {shared} (overrides that name the run directories).", note]))
        blocks.append(
            Block(title, RUNS_SOURCE, profile, model, note, columns, metric_columns, rows, tuple(differences), view)
        )
    return blocks


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
        average=benchmark_average(scores),
        metrics={task: {"accuracy": score / 100} for task, score in scores.items()},
        view=view,
    )


def with_parser_views(blocks: Sequence[Block], pairs: Sequence[tuple[str, str]] = DIFF_PAIRS) -> list[Block]:
    """Returns `blocks` with, after each block of runs that record answer parsers, its parser views (module
    docstring): one block per view, rows of variants without that parser's scores showing "—"."""
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
            (view_block,) = _run_blocks([run for run in derived if run is not None], pairs)
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
            out.append(replace(view_block, rows=rows, note=note))
    return out


def load_reference_blocks(path: Path) -> list[Block]:
    """Returns the reference blocks of a yaml file: one mapping, or a list of them, each shaped like

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
        blocks.append(Block(f"Reference: {source}", source, "", model, note, list(columns), [], rows))
    return blocks


def _task_name(key: str) -> str:
    return TASK_NAMES.get(key, key)


def _metric_name(key: str) -> str:
    task, metric = key.split(".", 1)
    return f"{_task_name(task)} {METRIC_NAMES.get(metric, metric)}"


def row_warnings(row: Row) -> list[str]:
    """Returns the warnings its runs recorded (metrics.json "warnings"), each as `seed N: message`."""
    return [f"seed {run.seed}: {message}" for run in row.runs for message in run.warnings]


def _warning_marks(block: Block) -> dict[str, str]:
    """Returns {row label: its footnote mark (†1, †2, ...)} for the rows of a block whose runs recorded warnings."""
    flagged = [row.label for row in block.rows if row_warnings(row)]
    return {label: f"{WARNING_MARK}{number}" for number, label in enumerate(flagged, 1)}


def _warning_notes(block: Block) -> list[str]:
    """Returns the footnotes of a block's warning marks: `†1 LoRA, seed 2: message`, one per recorded warning."""
    marks = _warning_marks(block)
    return [f"{marks[row.label]} {row.label}, {line}" for row in block.rows for line in row_warnings(row)]


def _main_table(block: Block) -> tuple[list[str], list[list[str]]]:
    """Returns the header and rows of a block's main table (tasks, Avg, #Params), shared by the md and tex files; a
    row whose runs recorded warnings carries its footnote mark (`_warning_notes`)."""
    with_seeds = block.source == RUNS_SOURCE
    header = ["Method", *(["seeds"] if with_seeds else []), *map(_task_name, block.columns), "Avg", "#Params"]
    marks = _warning_marks(block)
    rows = [
        [
            " ".join(filter(None, [row.label, marks.get(row.label)])),
            *([str(row.seeds)] if with_seeds else []),
            *(row.cells.get(key, "") for key in [*block.columns, AVERAGE]),
            row.params,
        ]
        for row in block.rows
    ]
    return header, rows


def _difference_cell(diff: Difference, key: str) -> str:
    if key not in diff.stats:
        return ""
    mean, se, n = diff.stats[key]
    cell = f"{mean:+.2f}" if se is None else f"{mean:+.2f} ± {se:.2f}"
    return cell if n == diff.seeds else f"{cell} (n={n})"


def _difference_table(block: Block) -> tuple[list[str], list[list[str]]]:
    """Returns the header and rows of a block's paired-difference table, shared by the md and tex files."""
    header = ["Difference", "n", *map(_task_name, block.columns), "Avg"]
    rows = [
        [diff.label, str(diff.seeds), *(_difference_cell(diff, key) for key in [*block.columns, AVERAGE])]
        for diff in block.differences
    ]
    return header, rows


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * (len(header) - 1) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render_markdown(benchmark: str, blocks: Sequence[Block], num_runs: int, runs_dir: Path) -> str:
    """Returns the <benchmark>.md text: title, how it was generated, conventions, then one section per block."""
    lines = [
        f"# Results: {benchmark}",
        "",
        f"Generated by `make tables` (`python -m mtllora.tables`) from {num_runs} runs under `{runs_dir}` on "
        f"{datetime.date.today().isoformat()}.",
        "",
        CONVENTIONS,
    ]
    for block in blocks:
        lines += ["", f"## {block.title}", ""]
        if block.note:
            lines += [block.note, ""]
        lines += _markdown_table(*_main_table(block))
        notes = [row.note for row in block.rows if row.note] + _warning_notes(block)
        if notes:
            lines += ["", *notes]
        if block.metric_columns:
            metric_rows = [[row.label, *(row.cells.get(key, "") for key in block.metric_columns)] for row in block.rows]
            lines += ["", "Individual metrics (×100):", ""]
            lines += _markdown_table(["Method", *map(_metric_name, block.metric_columns)], metric_rows)
        if block.differences:
            lines += ["", "Seed-paired differences (×100, mean ± standard error, n = paired seeds):", ""]
            lines += _markdown_table(*_difference_table(block))
            lines += ["", *(f"- {difference_sentence(diff)}" for diff in block.differences)]
    return "\n".join(lines) + "\n"


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(round(value, 4))


def render_csv(blocks: Sequence[Block]) -> str:
    """Returns the <benchmark>.csv text: one line per row of every block (kind `score`), a mean and a std column per
    task score, per individual metric and for the average (×100), the warnings its runs recorded (`seed N: message`,
    joined by " | "; empty for none) and the parameter counts; after a block's rows,
    one line per paired difference (kind `paired_diff`, label "first − second", seeds = paired seeds): the mean
    difference per task and Avg, and its standard error in the `_std` column. No timestamp, so reruns diff."""
    keys = [
        *_unique(key for block in blocks for key in block.columns),
        *_unique(key for block in blocks for key in block.metric_columns),
        AVERAGE,
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "kind",
            "source",
            "profile",
            "model",
            "label",
            "method",
            "seeds",
            *(name for key in keys for name in (key, f"{key}_std")),
            "warnings",
            "params",
            "params_trainable",
            "params_total",
        ]
    )
    for block in blocks:
        for row in block.rows:
            numbers = [_csv_number(number) for key in keys for number in row.stats.get(key, (None, None))]
            seeds, trainable, total = (
                "" if count is None else str(count) for count in (row.seeds, row.trainable, row.total)
            )
            writer.writerow(
                [
                    SCORE_KIND,
                    _csv_source(block),
                    block.profile,
                    block.model,
                    row.label,
                    row.method,
                    seeds,
                    *numbers,
                    " | ".join(row_warnings(row)),
                    row.params,
                    trainable,
                    total,
                ]
            )
        for diff in block.differences:
            numbers = [_csv_number(number) for key in keys for number in diff.stats.get(key, (None, None, 0))[:2]]
            row_head = [DIFF_KIND, _csv_source(block), block.profile, block.model, diff.label, "", str(diff.seeds)]
            writer.writerow([*row_head, *numbers, "", "", "", ""])
    return buffer.getvalue()


def _csv_source(block: Block) -> str:
    """The csv `source` of a block: its source, and its parser view if any (e.g. "runs: paper's evaluators")."""
    return f"{block.source}: {block.view}" if block.view else block.source


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    text = text.replace("±", "$\\pm$").replace("−", "$-$").replace(MISSING, "---")
    return re.sub(f"{WARNING_MARK}(\\d+)", r"$^{\\dagger\1}$", text)


def render_latex(blocks: Sequence[Block]) -> str:
    """Returns the <benchmark>.tex text: one booktabs tabular per block, and one of its paired differences when it
    has any, their notes and verdicts as comments (needs \\usepackage{booktabs})."""
    parts = []
    for block in blocks:
        comments = [f"% {block.title}" + (f". {block.note}" if block.note else "")]
        comments += [f"% {note}" for note in [*(row.note for row in block.rows if row.note), *_warning_notes(block)]]
        parts.append("\n".join([*comments, *_tabular(*_main_table(block))]))
        if block.differences:
            comments = [f"% {block.title}: seed-paired differences, mean ± standard error, n = paired seeds."]
            comments += [f"% {difference_sentence(diff)}" for diff in block.differences]
            parts.append("\n".join([*comments, *_tabular(*_difference_table(block))]))
    return "\n\n".join(parts) + "\n"


def _tabular(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join(map(_latex_escape, header)) + " \\\\",
        "\\midrule",
        *(" & ".join(map(_latex_escape, row)) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]


def render_plot(blocks: Sequence[Block], path: Path) -> None:
    """Writes a PNG of the run blocks to `path`: per block, bars of each variant's task scores and Avg, error bars =
    std over seeds. Uses the Agg canvas directly, so it never touches pyplot's global backend."""
    run_blocks = [block for block in blocks if block.source == RUNS_SOURCE]
    labels = _unique(row.label for block in run_blocks for row in block.rows)
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}  # one colour per variant in every subplot
    widest = max(len(block.columns) + 1 for block in run_blocks)
    fig = Figure(figsize=(max(7.0, 1.2 * widest + 2.5), 3.4 * len(run_blocks)), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, block in zip(fig.subplots(len(run_blocks), 1, squeeze=False)[:, 0], run_blocks, strict=True):
        keys = [*block.columns, AVERAGE]
        width = 0.8 / len(block.rows)
        for i, row in enumerate(block.rows):
            stats = [row.stats.get(key, (None, None)) for key in keys]
            offset = (i - (len(block.rows) - 1) / 2) * width
            ax.bar(
                [j + offset for j in range(len(keys))],
                [math.nan if mean is None else mean for mean, _ in stats],
                width,
                yerr=[math.nan if std is None else std for _, std in stats],  # no error bar for one seed
                capsize=2,
                color=colors[row.label],
                label=f"{row.label} (n={row.seeds})",
            )
        ax.axvline(len(block.columns) - 0.5, color="grey", linewidth=0.8, linestyle="--")  # tasks | Avg
        ax.set_xticks(range(len(keys)), [*map(_task_name, block.columns), "Avg"])
        ax.set_ylabel("score (×100)")
        ax.set_title(block.title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=120)


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


def render_sweep_plot(blocks: Sequence[Block], key: str, path: Path) -> bool:
    """Writes a PNG of Avg against the config value of `key` to `path`: per block of runs, one line per variant
    (and setting of the other overrides), mean ± std over seeds; a numeric key on a numeric axis (logarithmic when
    its values span a factor of 10 or more), any other in sorted order. Returns False, writing nothing, when no row
    has `key` in its config."""
    run_blocks = [block for block in blocks if block.source == RUNS_SOURCE and not block.view]
    plotted = [(block, lines) for block in run_blocks if (lines := sweep_lines(block, key))]
    if not plotted:
        return False
    fig = Figure(figsize=(7.5, 3.4 * len(plotted)), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (block, lines) in zip(fig.subplots(len(plotted), 1, squeeze=False)[:, 0], plotted, strict=True):
        values = [value for points in lines.values() for value, _ in points]
        numeric = all(map(_is_number, values))
        categories = sorted({_format_value(v) for v in values})
        for i, (label, points) in enumerate(lines.items()):
            means, stds = zip(*(row.stats[AVERAGE] for _, row in points), strict=True)
            ax.errorbar(
                [v if numeric else categories.index(_format_value(v)) for v, _ in points],
                means,
                yerr=[math.nan if std is None else std for std in stds],
                marker="o",
                capsize=3,
                color=f"C{i % 10}",
                label=label,
            )
        if numeric and min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(key)
        ax.set_ylabel("Avg (×100), mean ± std over seeds")
        ax.set_title(block.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=120)
    return True


def build_tables(
    runs_dir: Path = DEFAULT_RUNS,
    out_dir: Path = DEFAULT_OUT,
    paper_dir: Path = DEFAULT_PAPER,
    pairs: Sequence[tuple[str, str]] = DIFF_PAIRS,
    x: str | None = None,
) -> list[Path]:
    """Writes <out_dir>/<benchmark>.md, .csv, .tex and .png for every benchmark found under `runs_dir` and returns
    the written paths. Reference blocks come from <paper_dir>/<benchmark>.yaml when that file exists; `pairs` are
    the (first, second) row labels whose seed-paired differences each block of runs shows. With `x` (a dotted config
    key), also <benchmark>_by_<x>.png (`render_sweep_plot`) for each benchmark whose runs have that key; raises
    TablesError when none has it, naming the keys these runs were swept over."""
    runs = load_runs(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for benchmark in sorted({run.benchmark for run in runs}):
        benchmark_runs = [run for run in runs if run.benchmark == benchmark]
        blocks = with_parser_views(_run_blocks(benchmark_runs, pairs), pairs)
        reference = paper_dir / f"{benchmark}.yaml"
        if reference.is_file():
            blocks += load_reference_blocks(reference)
        texts = {
            ".md": render_markdown(benchmark, blocks, sum(run.parts for run in benchmark_runs), runs_dir),
            ".csv": render_csv(blocks),
            ".tex": render_latex(blocks),
        }
        for suffix, text in texts.items():
            path = out_dir / f"{benchmark}{suffix}"
            path.write_text(text)
            written.append(path)
        render_plot(blocks, out_dir / f"{benchmark}.png")
        written.append(out_dir / f"{benchmark}.png")
        if x is not None and render_sweep_plot(blocks, x, out_dir / f"{benchmark}_by_{x}.png"):
            written.append(out_dir / f"{benchmark}_by_{x}.png")
    if x is not None and not any(path.name.endswith(f"_by_{x}.png") for path in written):
        swept = sorted({key for run in runs for key, _ in run.setting}) or ["none"]
        raise TablesError(
            f"--x {x}: no run under {runs_dir} with an Avg has {x!r} in its config; keys swept in these runs (run "
            f"directory overrides): {', '.join(swept)}"
        )
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of `make tables`: builds the tables and prints their paths; exits with status 1 and a message
    naming the problem when there are no runs or an input file is malformed."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="searched recursively for metrics.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the tables are written")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER, help="reference numbers, <benchmark>.yaml")
    parser.add_argument(
        "--wandb", action="store_true", help='also log the tables and plots to W&B, a "tables" run per group of runs'
    )
    parser.add_argument(
        "--x", metavar="KEY", help="also plot Avg against this config key, e.g. trainer.learning_rate (sweeps)"
    )
    args = parser.parse_args(argv)
    try:
        written = build_tables(args.runs, args.out, args.paper, x=args.x)
    except TablesError as err:
        raise SystemExit(f"mtllora.tables: {err}") from None
    for path in written:
        print(f"wrote {path}")
    if args.wandb:
        from .wandb_log import log_tables

        for group in log_tables(written, RUNS_SOURCE, DIFF_KIND):
            print(f"logged the tables of W&B group {group}")


if __name__ == "__main__":
    main()
