"""The training engine: HF Trainer with adapter-only checkpoints (`AdapterTrainer`), and the checks that decide which
checkpoint a run resumes from (`checkpoint_problems`, `last_complete_checkpoint`).

A checkpoint holds the adapters and their optimizer state only, never the frozen base; it counts once its COMPLETE
marker is written, after every rank has saved its part, and carries the loss summed so far (LOSS_RECORD_FILE), so
that a resumed run reports the whole run's mean loss. `mtllora.train.run` wires a config to it.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DeepSpeedSchedulerWrapper
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME

from .adapters import adapter_state_dict, load_adapter_state_dict, save_adapter
from .adapters.inject import check_safetensors_file
from .benchmarks.base import Benchmark
from .fileio import write_atomic
from .metrics import RunWarning
from .record import RunRecord

ADAPTER_FILE = "adapter.safetensors"
COMPLETE_MARKER = "COMPLETE"
# In each checkpoint: the training loss summed over every step so far, so that a resumed run's final_loss is the
# whole run's mean (HF's covers only the steps after the resume).
LOSS_RECORD_FILE = "training_loss.json"


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

    def fit(self, resume: bool, precision: str) -> dict[str, Any]:
        """Trains (with `resume`, from the last complete checkpoint, if any) when the trainer has a training set, else
        only places the model on its device (a zero-shot run); returns the run record's `train` facts: seconds (of
        which `startup_seconds` before the first step and `loop_seconds` of HF's training loop), throughput, steps,
        the whole run's mean loss, the checkpoint resumed from, `precision` (as `training_args.resolve_precision`
        noted it) and the batch layout."""
        args = self.args
        checkpoint = None
        if resume and self.train_dataset is not None:
            checkpoint = last_complete_checkpoint(args.output_dir, args.world_size, self.is_deepspeed_enabled)
        started = time.perf_counter()
        if self.train_dataset is not None:
            output = self.train(resume_from_checkpoint=checkpoint)
            seconds = time.perf_counter() - started
            # HF times its loop from after the set-up (data loader, optimizer, DeepSpeed's engine, a checkpoint's
            # state): the rest is start-up, a fixed cost that would otherwise hide in a short run's throughput.
            loop_seconds = output.metrics["train_runtime"]
            trained = {
                "samples_per_second": output.metrics.get("train_samples_per_second"),
                "steps": output.global_step,
                "final_loss": output.training_loss,
                "startup_seconds": max(seconds - loop_seconds, 0.0),
                "loop_seconds": loop_seconds,
            }
        else:
            self.model.to(args.device)  # DeepSpeed would have placed it during training
            seconds = time.perf_counter() - started
            trained = {"samples_per_second": None, "steps": 0, "final_loss": None}
        return {
            "seconds": seconds,
            **trained,
            "resumed_from": Path(checkpoint).name if checkpoint else None,
            "precision": precision,
            "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "per_device_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
        }

    def save_run(self, record: RunRecord, metrics_file: str) -> bool:
        """Saves the trained adapter (when the run trained one) and writes the run record into the run directory, on
        the main process; every rank must call it (under DeepSpeed the adapter is gathered across ranks). Returns
        whether this process wrote them."""
        trained = self.adapter_tensors() if self.train_dataset is not None else None
        if not self.is_world_process_zero():
            return False
        output_dir = Path(self.args.output_dir)
        if trained is not None:
            save_adapter(self.model, output_dir / ADAPTER_FILE, state_dict=trained)
        record.write(output_dir, metrics_file)
        return True

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
            write_atomic(folder / COMPLETE_MARKER, str(self.state.global_step))


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
            check_safetensors_file(path)
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
