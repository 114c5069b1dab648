"""The run record, `metrics.json`: what one finished run measured and how it ran, as one dataclass with a version.

The engine writes it (`RunRecord.write`, version 2); `tables`, `runs` (and through them `export` and `predict`) read
it back (`RunRecord.read`). A file without `version` is version 1: every run recorded before the record had a
version, whose keys are those of version 2 but `warnings` and `inputs` may be absent (read as none). Scores follow
the tables' scale: `tasks` holds each evaluation set's metrics in 0..1, `task_scores` and `average` are ×100.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fileio import write_atomic

RECORD_VERSION = 2
# The keys every version holds; the others (`data`, `warnings`, `inputs`) may be absent in older or smaller records.
REQUIRED_KEYS = (
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
)


class RecordError(ValueError):
    """A metrics.json that is not a run record: bad JSON, a missing key, or a version this code does not know."""


@dataclasses.dataclass
class RunRecord:
    """One run's `metrics.json`. `params`: {trainable, total, percent}; `train`: seconds (startup_seconds before
    the first step, loop_seconds after), samples_per_second, steps, final_loss, resumed_from, precision and the batch
    layout; `data`: facts of the data its results depend on (None: none, left out of the file); `warnings`: every
    RunWarning message of the run, once each; `inputs`: the content fingerprints of its data and base model
    (`mtllora.rundir`); `config`: the portable resolved config."""

    benchmark: str
    profile: str | None
    method: str
    label: str
    model: str
    seed: int
    task_order: list[str]
    tasks: dict[str, dict[str, float]]
    task_scores: dict[str, float]
    average: float
    params: dict[str, Any]
    train: dict[str, Any]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    inputs: dict[str, Any] | None = None
    peak_memory_mb: float | None = None
    git_commit: str | None = None
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as metrics.json holds it: `version` first, then the keys in the order the engine has
        always written them (`data` only when there are data facts)."""
        out = {"version": self.version}
        for key in (*REQUIRED_KEYS[:11], "data", "train", "warnings", "inputs", "peak_memory_mb", "git_commit"):
            if key != "data" or self.data:
                out[key] = getattr(self, key)
        out["config"] = self.config
        return out

    def write(self, output_dir: Path, file_name: str) -> Path:
        """Writes the record to `output_dir/file_name` through a temporary file, so that a reader never sees half a
        record (a run counts as finished once it exists); returns the path."""
        return write_atomic(Path(output_dir) / file_name, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def from_dict(cls, data: Any, where: str | Path) -> RunRecord:
        """Returns the record held by `data` (a parsed metrics.json; keys it does not know are ignored). Raises
        RecordError naming `where` and the missing (dotted) key, or a version newer than this code's."""
        if not isinstance(data, Mapping):
            raise RecordError(f"{where}: expected a JSON object (a run record), got {type(data).__name__}")
        version = data.get("version", 1)
        if version not in range(1, RECORD_VERSION + 1):
            raise RecordError(
                f"{where}: record version {version!r}; this mtllora reads versions 1 to {RECORD_VERSION} "
                "(a newer mtllora wrote it)"
            )
        for key in REQUIRED_KEYS:
            nested_value(data, where, key)
        for key in ("trainable", "total"):
            nested_value(data, where, "params", key)
        for task in data["task_order"]:
            nested_value(data, where, "tasks", task)
            nested_value(data, where, "task_scores", task)
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        return cls(**{**values, "warnings": list(data.get("warnings") or ()), "version": version})

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """Returns the record in the metrics.json at `path`; raises RecordError naming the file when it is not one."""
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as err:  # bad JSON
            raise RecordError(f"{path}: {err}") from None
        return cls.from_dict(data, path)


def nested_value(data: Any, where: str | Path, *keys: str, error: type[Exception] = RecordError) -> Any:
    """Returns data[keys[0]][keys[1]]...; raises `error` naming `where` and the missing (dotted) key."""
    value = data
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            raise error(f"{where}: missing key {'.'.join(keys)!r}")
        value = value[key]
    return value
