"""The tables' rendering: blocks (`mtllora.tables.collect`) as markdown, csv, LaTeX and PNG. Numbers are formatted
here, never computed; the module docstring of `mtllora.tables` says what the tables show.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .collect import (
    AVERAGE,
    MISSING,
    RUNS_SOURCE,
    Block,
    Difference,
    Row,
    _format_value,
    _is_number,
    _unique,
    sweep_lines,
)

WARNING_MARK = "†"  # marks a row whose runs recorded warnings; the messages follow the table
SCORE_KIND = "score"  # csv `kind` of a variant's (or a reference's) row
DIFF_KIND = "paired_diff"  # csv `kind` of a difference row; its `_std` columns hold the standard error
# Characters of labels that LaTeX text mode cannot typeset as they are (the ablation labels' Λ_t and τ).
LATEX_SYMBOLS = {"±": "$\\pm$", "−": "$-$", MISSING: "---", "Λ": "$\\Lambda$", "τ": "$\\tau$"}

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
    header = ["Method", *(["seeds"] if with_seeds else []), *map(block.task_name, block.columns), "Avg", "#Params"]
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
    header = ["Difference", "n", *map(block.task_name, block.columns), "Avg"]
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
            lines += _markdown_table(["Method", *map(block.metric_name, block.metric_columns)], metric_rows)
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
    """The csv `source` of a block: its source, then its part and its parser view if any (e.g. "runs: paper's
    evaluators", "runs: ablations of MTL-LoRA")."""
    return ": ".join(filter(None, [block.source, block.part, block.view]))


def _latex_escape(text: str) -> str:
    for char in "\\&%$#_{}":
        text = text.replace(char, "\\" + char)
    for symbol, latex in LATEX_SYMBOLS.items():
        text = text.replace(symbol, latex)
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
        ax.set_xticks(range(len(keys)), [*map(block.task_name, block.columns), "Avg"])
        ax.set_ylabel("score (×100)")
        ax.set_title(block.title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=120)


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
