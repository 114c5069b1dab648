"""`python -m mtllora.predict RUN_DIR --task NAME --input FILE.jsonl [--output FILE.jsonl]`: a trained run's
predictions on your own inputs, computed as the run's benchmark evaluates (GLUE: the task head's label or score;
instruction benchmarks: the generated response and the answer extracted from it), in batches.

Input: JSON Lines (or a JSON list) of records with the task's fields: GLUE the hub dataset's text fields (e.g.
`{"sentence1": ..., "sentence2": ...}` for MRPC), instruction benchmarks `{"instruction": ..., "input": ...}`.
Output: one JSON line per input record, `{"index": i, "prediction": ...}` (+ `"response"` for generation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .benchmarks.instruct import RecordError, read_json_records
from .runs import TrainedRun, load_run, parse_args_with_overrides


def predict(run: TrainedRun, task: str, input_path: str | Path) -> list[dict[str, Any]]:
    """Returns one prediction row per record of `input_path` for `task` of the loaded run; a malformed record, bytes
    that are not UTF-8 or a file without records are errors naming the file (and line)."""
    if run.benchmark is None:
        raise ValueError(f"{run.source} is an adapter file alone; predict needs its run directory (its benchmark)")
    run.task_id(task)  # an unknown task lists the run's tasks
    records = read_json_records(input_path, lambda record: run.benchmark.input_problem(task, record))
    if not records:
        raise RecordError(f"{input_path}: no input records (an empty JSON list); expected at least one record")
    rows = run.benchmark.predict(run.model, run.tokenizer, task, records)
    return [{"index": i, **row} for i, row in enumerate(rows)]


def _check_output_is_not_input(input_path: str, output_path: str | None) -> None:
    """Raises when `output_path` is the input file (the same file under any path, links included): writing the
    predictions would replace the inputs. Checked before the model loads."""
    if output_path is None or not (Path(output_path).exists() and Path(input_path).exists()):
        return
    if Path(output_path).samefile(input_path):
        raise ValueError(
            f"--output {output_path} is the --input file {input_path}: the predictions would replace the inputs; "
            f"choose another --output"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: writes the predictions as JSON Lines to --output (default: stdout)."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished training run's directory")
    parser.add_argument("--task", required=True, help="the task whose head / task id to use")
    parser.add_argument("--input", required=True, help="JSON Lines (or a JSON list) of input records")
    parser.add_argument("--output", help="the JSON Lines file to write (default: stdout)")
    args = parse_args_with_overrides(parser, argv)
    try:
        _check_output_is_not_input(args.input, args.output)
        rows = predict(load_run(args.run_dir, args.overrides), args.task, args.input)
    except (ValueError, FileNotFoundError, RecordError) as err:
        sys.exit(f"mtllora.predict: {err}")
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{len(rows)} predictions -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
