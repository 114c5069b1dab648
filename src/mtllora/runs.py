"""A finished training run, loaded back for inference or export: its benchmark, its model with the trained
adapters, the tokenizer and the task names.

The run directory's stored config (`config.json`, else the one in `metrics.json`) rebuilds the benchmark and the
model exactly as training built them; overrides (`key=value`, e.g. `model.name_or_path=/models/llama`) change what
differs on this machine. An `adapter.safetensors` file alone loads onto a causal LM named by `model.name_or_path`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .adapters import load_adapter, read_adapter_config
from .benchmarks.base import Benchmark, ExportLayout, same_model_layout
from .models import ModelConfig
from .rundir import stored_config
from .train import ADAPTER_FILE, instantiate_node, register_resolvers

EXTERNAL_PREFIX = "<external>/"


@dataclasses.dataclass
class TrainedRun:
    """A trained model ready for inference: `model` holds the trained adapters (in eval mode, on `device`)."""

    source: Path
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
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


def load_run(source: str | Path, overrides: Sequence[str] = (), device: str | None = None) -> TrainedRun:
    """Returns the trained run at `source` (a run directory, or an `adapter.safetensors` file with the override
    `model.name_or_path=...`), its model on `device` (default: cuda if available). Raises naming what is missing:
    no adapter (an unfinished or zero-shot run), no stored config, or a machine-specific path the stored config
    left out (`<external>/...`) without an override for it."""
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
        return _load_adapter_file(adapter, overrides, device)
    stored = stored_config(source)
    if stored is None:
        raise FileNotFoundError(f"{source} has neither config.json nor metrics.json: not a run directory")
    cfg = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.from_dotlist(list(overrides)))
    _check_no_external_paths(cfg, source)
    benchmark: Benchmark = instantiate_node(cfg.benchmark)
    model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
    model, tokenizer = benchmark.build_model(model_cfg)
    load_adapter(model, adapter)
    model = model.to(device).eval()
    return TrainedRun(source, model, tokenizer, list(benchmark.tasks), model_cfg.name_or_path, benchmark)


def _load_adapter_file(adapter: Path, overrides: Sequence[str], device: str) -> TrainedRun:
    """A file alone: the causal LM named by the override model.name_or_path; tasks named by index."""
    base = OmegaConf.from_dotlist(list(overrides)).get("model", {}).get("name_or_path")
    if base is None:
        raise ValueError(f"{adapter} is an adapter file alone: name its base model (model.name_or_path=PATH_OR_ID)")
    model = AutoModelForCausalLM.from_pretrained(base)
    load_adapter(model, adapter)
    num_tasks = read_adapter_config(adapter).num_tasks
    tasks = [f"task{i}" for i in range(num_tasks)] if num_tasks is not None else []
    return TrainedRun(adapter, model.to(device).eval(), AutoTokenizer.from_pretrained(base), tasks, base)


def _check_no_external_paths(cfg, source: Path) -> None:
    """Raises naming every model/benchmark setting that the stored config holds only as `<external>/name`."""
    keys = [
        f"{group}.{key}"
        for group in ("model", "benchmark")
        for key, value in OmegaConf.to_container(cfg[group], resolve=False).items()
        if isinstance(value, str) and value.startswith(EXTERNAL_PREFIX)
    ]
    if keys:
        shown = ", ".join(f"{key}={OmegaConf.select(cfg, key)}" for key in keys)
        example = OmegaConf.select(cfg, keys[0]).removeprefix(EXTERNAL_PREFIX)
        raise ValueError(
            f"{source} was trained with paths outside the repository that its config does not record ({shown}); "
            f"give them on the command line, e.g. {keys[0]}=/path/to/{example}"
        )
