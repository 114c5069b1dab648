"""HF TrainingArguments from the `trainer`, `deepspeed` and `logger` config groups: which keys pass through, which the
engine sets itself, how a global batch splits over devices, and the precision a device supports.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments


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


def _skip_shared_memory_allreduce() -> None:
    """One CPU process has no peer to all-reduce with, yet DeepSpeed JIT-compiles its shared-memory all-reduce op
    when it starts (20-60 s the first time in an environment, about 1 s to load after): mark the op unavailable in
    DeepSpeed's own table of compatible ops, so that it takes torch.distributed's (gloo) all-reduce, which returns
    its input over one rank (the same trained weights, tested)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


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
    if ds_config is not None and world_size == 1 and not torch.cuda.is_available():
        _skip_shared_memory_allreduce()
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
