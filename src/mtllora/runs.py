"""A finished training run, loaded back for inference or export: its benchmark, its model with the trained
adapters, the tokenizer and the task names.

The run directory's stored config (`config.json`, else the one in `metrics.json`) rebuilds the benchmark and the
model exactly as training built them; overrides (`key=value`, e.g. `model.name_or_path=/models/llama`) change what
differs on this machine. Serving needs the model and the task names, never the data (`Benchmark.for_serving`). The
adapter file must be the run's: its method, task count and (when stored) task names are checked against the run.
An `adapter.safetensors` file alone loads onto a causal LM named by `model.name_or_path`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from .adapters import AdapterConfig, load_adapter, read_adapter_config, read_adapter_tasks
from .benchmarks.base import Benchmark, ExportLayout, same_model_layout
from .configs import register_resolvers
from .engine import ADAPTER_FILE
from .models import ModelConfig, load_tokenizer
from .record import RunRecord
from .rundir import METRICS_FILE, stored_config
from .train import method_adapter_config

EXTERNAL_PREFIX = "<external>/"


@dataclasses.dataclass
class TrainedRun:
    """A trained model ready for inference: `model` holds the trained adapters (in eval mode, on `device`);
    `tokenizer` is None when loaded without it (`load_run(with_tokenizer=False)`)."""

    source: Path
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase | None
    tasks: list[str]
    base_model: str
    benchmark: Benchmark | None = None  # None for an adapter file alone

    @property
    def task_heads(self) -> bool:
        """Whether every task has its own head (GLUE), so that each task exports as its own model."""
        return self.benchmark is not None and self.benchmark.task_heads

    def task_id(self, name: str) -> int:
        """Returns the task id of task `name`, or raises listing the run's tasks."""
        if name not in self.tasks:
            raise ValueError(f"task {name!r} is not a task of {self.source}; its tasks are {self.tasks}")
        return self.tasks.index(name)

    def export_layout(self, task_id: int) -> ExportLayout:
        """Returns how task `task_id` maps onto a standard Hugging Face model (see `Benchmark.export_layout`)."""
        if self.benchmark is None:
            return same_model_layout(self.model, "AutoModelForCausalLM", "CAUSAL_LM")
        return self.benchmark.export_layout(self.model, task_id)


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses `argv` with `parser` plus an `overrides` positional: the run config's `key=value` overrides, which
    may stand anywhere on the command line (as Hydra's do, also after an option's value); any other leftover is
    argparse's usual usage error."""
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's stored config, anywhere")
    args = parser.parse_intermixed_args(argv)
    bad = [item for item in args.overrides if not item.partition("=")[0] or "=" not in item]
    if bad:
        parser.error(f"unrecognized arguments (not key=value overrides): {' '.join(bad)}")
    return args


def load_run(
    source: str | Path, overrides: Sequence[str] = (), device: str | None = None, with_tokenizer: bool = True
) -> TrainedRun:
    """Returns the trained run at `source` (a run directory, or an `adapter.safetensors` file with the override
    `model.name_or_path=...`), its model on `device` (default: cuda if available), and its tokenizer unless
    `with_tokenizer=False` (adapter exports need none). Raises naming what is missing or wrong: no adapter (an
    unfinished or zero-shot run), an unreadable one, an adapter of another run (method, task count or names), no
    stored config, or a model path the stored config left out (`<external>/...`) without an override for it."""
    source = Path(source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter = source / ADAPTER_FILE if source.is_dir() else source
    if not adapter.is_file():
        raise FileNotFoundError(
            f"{source} holds no trained adapter ({ADAPTER_FILE}): give a finished training run's directory or its "
            f"adapter file (zero-shot runs train none)"
        )
    register_resolvers()
    if not source.is_dir():
        return _load_adapter_file(adapter, overrides, device, with_tokenizer)
    stored = stored_config(source)
    if stored is None:
        raise FileNotFoundError(f"{source} has neither config.json nor metrics.json: not a run directory")
    cfg = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist(list(overrides)))
    _check_no_external_paths(cfg, source)
    saved, saved_tasks = read_adapter_config(adapter), read_adapter_tasks(adapter)
    benchmark = _serving_benchmark(cfg.benchmark, source)
    _check_adapter_fits_run(adapter, saved, saved_tasks, method_adapter_config(cfg, benchmark), benchmark.tasks)
    model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
    model, tokenizer = benchmark.build_model(model_cfg, with_tokenizer)
    load_adapter(model, adapter)
    model = model.to(device).eval()
    return TrainedRun(source, model, tokenizer, list(benchmark.tasks), model_cfg.name_or_path, benchmark)


def _serving_benchmark(node: DictConfig, source: Path) -> Benchmark:
    """The run's benchmark built by `Benchmark.for_serving` from its config node, reading no data. Its tasks are the
    config's; a config that leaves them to the data (an instruction benchmark's `tasks: null`) takes them from the
    run's own record (`RunRecord`), its `task_order` (one evaluation set per task, in task-id order), where it has one;
    never from the adapter file, which is what they are checked against."""
    config = OmegaConf.to_container(node, resolve=True)
    cls = get_class(config.pop("_target_"))
    tasks = None
    if config.get("tasks") is None and (source / METRICS_FILE).is_file():
        tasks = RunRecord.read(source / METRICS_FILE).task_order
    return cls.for_serving(config, tasks)


def _check_adapter_fits_run(
    adapter: Path, saved: AdapterConfig, saved_tasks: list[str] | None, run: AdapterConfig | None, tasks: list[str]
) -> None:
    """Raises naming both sides when the adapter file was not trained by this run's config: another method, another
    number of tasks, or (stored in files since task names were) other task names, e.g. a file copied from another
    run, whose task ids would be served under this run's task names."""
    if run is None:
        raise ValueError(f"{adapter}: this run trains no adapter (method.adapter: null), yet the file holds one")
    tasks_differ = saved_tasks is not None and saved_tasks != tasks
    if saved.method != run.method or saved.num_tasks != run.num_tasks or tasks_differ:
        held = f"{saved.num_tasks} tasks" if saved.num_tasks is not None else "no task count"
        trains = f"{run.num_tasks} tasks" if run.num_tasks is not None else "no task count"
        raise ValueError(
            f"{adapter} is not this run's adapter: it holds {saved.method} with {held}"
            + (f" {saved_tasks}" if saved_tasks is not None else "")
            + f", the run's config trains {run.method} with {trains} for its tasks {tasks}; "
            f"put the run's own {ADAPTER_FILE} back, or serve the file with the run it came from"
        )


def _load_adapter_file(adapter: Path, overrides: Sequence[str], device: str, with_tokenizer: bool) -> TrainedRun:
    """A file alone: the causal LM named by the override model.name_or_path; the tasks the file names, else named
    by index (`task0`, ...)."""
    base = OmegaConf.from_dotlist(list(overrides)).get("model", {}).get("name_or_path")
    if base is None:
        raise ValueError(f"{adapter} is an adapter file alone: name its base model (model.name_or_path=PATH_OR_ID)")
    num_tasks, tasks = read_adapter_config(adapter).num_tasks, read_adapter_tasks(adapter)
    model = AutoModelForCausalLM.from_pretrained(base)
    load_adapter(model, adapter)
    if tasks is None:
        tasks = [f"task{i}" for i in range(num_tasks)] if num_tasks is not None else []
    tokenizer = load_tokenizer(ModelConfig(name=base, name_or_path=base)) if with_tokenizer else None
    return TrainedRun(adapter, model.to(device).eval(), tokenizer, tasks, base)


def _check_no_external_paths(cfg, source: Path) -> None:
    """Raises naming every model setting that the stored config holds only as `<external>/name`. Benchmark paths
    (data) may stay external: serving reads no data."""
    keys = [
        f"model.{key}"
        for key, value in OmegaConf.to_container(cfg.model, resolve=False).items()
        if isinstance(value, str) and value.startswith(EXTERNAL_PREFIX)
    ]
    if keys:
        shown = ", ".join(f"{key}={OmegaConf.select(cfg, key)}" for key in keys)
        example = OmegaConf.select(cfg, keys[0]).removeprefix(EXTERNAL_PREFIX)
        raise ValueError(
            f"{source} was trained with paths outside the repository that its config does not record ({shown}); "
            f"give them on the command line, e.g. {keys[0]}=/path/to/{example}"
        )
