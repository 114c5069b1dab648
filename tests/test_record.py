"""The run record (`mtllora.record.RunRecord`): metrics.json's keys and their order, version 1 files (every committed
run) read as before, and clear errors for what is not a record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mtllora.record import RECORD_VERSION, RecordError, RunRecord

RUNS = Path(__file__).resolve().parents[1] / "results" / "runs"


def record(**changes) -> RunRecord:
    fields = {
        "benchmark": "glue",
        "profile": "glue_ci",
        "method": "lora",
        "label": "LoRA",
        "model": "tiny",
        "seed": 1,
        "task_order": ["cola"],
        "tasks": {"cola": {"matthews_correlation": 0.25}},
        "task_scores": {"cola": 25.0},
        "average": 25.0,
        "params": {"trainable": 10, "total": 100, "percent": 10.0},
        "train": {"seconds": 1.5, "steps": 2},
        "config": {"seed": 1},
    }
    return RunRecord(**{**fields, **changes})


# The keys of a written record, in the order the engine has always written them (`data` only with data facts).
WRITTEN_KEYS = [
    "version",
    "benchmark",
    "profile",
    "method",
    "label",
    "model",
    "seed",
    "task_order",
    "tasks",
    "task_scores",
    "average",
    "params",
    "train",
    "warnings",
    "inputs",
    "peak_memory_mb",
    "git_commit",
    "config",
]


def test_written_keys_in_the_engines_order(tmp_path):
    path = record(warnings=["w"], peak_memory_mb=5.0, git_commit="abc").write(tmp_path, "metrics.json")
    data = json.loads(path.read_text())
    assert list(data) == WRITTEN_KEYS
    assert data["version"] == RECORD_VERSION == 2 and not (tmp_path / "metrics.json.tmp").exists()
    with_data = record(data={"partial_train": True}).to_dict()
    assert list(with_data)[11:13] == ["params", "data"] and with_data["data"] == {"partial_train": True}
    assert RunRecord.read(path) == record(warnings=["w"], peak_memory_mb=5.0, git_commit="abc")


def test_every_committed_run_reads_as_its_version():
    paths = sorted(RUNS.rglob("metrics.json"))
    assert paths
    for path in paths:
        data = json.loads(path.read_text())
        read = RunRecord.read(path)
        assert read.version == data.get("version", 1)
        assert read.average == data["average"] and read.task_scores == data["task_scores"]
        assert read.warnings == data.get("warnings", []) and read.inputs == data.get("inputs")


def test_a_version_1_file_lacks_warnings_and_inputs(tmp_path):
    data = record().to_dict()
    for key in ("version", "warnings", "inputs"):
        del data[key]
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    read = RunRecord.read(tmp_path / "metrics.json")
    assert (read.version, read.warnings, read.inputs) == (1, [], None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("average"), "missing key 'average'"),
        (lambda d: d["params"].pop("total"), "missing key 'params.total'"),
        (lambda d: d["task_scores"].pop("cola"), "missing key 'task_scores.cola'"),
        (lambda d: d.update(version=3), "record version 3; this mtllora reads versions 1 to 2"),
    ],
)
def test_what_is_not_a_record_is_named(tmp_path, change, message):
    data = record().to_dict()
    change(data)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=f"^{re.escape(str(path))}: {re.escape(message)}"):
        RunRecord.read(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match=f"^{re.escape(str(path))}: "):
        RunRecord.read(path)
