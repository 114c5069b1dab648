"""The reproduction's result tables: `make tables`, i.e. `python -m mtllora.tables`.

Reads every run's `metrics.json` under `--runs` (default results/runs, searched recursively) and writes, for each
benchmark, `<out>/<benchmark>.md`, `.csv`, `.tex` and `.png` (default out: results/tables). Runs form one block per
(profile, model); a block has one row per variant (method and label) whose cells are mean ± sample std over its
seeds. Reference numbers from `<paper>/<benchmark>.yaml` (default results/paper) follow as extra blocks; a null
there (a number nobody could check) renders as an empty cell.

Single-task references: runs of one variant and seed whose task sets are disjoint (e.g. one LoRA run per task) are
combined into one run of that seed: each task's scores come from the run that trained it, Avg is recomputed over
their union like a multi-task run's (`Benchmark.score_average`), and #Params is the sum over the runs, since serving
every task takes all of their adapters and heads. Runs of one variant and seed that share a task are an error.

Coverage: a row whose runs miss some of its block's tasks shows empty cells there and no Avg (an average over fewer
tasks would not compare with the others); a line under the table says which seed lacks which task.

Paired differences: for each pair of labels (`--pair FIRST SECOND`, repeatable; default `collect.DIFF_PAIRS`) that
both have a row in a block, the block gets a difference row, first − second: per task and for Avg, the mean over the
seeds both rows have of the per-seed difference, its standard error (sample std of the differences / √n) and n, and
a sentence saying whether the Avg difference exceeds twice its standard error. In the csv these rows have kind
`paired_diff`, and their `<key>_std` columns hold that standard error (kind `score` rows: the sample std over seeds).

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

Ablations: the runs of a label's method labelled otherwise (`--ablation LABEL`, repeatable; default MTL-LoRA, whose
variants configs/method/mtl_lora_*.yaml label "MTL-LoRA (no Λ_t)", "MTL-LoRA (n=1)", ...) leave their profile's block
for a block "ablations of MTL-LoRA" after it: that label's row, then every variant with its per-task scores, Avg and
#Params, and the seed-paired difference of each variant against the label's row (variant − MTL-LoRA), as above. No
such runs, no such block. In the csv its rows have the source "runs: ablations of MTL-LoRA".

Task and metric names come from each run's benchmark class (`Benchmark.task_labels`, `metric_labels`, named by the
run's config `benchmark._target_`), averages of combined runs from its `score_average`. Collection (`collect`: runs
→ blocks) and rendering (`render`: blocks → md, csv, tex, png) are apart; this module wires them to the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .collect import (
    ABLATIONS,
    DIFF_PAIRS,
    RUNS_SOURCE,
    TablesError,
    _run_blocks,
    load_reference_blocks,
    load_runs,
    merged_labels,
    with_parser_views,
)
from .render import DIFF_KIND, render_csv, render_latex, render_markdown, render_plot, render_sweep_plot

DEFAULT_RUNS = Path("results/runs")
DEFAULT_OUT = Path("results/tables")
DEFAULT_PAPER = Path("results/paper")


def build_tables(
    runs_dir: Path = DEFAULT_RUNS,
    out_dir: Path = DEFAULT_OUT,
    paper_dir: Path = DEFAULT_PAPER,
    pairs: Sequence[tuple[str, str]] = DIFF_PAIRS,
    x: str | None = None,
    ablations: Sequence[str] = ABLATIONS,
) -> list[Path]:
    """Writes <out_dir>/<benchmark>.md, .csv, .tex and .png for every benchmark found under `runs_dir` and returns
    the written paths. Reference blocks come from <paper_dir>/<benchmark>.yaml when that file exists; `pairs` are
    the (first, second) row labels whose seed-paired differences each block of runs shows, `ablations` the labels
    whose variants get a block of their own (`_run_blocks`). With `x` (a dotted config
    key), also <benchmark>_by_<x>.png (`render_sweep_plot`) for each benchmark whose runs have that key; raises
    TablesError when none has it, naming the keys these runs were swept over."""
    runs = load_runs(runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for benchmark in sorted({run.benchmark for run in runs}):
        benchmark_runs = [run for run in runs if run.benchmark == benchmark]
        blocks = with_parser_views(_run_blocks(benchmark_runs, pairs, ablations))
        reference = paper_dir / f"{benchmark}.yaml"
        if reference.is_file():
            kinds = list(dict.fromkeys(run.kind for run in benchmark_runs))
            task_labels = merged_labels(kind.task_labels for kind in kinds)
            blocks += load_reference_blocks(reference, task_labels, merged_labels(kind.metric_labels for kind in kinds))
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
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("FIRST", "SECOND"),
        help="row labels whose seed-paired difference (FIRST − SECOND) each block shows; repeatable, replaces the "
        "default pairs (MTL-LoRA against each baseline, each multi-task method against single-task LoRA)",
    )
    parser.add_argument(
        "--ablation",
        action="append",
        metavar="LABEL",
        help="a row label whose method's other labels (its variants) get an ablation block beside it, each paired "
        f"with it; repeatable, replaces the default ({', '.join(ABLATIONS)})",
    )
    args = parser.parse_args(argv)
    pairs = DIFF_PAIRS if args.pair is None else [tuple(pair) for pair in args.pair]
    ablations = ABLATIONS if args.ablation is None else args.ablation
    try:
        written = build_tables(args.runs, args.out, args.paper, pairs, args.x, ablations)
    except TablesError as err:
        raise SystemExit(f"mtllora.tables: {err}") from None
    for path in written:
        print(f"wrote {path}")
    if args.wandb:
        from ..wandb_log import log_tables

        for group in log_tables(written, RUNS_SOURCE, DIFF_KIND):
            print(f"logged the tables of W&B group {group}")
