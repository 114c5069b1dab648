"""The engine suite (`python -m speed --suites engine`): what a user pays for a whole training job, not one layer.

The same GLUE job runs several ways, each in a process of its own (a fresh interpreter, nothing warm from the
others): plain PEFT LoRA + HF `Trainer` (the peer), `mtllora.train` LoRA without and with DeepSpeed ZeRO-2 on the
same SST-2 batches, and `mtllora.train` LoRA and MTL-LoRA on the 5-task batches of the GLUE CPU profile. A row's
throughput is samples/s over the steps after warm-up, from the time at the end of every optimizer step
(`StepClock`); its start-up (data loader, optimizer, DeepSpeed) is measured apart: HF's loop time against the
wall-clock of `train()`. Targets: `mtllora.train` LoRA ≥ 1.0× the peer; MTL-LoRA ≥ 0.95× LoRA on the same 5-task
batches (the tasks' longer pairs make every row on them slower than on SST-2, adapter or not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
BATCH = 16  # the GLUE CPU profile's (experiment=glue_cpu), every row's
# key, label, `mtllora.train` overrides (None: the PEFT + Trainer peer), the batches it trains on
ROWS: list[tuple[str, str, list[str] | None, str]] = [
    ("peft_lora", "PEFT LoRA + Trainer", None, "sst2"),
    ("lora", "mtllora.train LoRA", ["method=lora", "benchmark.tasks=[sst2]", "deepspeed=none"], "sst2"),
    ("lora_zero2", "mtllora.train LoRA, ZeRO-2", ["method=lora", "benchmark.tasks=[sst2]", "deepspeed=zero2"], "sst2"),
    ("lora_multitask", "mtllora.train LoRA", ["method=lora", "deepspeed=none"], "5 tasks"),
    ("mtl_lora", "mtllora.train MTL-LoRA", ["method=mtl_lora", "deepspeed=none"], "5 tasks"),
]
# (row, against, at least): samples/s of `row` over those of `against`
TARGETS = [("lora", "peft_lora", 1.0), ("mtl_lora", "lora_multitask", 0.95)]


class StepClock(TrainerCallback):
    """Writes to `path` (JSON) the time at the end of every optimizer step, from which the suite takes samples/s
    after warm-up; injected into `mtllora.train` through `trainer.callbacks`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.step_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.path.write_text(json.dumps({"step_ends": self.step_ends}))


def steady_samples_per_second(step_ends: Sequence[float], warmup: int, batch: int) -> float:
    """Returns samples/s over the steps after the first `warmup` ones (their end times in `step_ends`)."""
    if len(step_ends) <= warmup:
        raise ValueError(f"{len(step_ends)} step(s) timed, but the first {warmup} are warm-up: raise the steps")
    return (len(step_ends) - warmup) * batch / (step_ends[-1] - step_ends[warmup - 1])


def peft_trainer_run(model_path: str, data_dir: str, steps: int, batch: int, clock: str) -> dict[str, float]:
    """Trains the peer: PEFT LoRA (r 8, α 16, dropout 0.05 on q, k, v, o, as configs/method/lora.yaml and the
    MiniLM model config) on SST-2 with HF's `Trainer`, at the GLUE CPU profile's batch, learning rate, length
    grouping and training-set cap; returns its start-up and loop seconds."""
    import peft
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from mtllora.benchmarks.base import seeded_subsample
    from mtllora.benchmarks.glue_data import load_glue_split

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    lora = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["query", "key", "value", "attention.output.dense"],
        task_type=peft.TaskType.SEQ_CLS,
    )
    model = peft.get_peft_model(model, lora)
    rows = load_glue_split("sst2", "train", data_dir)
    keep = seeded_subsample(len(rows), 2000, seed=1)
    rows = rows if keep is None else rows.select(keep)
    data = rows.map(
        lambda b: tokenizer(b["text_a"], truncation=True, max_length=128), batched=True, remove_columns=["text_a"]
    ).remove_columns(["text_b", "idx"])
    # Length grouping: `group_by_length=True` before transformers renamed it (the GPU machines' 5.17 may hold either).
    renamed = "train_sampling_strategy" in {field.name for field in dataclasses.fields(TrainingArguments)}
    grouping = {"train_sampling_strategy": "group_by_length"} if renamed else {"group_by_length": True}
    args = TrainingArguments(
        output_dir=str(Path(clock).parent / "peft"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-3,
        warmup_steps=0.06,  # below 1: a fraction of the run, as trainer.warmup_ratio
        **grouping,
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        seed=1,
    )
    collator = DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[StepClock(clock)])
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {
        "startup_seconds": seconds - output.metrics["train_runtime"],
        "loop_seconds": output.metrics["train_runtime"],
    }


def _mtllora_command(overrides: list[str], model_path: str, data_dir: str, steps: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtllora.train",
        "experiment=glue_cpu",
        *overrides,
        f"model.name_or_path={model_path}",
        f"paths.data_dir={data_dir}",
        f"paths.runs_dir={out}",
        f"hydra.run.dir={out / 'run'}",
        "run_name=engine",
        f"trainer.max_steps={steps}",
        f"trainer.logging_steps={steps}",
        "benchmark.max_eval_samples=8",  # evaluation is not timed: keep it short
        f"trainer.callbacks=[{{_target_:speed.engine.StepClock,path:{out / 'steps.json'}}}]",
    ]


def _peft_command(model_path: str, data_dir: str, steps: int, batch: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "speed.engine",
        "--model",
        model_path,
        "--data-dir",
        data_dir,
        "--steps",
        str(steps),
        "--batch",
        str(batch),
        "--out",
        str(out),
    ]


def measure_engine(
    model_path: str,
    data_dir: str,
    steps: int,
    warmup: int,
    threads: int,
    rows: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    model_label: str | None = None,
) -> dict[str, Any]:
    """Runs the suite's rows (`rows`: their keys, default all), each in its own process with `threads` torch
    threads, and returns the suite as a JSON-able dict: each row's samples/s after `warmup` of `steps` steps, its
    start-up seconds, and the ratios of the targets whose rows ran. The report names the model `model_label` (default:
    the folder's name)."""
    batch = BATCH
    unknown = sorted(set(rows or ()) - {key for key, *_ in ROWS})
    if unknown:
        raise ValueError(f"engine rows {unknown} unknown; expected some of {[key for key, *_ in ROWS]}")
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    measured = []
    with tempfile.TemporaryDirectory(prefix="speed-engine-") as scratch:
        for key, label, overrides, batches in ROWS:
            if rows is not None and key not in rows:
                continue
            out = Path(scratch) / key
            out.mkdir()
            if overrides is None:
                command = _peft_command(model_path, data_dir, steps, batch, out)
            else:
                command = _mtllora_command(overrides, model_path, data_dir, steps, out)
            log(f"engine: {key} ({label}, {batches}), {steps} steps")
            done = subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env_threads}, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"engine row {key} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
            step_ends = json.loads((out / "steps.json").read_text())["step_ends"]
            if overrides is None:
                timing = json.loads((out / "timing.json").read_text())
            else:
                train = json.loads((out / "run" / "metrics.json").read_text())["train"]
                if train["global_batch_size"] != BATCH:
                    raise RuntimeError(f"engine row {key} trained at batch {train['global_batch_size']}, not {BATCH}")
                timing = {"startup_seconds": train["startup_seconds"], "loop_seconds": train["loop_seconds"]}
            measured.append(
                {
                    "key": key,
                    "label": label,
                    "batches": batches,
                    "samples_per_second": steady_samples_per_second(step_ends, warmup, batch),
                    **timing,
                }
            )
    speeds = {row["key"]: row["samples_per_second"] for row in measured}
    targets = [
        {"row": row, "against": against, "ratio": speeds[row] / speeds[against], "at_least": at_least}
        for row, against, at_least in TARGETS
        if row in speeds and against in speeds
    ]
    for target in targets:
        target["met"] = target["ratio"] >= target["at_least"]
    return {
        "model": model_label or Path(model_path).name,
        "steps": steps,
        "warmup": warmup,
        "batch": batch,
        "threads": threads,
        "rows": measured,
        "targets": targets,
    }


def markdown(suite: dict[str, Any]) -> str:
    """Returns the suite's section of the benchmark report."""
    if "status" in suite:
        return f"## Engine: a whole training job\n\n{suite['status']}\n"
    peer = next((row["samples_per_second"] for row in suite["rows"] if row["key"] == "peft_lora"), None)
    lines = [
        "## Engine: a whole training job",
        "",
        f"GLUE on {suite['model']}, batch {suite['batch']}, samples/s over steps {suite['warmup'] + 1}–"
        f"{suite['steps']} (after {suite['warmup']} of warm-up), each row in its own process with "
        f"{suite['threads']} thread(s); start-up = set-up before HF's training loop (data loader, optimizer, "
        "DeepSpeed).",
        "",
        "| row | batches | samples/s | × PEFT + Trainer | start-up s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in suite["rows"]:
        lines.append(
            f"| {row['label']} | {row['batches']} | {row['samples_per_second']:.1f} | "
            f"{row['samples_per_second'] / peer:.2f} | {row['startup_seconds']:.1f} |"
            if peer
            else f"– | {row['startup_seconds']:.1f} |"
        )
    lines.append("")
    for t in suite["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"- {t['row']} ≥ {t['at_least']:.2f}× {t['against']}: {t['ratio']:.2f}× ({verdict})")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """The peer's process: `python -m speed.engine --model M --data-dir D --steps N --batch B --out DIR` trains
    PEFT LoRA + Trainer and writes DIR/steps.json and DIR/timing.json."""
    parser = argparse.ArgumentParser(prog="speed.engine", description=main.__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    timing = peft_trainer_run(args.model, args.data_dir, args.steps, args.batch, str(args.out / "steps.json"))
    (args.out / "timing.json").write_text(json.dumps(timing))


if __name__ == "__main__":
    main()
