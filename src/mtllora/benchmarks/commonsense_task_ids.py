"""How well `assign_task_ids` recovers the task of commonsense_170k records that carry none.

    python -m mtllora.benchmarks.commonsense_task_ids [--data-dir DIR]
        [--out results/commonsense/task_id_assignment.json]

Concatenates the local per-task train files (`train/<task>_train.json`; the union of the full files is
commonsense_170k.json), drops the task, and recovers it twice: from the answer format alone, and with the per-task
files as reference (exact instruction match first). Writes, per task: rows, recovered correctly, wrongly (and as
which task), left ambiguous; plus totals, coverage (share of records given an id) and accuracy of the given ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from mtllora.benchmarks.commonsense import TASKS, assign_task_ids, load_records, train_files


def git_blob(path: Path) -> str:
    """Returns the file's git blob id (`git hash-object`), as the data README lists them (first 12 hex digits)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()[:12]


def score(truth: list[str], ids: list[int | None]) -> dict:
    """Returns per-task and total counts of correct, wrong and unassigned ids."""
    per_task = {task: {"rows": 0, "correct": 0, "wrong": 0, "ambiguous": 0, "wrong_as": Counter()} for task in TASKS}
    for task, task_id in zip(truth, ids, strict=True):
        row = per_task[task]
        row["rows"] += 1
        if task_id is None:
            row["ambiguous"] += 1
        elif TASKS[task_id] == task:
            row["correct"] += 1
        else:
            row["wrong"] += 1
            row["wrong_as"][TASKS[task_id]] += 1
    total = {key: sum(row[key] for row in per_task.values()) for key in ("rows", "correct", "wrong", "ambiguous")}
    assigned = total["correct"] + total["wrong"]
    total["coverage"] = round(assigned / total["rows"], 6)
    total["accuracy_of_assigned"] = round(total["correct"] / assigned, 6) if assigned else None
    total["accuracy_overall"] = round(total["correct"] / total["rows"], 6)
    for row in per_task.values():
        row["wrong_as"] = dict(row["wrong_as"])
    return {"per_task": per_task, "total": total}


def main() -> None:
    """Command line (see the module docstring); run from the repository root, whose paths the defaults name."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("MTLLORA_DATA_DIR") or str(Path("..", "shared", "data"))
    parser.add_argument("--data-dir", default=default_data)
    parser.add_argument("--out", default=str(Path("results", "commonsense", "task_id_assignment.json")))
    args = parser.parse_args()

    files = train_files(args.data_dir)
    per_task = {task: load_records(path) for task, path in files.items()}
    records = [
        {k: v for k, v in record.items() if k not in ("task", "task_id")} for task in TASKS for record in per_task[task]
    ]
    truth = [task for task in TASKS for _ in per_task[task]]
    results = {}
    for name, reference in (("format_only", None), ("with_reference", per_task)):
        ids, report = assign_task_ids(records, reference)
        results[name] = score(truth, ids) | {"report": report.summary()}

    out = {
        "generated_by": "python -m mtllora.benchmarks.commonsense_task_ids",
        "input": {
            task: {"file": f"{path.parent.name}/{path.name}", "rows": len(per_task[task]), "git_blob": git_blob(path)}
            for task, path in files.items()
        },
        "notes": (
            "The input is the local train files concatenated with the task removed. hellaswag is the partial file "
            "(3,368 of 39,905 rows); its format is unique, so the full file's rows are recovered the same way. "
            "with_reference uses the same files as reference, so it measures the exact-match path, not unseen data."
        ),
        **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name in results:
        print(name, json.dumps(results[name]["total"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
