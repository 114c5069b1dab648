"""The reproduction's result tables: `make tables`, i.e. `python -m mtllora.tables`.

Reads every run's `metrics.json` under `--runs` (default results/runs, searched recursively) and writes, for each
benchmark, `<out>/<benchmark>.md`, `.csv`, `.tex` and `.png` (default out: results/tables). Runs form one block per
(profile, model); a block has one row per variant (method and label) whose cells are mean ± sample std over its
seeds. Reference numbers from `<paper>/<benchmark>.yaml` (default results/paper) follow as extra blocks; a null
there (a number nobody could check) renders as an empty cell.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import OmegaConf

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
}
METRIC_NAMES = {
    "matthews_correlation": "MCC",
    "accuracy": "acc",
    "f1": "F1",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
}
# Row order of the paper's tables; variants of other methods follow, alphabetically by label.
METHOD_ORDER = ("lora", "dora", "multilora", "moelora", "mtl_lora")
AVERAGE = "average"  # key of the Avg column among the task keys
RUNS_SOURCE = "runs"  # `Block.source` of blocks built from our own runs

CONVENTIONS = (
    "Cells: mean ± sample std (ddof=1) over seeds, ×100; `seeds` = number of runs. A task's score is the mean of its "
    "metrics (MRPC, QQP: accuracy and F1; STS-B: Pearson and Spearman; CoLA: Matthews correlation); Avg is the "
    "average each run reports (GLUE: MNLI-m and MNLI-mm count as one task, see `mtllora.metrics.glue_average`). "
    "#Params: trainable parameters (share of all parameters). Empty cell: no value."
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
            task_scores={task: float(_get(data, path, "task_scores", task)) for task in task_order},
            average=float(_get(data, path, "average")),
            trainable=int(_get(data, path, "params", "trainable")),
            total=int(_get(data, path, "params", "total")),
        )
    except (ValueError, TypeError, AttributeError) as err:  # bad JSON or a value of the wrong type
        raise TablesError(f"{path}: {err}") from None


def load_runs(runs_dir: Path) -> list[Run]:
    """Returns every run under `runs_dir` (its metrics.json files, searched recursively), sorted by path.

    Raises TablesError when there is none, or when two files record the same variant and seed: averaging both would
    count that seed twice.
    """
    paths = sorted(runs_dir.rglob("metrics.json"))
    if not paths:
        raise TablesError(f"no runs to tabulate: no metrics.json under {runs_dir}/ (train some runs first)")
    runs = [load_run(path) for path in paths]
    seen: dict[tuple, Path] = {}
    for run in runs:
        key = (run.benchmark, run.profile, run.model, run.method, run.label, run.seed)
        if key in seen:
            raise TablesError(f"{seen[key]} and {run.path} both record {run.label} seed {run.seed}; remove one")
        seen[key] = run.path
    return runs


def format_params(trainable: int, total: int) -> str:
    """Returns the #Params cell, e.g. "0.12M (0.54%)": trainable count in millions and its share of `total`."""
    return f"{trainable / 1e6:.2f}M ({100 * trainable / total:.2f}%)"


def _format_mean_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _variant_order(method: str, label: str) -> tuple[int, str]:
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, label


def _run_row(method: str, label: str, runs: Sequence[Run]) -> Row:
    values: dict[str, list[float]] = {}
    for run in runs:
        for task in run.task_order:
            values.setdefault(task, []).append(run.task_scores[task])
            for metric, value in run.metrics[task].items():
                values.setdefault(f"{task}.{metric}", []).append(100 * value)
        values.setdefault(AVERAGE, []).append(run.average)
    stats = {key: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None) for key, v in values.items()}
    first = runs[0]  # seeds do not change the architecture, hence the parameter count
    return Row(
        label=label,
        method=method,
        seeds=len(runs),
        stats=stats,
        cells={key: _format_mean_std(*stat) for key, stat in stats.items()},
        params=format_params(first.trainable, first.total),
        trainable=first.trainable,
        total=first.total,
    )


def _run_blocks(runs: Sequence[Run]) -> list[Block]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.profile, r.model, *_variant_order(r.method, r.label), r.seed)):
        groups.setdefault((run.profile, run.model), []).append(run)
    blocks = []
    for (profile, model), group in groups.items():
        columns = _unique(task for run in group for task in run.task_order)
        metric_columns = []
        for task in columns:
            names = _unique(metric for run in group if task in run.metrics for metric in run.metrics[task])
            if len(names) > 1:  # a one-metric task's metric is its score column already
                metric_columns += [f"{task}.{name}" for name in names]
        variants: dict[tuple[str, str], list[Run]] = {}
        for run in group:
            variants.setdefault((run.method, run.label), []).append(run)
        rows = [_run_row(method, label, variant_runs) for (method, label), variant_runs in variants.items()]
        blocks.append(Block(f"{profile} · {model}", RUNS_SOURCE, profile, model, "", columns, metric_columns, rows))
    return blocks


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


def _main_table(block: Block) -> tuple[list[str], list[list[str]]]:
    """Returns the header and rows of a block's main table (tasks, Avg, #Params), shared by the md and tex files."""
    with_seeds = block.source == RUNS_SOURCE
    header = ["Method", *(["seeds"] if with_seeds else []), *map(_task_name, block.columns), "Avg", "#Params"]
    rows = [
        [
            row.label,
            *([str(row.seeds)] if with_seeds else []),
            *(row.cells.get(key, "") for key in [*block.columns, AVERAGE]),
            row.params,
        ]
        for row in block.rows
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
        if block.metric_columns:
            metric_rows = [[row.label, *(row.cells.get(key, "") for key in block.metric_columns)] for row in block.rows]
            lines += ["", "Individual metrics (×100):", ""]
            lines += _markdown_table(["Method", *map(_metric_name, block.metric_columns)], metric_rows)
    return "\n".join(lines) + "\n"


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(round(value, 4))


def render_csv(blocks: Sequence[Block]) -> str:
    """Returns the <benchmark>.csv text: one line per row of every block, a mean and a std column per task score,
    per individual metric and for the average (×100), and the parameter counts. No timestamp, so reruns diff."""
    keys = [
        *_unique(key for block in blocks for key in block.columns),
        *_unique(key for block in blocks for key in block.metric_columns),
        AVERAGE,
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "source",
            "profile",
            "model",
            "label",
            "method",
            "seeds",
            *(name for key in keys for name in (key, f"{key}_std")),
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
                    block.source,
                    block.profile,
                    block.model,
                    row.label,
                    row.method,
                    seeds,
                    *numbers,
                    row.params,
                    trainable,
                    total,
                ]
            )
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("±", "$\\pm$")


def render_latex(blocks: Sequence[Block]) -> str:
    """Returns the <benchmark>.tex text: one booktabs tabular per block (needs \\usepackage{booktabs})."""
    parts = []
    for block in blocks:
        header, rows = _main_table(block)
        lines = [
            f"% {block.title}" + (f". {block.note}" if block.note else ""),
            "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
            "\\toprule",
            " & ".join(map(_latex_escape, header)) + " \\\\",
            "\\midrule",
            *(" & ".join(map(_latex_escape, row)) + " \\\\" for row in rows),
            "\\bottomrule",
            "\\end{tabular}",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


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


def build_tables(
    runs_dir: Path = DEFAULT_RUNS, out_dir: Path = DEFAULT_OUT, paper_dir: Path = DEFAULT_PAPER
) -> list[Path]:
    """Writes <out_dir>/<benchmark>.md, .csv, .tex and .png for every benchmark found under `runs_dir` and returns
    the written paths. Reference blocks come from <paper_dir>/<benchmark>.yaml when that file exists."""
    runs = load_runs(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for benchmark in sorted({run.benchmark for run in runs}):
        benchmark_runs = [run for run in runs if run.benchmark == benchmark]
        blocks = _run_blocks(benchmark_runs)
        reference = paper_dir / f"{benchmark}.yaml"
        if reference.is_file():
            blocks += load_reference_blocks(reference)
        texts = {
            ".md": render_markdown(benchmark, blocks, len(benchmark_runs), runs_dir),
            ".csv": render_csv(blocks),
            ".tex": render_latex(blocks),
        }
        for suffix, text in texts.items():
            path = out_dir / f"{benchmark}{suffix}"
            path.write_text(text)
            written.append(path)
        render_plot(blocks, out_dir / f"{benchmark}.png")
        written.append(out_dir / f"{benchmark}.png")
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of `make tables`: builds the tables and prints their paths; exits with status 1 and a message
    naming the problem when there are no runs or an input file is malformed."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="searched recursively for metrics.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the tables are written")
    parser.add_argument("--paper", type=Path, default=DEFAULT_PAPER, help="reference numbers, <benchmark>.yaml")
    args = parser.parse_args(argv)
    try:
        written = build_tables(args.runs, args.out, args.paper)
    except TablesError as err:
        raise SystemExit(f"mtllora.tables: {err}") from None
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
