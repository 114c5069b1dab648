"""`python -m mtllora.train`: the run. Config → model + adapters → data → Trainer → run record (metrics.json).

Launch single-process, or on several devices with `deepspeed --num_gpus N --module mtllora.train ...` or
`torchrun --nproc_per_node N -m mtllora.train ...`. The training loop is HF Trainer's (with the DeepSpeed config
of the `deepspeed` group), through `mtllora.engine.AdapterTrainer`; its arguments come from `mtllora.training_args`;
the record is `mtllora.record.RunRecord`. This file only wires configs to objects.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from transformers import set_seed

from . import wandb_log
from .adapters import (
    AdapterConfig,
    adapter_layers,
    adapter_state_dict,
    apply_adapters,
    count_parameters,
    get_adapter_config,
    load_adapter,
    load_adapter_state_dict,
)
from .adapters.convert import from_peft_state_dict, read_peft_config
from .benchmarks.base import Benchmark
from .config_check import ConfigError, check_config, task_count_problem
from .configs import CONFIG_DIR, instantiate_node, register_resolvers
from .engine import ADAPTER_FILE, AdapterTrainer, recording_run_warnings
from .models import ModelConfig
from .record import RunRecord
from .rundir import (
    METRICS_FILE,
    claim_run_dir,
    data_fingerprint,
    model_fingerprint,
    portable_config,
    stored_inputs,
)
from .training_args import resolve_precision, training_arguments


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def method_adapter_config(cfg: DictConfig, benchmark: Benchmark) -> AdapterConfig | None:
    """Returns the run's AdapterConfig: the method's, plus the benchmark's trainable parameters (task heads), with
    `num_tasks` taken from the benchmark when the method leaves it null; None for `adapter: null` (the base model
    as it is, a zero-shot row)."""
    if cfg.method.adapter is None:
        return None
    adapter = OmegaConf.to_container(cfg.method.adapter, resolve=True)
    adapter["trainable"] = [*benchmark.trainable, *adapter.get("trainable", [])]
    if (problem := task_count_problem(adapter.get("num_tasks"), list(benchmark.tasks))) is not None:
        raise ConfigError(problem)
    if adapter.get("num_tasks", 0) is None:  # a task-aware method whose tasks come from the benchmark's data
        adapter["num_tasks"] = len(benchmark.tasks)
    return AdapterConfig.from_dict(adapter)


def load_initial_adapter(model: torch.nn.Module, path: str | Path) -> None:
    """Copies trained adapter values into the model's freshly applied adapters, to continue training them: a
    `save_adapter` file (its config must equal the run's) or a PEFT LoRA/DoRA folder (same method, r and alpha)."""
    path = Path(path)
    if not path.is_dir():
        load_adapter(model, path)
        return
    ours, theirs = get_adapter_config(model), read_peft_config(path)
    if (ours.method, ours.r, ours.alpha) != (theirs.method, theirs.r, theirs.alpha):
        raise ValueError(
            f"init_adapter {path} is {theirs.method} r={theirs.r} alpha={theirs.alpha:g}, this run trains "
            f"{ours.method} r={ours.r} alpha={ours.alpha:g}; choose the matching method (method.adapter.r=...)"
        )
    state = from_peft_state_dict(load_file(str(path / "adapter_model.safetensors")))
    adapters = {
        f"{name}.{leaf}" for name, layer in adapter_layers(model) for leaf, _ in layer.named_parameters(recurse=False)
    }
    missing = sorted(adapters - set(state))
    if missing:
        raise ValueError(f"init_adapter {path} lacks {len(missing)} of this run's adapter tensors, e.g. {missing[:3]}")
    load_adapter_state_dict(model, {**adapter_state_dict(model), **state})  # other trained tensors keep their init


def run_inputs(benchmark: Benchmark, model_cfg: ModelConfig) -> dict[str, Any]:
    """Returns what identifies a run besides its config: the content fingerprints of the data files its benchmark
    reads and of its base model (`mtllora.rundir`), stored in the run directory and compared on a rerun."""
    return {
        "data": data_fingerprint(benchmark.data_files()),
        "model": model_fingerprint(model_cfg.name_or_path, model_cfg.gguf_file),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Trains and evaluates one configuration; writes `metrics.json` (`RunRecord`) and the adapter into the run
    directory and returns the record as a dict (on every rank). With `trainer.resume=true`, a run whose directory
    already holds this configuration's `metrics.json` is finished: it returns that record without loading anything,
    so rerunning a whole profile after a crash continues where it stopped."""
    with recording_run_warnings() as run_warnings:
        return _run(cfg, run_warnings)


def _run(cfg: DictConfig, run_warnings: list[str]) -> dict[str, Any]:
    """`run`, with the list collecting its RunWarning messages (the record's `warnings`)."""
    register_resolvers()
    check_config(cfg)  # every problem of the config in one error, before any data or model loads
    output_dir = Path(cfg.paths.output_dir)
    if cfg.trainer.resume and (output_dir / METRICS_FILE).exists():
        return _finished_run(cfg, output_dir)
    # Config → model + adapters.
    set_seed(cfg.seed)
    benchmark: Benchmark = instantiate_node(cfg.benchmark)
    benchmark.check_inputs()
    model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
    adapter_config = method_adapter_config(cfg, benchmark)  # before loading: tasks may come from the data
    model, tokenizer = benchmark.build_model(model_cfg)
    trains = adapter_config is not None
    if trains:
        apply_adapters(model, adapter_config, tasks=benchmark.tasks)  # names stored in adapter.safetensors
        if cfg.init_adapter is not None:
            load_initial_adapter(model, cfg.init_adapter)
    else:
        model.requires_grad_(False)  # nothing is trained, so nothing counts as trainable
    params = count_parameters(model)
    # The run directory, then data → Trainer.
    bf16, precision = resolve_precision(cfg.trainer.bf16)
    args = training_arguments(cfg, output_dir, bf16)
    config, inputs = portable_config(cfg), run_inputs(benchmark, model_cfg)
    claim_run_dir(output_dir, config, cfg.trainer.resume, write=args.process_index == 0, inputs=inputs)
    callbacks = [instantiate_node(c) for c in cfg.trainer.callbacks]
    logs_to_wandb = cfg.logger.name == "wandb" and args.process_index == 0
    if logs_to_wandb:
        wandb_log.start_run(cfg, config, output_dir, job_type="train" if trains else "eval")
        callbacks.append(wandb_log.WandbHistory())
    trainer = AdapterTrainer(
        model=model,
        args=args,
        train_dataset=benchmark.train_dataset(tokenizer) if trains else None,
        data_collator=benchmark.collator(tokenizer),
        callbacks=callbacks,
        benchmark=benchmark,
        tokenizer=tokenizer,
    )
    train_facts = trainer.fit(cfg.trainer.resume, precision)
    # → the record.
    results = benchmark.evaluate(trainer, tokenizer)
    record = RunRecord(
        benchmark=benchmark.name,
        profile=cfg.profile,
        method=adapter_config.method if trains else cfg.method.name,
        label=cfg.method.label,
        model=model_cfg.name,
        seed=cfg.seed,
        task_order=list(results),
        tasks=results,
        task_scores={key: benchmark.task_score(m) for key, m in results.items()},
        average=benchmark.average(results),
        params={"trainable": params.trainable, "total": params.total, "percent": params.percent},
        data=benchmark.data_facts() or None,
        train=train_facts,
        warnings=list(dict.fromkeys(run_warnings)),  # every RunWarning of the run, each message once
        inputs=inputs,
        peak_memory_mb=_peak_memory_mb(),
        git_commit=_git_commit(),
        config=config,
    )
    if trainer.save_run(record, METRICS_FILE):  # on every rank (DeepSpeed gathers the adapter); true on the main one
        print(f"[mtllora] {benchmark.name} {cfg.method.label}: average {record.average:.2f} -> {output_dir}")
        if logs_to_wandb:
            adapter = output_dir / ADAPTER_FILE if trains else None
            wandb_log.finish_run(record.to_dict(), adapter, output_dir / "predictions", cfg.logger.predictions_sample)
    return record.to_dict()


def _finished_run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The record of a finished run directory, after checking that it is this configuration's: raises for another
    configuration, or (when the run recorded them) other data or another base model."""
    inputs = None
    if stored_inputs(output_dir) is not None:
        model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
        inputs = run_inputs(instantiate_node(cfg.benchmark), model_cfg)
    claim_run_dir(output_dir, portable_config(cfg), resume=True, write=False, inputs=inputs)
    print(f"[mtllora] {output_dir} is complete ({METRICS_FILE}): nothing to resume")
    return RunRecord.read(output_dir / METRICS_FILE).to_dict()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    return run(cfg)["average"]


def main() -> None:
    """Console entry point. Drops the `--local_rank=N` argument the DeepSpeed launcher appends (Hydra would
    reject it; LOCAL_RANK is in the environment), and ends distributed runs with os._exit after flushing, which
    avoids a known Gloo abort at interpreter shutdown."""
    register_resolvers()
    sys.argv = [a for a in sys.argv if not a.startswith("--local_rank")]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    _hydra_main()
    if distributed:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    # Run the module's own copy, not this `__main__` one, so that launchers which pickle the task function
    # (hydra-submitit) reference `mtllora.train` by name instead of pickling its globals.
    from mtllora.train import main as _main

    _main()
