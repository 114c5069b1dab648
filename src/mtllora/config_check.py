"""Config validation, once, before anything loads: every problem of a composed run config in one ConfigError.

`check_config(cfg)` reads the resolved config only (no data, no weights) and collects:
- types, from where each group's values go: `trainer.*` from the installed TrainingArguments' fields (with their
  declared choices, e.g. train_sampling_strategy, and enum values, e.g. lr_scheduler_type), `benchmark.*` from the
  benchmark class's constructor, `model.*` from ModelConfig, `method.adapter.*` from AdapterConfig and the method's
  options. Only plain types are checked (int, float, bool, str, null and their unions); the rest is the owner's;
- ranges and allowed values that a type cannot say (a batch of 0, `model.max_length=0`): the RULES table;
- what the engine already refuses, asked up front: trainer keys (`training_args.passed_training_arguments`), the
  batch layout (`training_args.batch_layout`), the adapter's own checks (`AdapterConfig`), ModelConfig's keys, the
  adapter's task count against the benchmark's, a local model folder that is missing, a run directory that cannot be
  written.
`mtllora.train.run` calls it first, `mtllora.preflight.check` (`make plan`) too, and `RunDirCheck` (a Hydra
callback) checks the run directory before Hydra opens its log file there.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """The composed config holds values a run cannot use; the message lists each (key, value, what was expected)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """`key` (dotted; skipped where the config lacks it) must satisfy `allowed`; `expected` says what that means."""

    key: str
    allowed: Callable[[Any], bool]
    expected: str


def _positive(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _positive_or_null(value: Any) -> bool:
    return value is None or _positive(value)


def _non_negative(value: Any) -> bool:
    return _is_number(value) and value >= 0


# What a type cannot say. Keys of every benchmark share one meaning (max_train_samples: rows per task).
RULES = (
    Rule("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    Rule("model.max_length", _positive, "a positive integer (inputs are truncated to this many tokens)"),
    Rule("benchmark.cutoff_len", _positive, "a positive integer (tokens per training example)"),
    Rule("benchmark.max_train_samples", _positive_or_null, "a positive integer (rows per task), or null for all rows"),
    Rule("benchmark.max_eval_samples", _positive_or_null, "a positive integer (rows per task), or null for all rows"),
    Rule("trainer.max_steps", lambda v: v == -1 or _positive(v), "a positive integer, or -1 to train num_train_epochs"),
    Rule("trainer.num_train_epochs", lambda v: _is_number(v) and v > 0, "a positive number"),
    Rule("trainer.learning_rate", _non_negative, "a non-negative number"),
    Rule("trainer.warmup_ratio", _non_negative, "a non-negative number (below 1 a fraction of the run, else steps)"),
    Rule("trainer.save_steps", _non_negative, "0 (no checkpoints), a fraction of the run below 1, or steps"),
    Rule("trainer.per_device_train_batch_size", _positive, "a positive integer"),
    Rule("trainer.per_device_eval_batch_size", _positive, "a positive integer"),
    Rule("trainer.gradient_accumulation_steps", _positive, "a positive integer"),
    Rule("trainer.global_train_batch_size", _positive_or_null, "a positive integer, or null"),
    Rule("trainer.bf16", lambda v: v in (True, False, "auto"), "true, false or auto"),
)

_PLAIN = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}


def _allowed(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_number(value)
    return isinstance(value, kind)


def type_problem(key: str, value: Any, hint: Any, choices: Any = None) -> str | None:
    """What is wrong with `value` for a destination annotated `hint` (with optional declared `choices`), or None.
    Only plain annotations are judged (int, float, bool, str, None, unions of them, and `Enum | str`: its values)."""
    members = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    enums = [m for m in members if isinstance(m, type) and issubclass(m, enum.Enum)]
    plain = [m for m in members if m in _PLAIN]
    if len(plain) + len(enums) != len(members):
        return None  # a list, mapping or path: the owner checks it
    if enums:
        choices = [m.value for e in enums for m in e]
    if choices is not None:
        allowed = list(choices) + ([None] if type(None) in members else [])
        return None if value in allowed else f"{key}={value!r}: expected one of {allowed}"
    if any(_allowed(value, kind) for kind in plain):
        return None
    return f"{key}={value!r}: expected {' or '.join(_PLAIN[kind] for kind in plain)}"


def _hints(owner: Any) -> dict[str, Any]:
    """The parameter annotations of a class's constructor (and of its bases', for what it passes on as **kwargs),
    or of a dataclass's fields."""
    hints: dict[str, Any] = {}
    for cls in reversed(owner.__mro__[:-1]):  # a subclass's annotation wins
        target = cls if dataclasses.is_dataclass(cls) else cls.__dict__.get("__init__")
        if target is not None:
            hints.update(typing.get_type_hints(target))
    hints.pop("return", None)
    return hints


@functools.cache
def _training_argument_fields() -> dict[str, tuple[Any, Any]]:
    """{field: (annotation, declared choices or None)} of the installed transformers' TrainingArguments."""
    from transformers import TrainingArguments

    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: (hints[f.name], f.metadata.get("choices")) for f in dataclasses.fields(TrainingArguments) if f.init}


def _group_type_problems(
    cfg: DictConfig, group: str, hints: Mapping[str, Any], choices: Mapping[str, Any]
) -> list[str]:
    """Type problems of the keys of node `group` (dotted) that `hints` annotates; an interpolated value names its
    source, so that one bad value read by two groups is recognisable as one."""
    node = OmegaConf.select(cfg, group)
    problems = []
    for key in node:
        if key not in hints:
            continue
        problem = type_problem(f"{group}.{key}", node[key], hints[key], choices.get(key))
        if problem is None:
            continue
        if not OmegaConf.is_interpolation(node, key):
            problems.append(problem)
        elif not _checked_at_source(raw := OmegaConf.to_container(node, resolve=False)[key]):
            problems.append(f"{problem} (from {raw})")
    return problems


_TYPED_GROUPS = ("model.", "trainer.", "benchmark.", "method.adapter.")


def _checked_at_source(raw: str) -> bool:
    """Whether an interpolation copies one key that is checked itself (`${seed}`, `${model.max_length}`): its bad
    value is then reported once, at that key."""
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw)
    return match is not None and (match[1] in {rule.key for rule in RULES} or match[1].startswith(_TYPED_GROUPS))


def task_count_problem(num_tasks: int | None, tasks: Any) -> str | None:
    """What is wrong with an adapter of `num_tasks` tasks for a benchmark with `tasks`, or None: a task-aware
    adapter has exactly one task per benchmark task (a spare task would be trained on nothing and counted in the
    parameters). None (the benchmark's count) and a benchmark whose tasks come from its data (`tasks` null) pass."""
    if num_tasks is None or not isinstance(tasks, list) or num_tasks == len(tasks):
        return None
    return (
        f"method.adapter.num_tasks={num_tasks!r}: expected {len(tasks)}, the number of benchmark.tasks {tasks} "
        f"(leave it at its default, ${{len:${{benchmark.tasks}}}}, or null)"
    )


def run_dir_problem(path: str | Path, key: str) -> str | None:
    """What keeps the run directory `path` from being created and written, or None; creates nothing. The nearest
    existing folder on the way must be a writable folder (os.access: root passes unless the folder is immutable)."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{key}={str(path)!r}: {existing} is a file, not a folder; expected a run directory that can be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{key}={str(path)!r}: the run directory cannot be written ({existing} is not writable); expected a "
            f"writable folder (set paths.runs_dir to one)"
        )
    return None


def _method_problems(cfg: DictConfig) -> list[str]:
    """The adapter's own checks (AdapterConfig, the method's options), its types and its task count."""
    from .adapters import AdapterConfig
    from .adapters.base import METHODS

    if cfg.method.get("adapter") is None:
        return []
    adapter = OmegaConf.to_container(cfg.method.adapter, resolve=True)
    tasks = OmegaConf.select(cfg, "benchmark.tasks")
    tasks = OmegaConf.to_container(tasks, resolve=True) if tasks is not None else None
    if adapter.get("method") not in METHODS:
        return [
            f"method.adapter.method={adapter.get('method')!r}: expected one of {sorted(METHODS)} (method.adapter "
            f"holds {sorted(adapter)}; a method without an adapter, such as zero_shot, takes no adapter settings)"
        ]
    hints = {**_hints(AdapterConfig), **_hints(METHODS[adapter["method"]].Options)}
    if adapter.get("num_tasks") is None:
        hints.pop("num_tasks", None)  # null: the benchmark's count (train.method_adapter_config)
    problems = _group_type_problems(cfg, "method.adapter", hints, {})
    if (count := task_count_problem(adapter.get("num_tasks"), tasks)) is not None:
        problems.append(count)
    if problems:
        return problems
    if "num_tasks" in adapter and adapter["num_tasks"] is None:
        if not isinstance(tasks, list):
            return []  # the tasks come from the data: train.method_adapter_config checks the adapter once read
        adapter["num_tasks"] = len(tasks)
    try:
        AdapterConfig.from_dict(adapter)
    except (TypeError, ValueError) as err:
        problems.append(f"method.adapter: {err}")
    return problems


def _trainer_problems(cfg: DictConfig) -> list[str]:
    """The trainer keys the engine accepts, their TrainingArguments types and choices, and the batch layout."""
    from .training_args import passed_training_arguments

    try:
        passed = passed_training_arguments(cfg.trainer)
    except ValueError as err:
        return [str(err)]
    fields = _training_argument_fields()
    hints = {key: fields[key][0] for key in passed}
    return _group_type_problems(cfg, "trainer", hints, {key: fields[key][1] for key in passed}) or _batch(cfg)


def _batch(cfg: DictConfig) -> list[str]:
    """The batch layout's problem on this many devices (`training_args.batch_layout`), once the trainer's types are
    right."""
    from .training_args import _world_size, batch_layout

    try:
        batch_layout(cfg.trainer, _world_size())
    except (TypeError, ValueError) as err:
        return [str(err)]
    return []


_ABSENT = object()


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem of the composed run config `cfg`, one line each (key=value: what was expected); [] if none."""
    from hydra.utils import get_class

    from .models import ModelConfig, model_path_problem

    problems = _trainer_problems(cfg)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    problems += _group_type_problems(cfg, "model", _hints(ModelConfig), {})
    try:
        ModelConfig.from_mapping(model)
    except (TypeError, ValueError) as err:
        problems.append(f"model: {err}")
    if (missing := model_path_problem(str(model.get("name_or_path")))) is not None:
        problems.append(f"model.name_or_path={missing}")
    try:
        benchmark_class = get_class(cfg.benchmark._target_)
    except ImportError as err:
        problems.append(f"benchmark._target_={cfg.benchmark._target_!r}: {err}")
    else:
        problems += _group_type_problems(cfg, "benchmark", _hints(benchmark_class), {})
    problems += _method_problems(cfg)
    reported = {problem.split("=", 1)[0] for problem in problems}
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is not _ABSENT and rule.key not in reported and not rule.allowed(value):
            problems.append(f"{rule.key}={value!r}: expected {rule.expected}")
    output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
    if output_dir is not None and (unwritable := run_dir_problem(output_dir, "paths.output_dir")) is not None:
        problems.append(unwritable)
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raises one ConfigError listing every problem of the composed run config (`config_problems`)."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s) in the run config:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )


class RunDirCheck(Callback):
    """Hydra callback (configs/hydra/default.yaml): refuses a run directory that cannot be written before Hydra
    opens its log file there, which would fail as "Unable to configure handler 'file'" with the directory buried
    in the cause. Hydra turns a callback's exception into a warning and goes on, so this one ends the command
    (SystemExit, status 1) with the ConfigError's message."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        problem = run_dir_problem(OmegaConf.select(config, key), key)
        if problem is not None:
            raise SystemExit(f"{ConfigError.__name__}: {problem}")
