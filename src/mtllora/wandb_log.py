"""Weights & Biases as the place where runs are compared: `logger=wandb` runs and `python -m mtllora.tables --wandb`.

A training run is one W&B run (offline, under the run directory's `wandb/`, unless an API key is configured) with
- an id derived from the run directory (`run_id`) and resume="allow": a resume continues that W&B run, and a rerun
  of the same configuration adds to it instead of making a second one; job type "train", or "eval" for a run that
  trains nothing (method=zero_shot);
- config = the portable resolved Hydra config, exactly what metrics.json holds as `config`. HF's WandbCallback is
  not used: it writes ~110 flat TrainingArguments keys next to it (a second learning_rate among them) and logs
  evaluation metrics under `train/`; `WandbHistory` logs the training curves instead;
- summary = metrics.json's numbers under names shared by every benchmark (`summary_metrics`);
- the adapter file as an artifact (never the frozen base model), and for benchmarks that write
  `predictions/<task>.jsonl` (generation benchmarks) a sample of those rows per task as the `predictions` table.

`tables --wandb` logs each benchmark's csv (scores, and the seed-paired differences with their standard errors) as W&B
Tables, with the plot, into one "tables" run (job type "tables") per group of training runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from transformers import TrainerCallback

LOGGER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "logger" / "wandb.yaml"
STEP_METRIC = "train/global_step"  # x-axis of the training curves (W&B's own _step also counts resumed rows)
HISTORY_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")  # of HF's per-step training logs
PREDICTIONS_KEY = "predictions"
TABLES_JOB = "tables"


def set_default_mode() -> None:
    """Runs W&B offline unless WANDB_MODE says otherwise or an API key is configured (env or ~/.netrc)."""
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
    os.environ.setdefault("WANDB_MODE", "online" if has_key else "offline")


def stable_id(key: str) -> str:
    """A W&B run id (16 hex digits) that depends on `key` only."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_id(output_dir: str | os.PathLike[str], runs_dir: str | os.PathLike[str]) -> str:
    """The W&B run id of a run directory: a hash of its path relative to the runs directory (e.g.
    `glue_cpu/glue-lora-minilm-s1`), the same on every machine and for every resume or rerun of that directory."""
    return stable_id(os.path.relpath(os.path.realpath(output_dir), os.path.realpath(runs_dir)))


def start_run(cfg: DictConfig, config: Mapping[str, Any], output_dir: Path, job_type: str) -> None:
    """Starts (or resumes) the W&B run of a training run with `config` (its `portable_config`) as the W&B config."""
    import wandb

    set_default_mode()
    wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group,
        name=cfg.run_name,
        tags=list(cfg.logger.tags),
        config=dict(config),
        dir=str(output_dir),
        id=run_id(output_dir, cfg.paths.runs_dir),
        resume="allow",
        job_type=job_type,
    )
    wandb.define_metric(STEP_METRIC)
    wandb.define_metric("train/*", step_metric=STEP_METRIC)


class WandbHistory(TrainerCallback):
    """Logs the Trainer's per-step training logs (loss, learning rate, gradient norm, epoch) as `train/<name>`
    against `train/global_step`, and nothing into the W&B config; the main process's callback only."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kwargs: Any):
        logs = logs or {}
        evaluation = {k: v for k, v in logs.items() if k.startswith("eval/")}  # AdapterTrainer.evaluate, mid-run
        if "loss" not in logs and not evaluation:  # the end-of-training totals are in metrics.json (the summary)
            return
        import wandb

        training = {f"train/{k}": v for k, v in logs.items() if k in HISTORY_KEYS}
        wandb.log({**training, **evaluation, STEP_METRIC: state.global_step})


def summary_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Returns a metrics.json's numbers as W&B summary keys, named alike for every benchmark and scaled as the tables
    show them: `score/<task>` (×100), `metric/<task>/<name>` (×100), `average`, `params/{trainable,total,percent}`,
    `train/<key>` (seconds, samples_per_second, steps, final_loss, precision, batch layout; unset ones left out),
    `peak_memory_mb`, `git_commit`."""
    summary: dict[str, Any] = {f"score/{task}": score for task, score in metrics["task_scores"].items()}
    summary |= {
        f"metric/{task}/{name}": 100 * v for task, values in metrics["tasks"].items() for name, v in values.items()
    }
    summary["average"] = metrics["average"]
    summary |= {f"params/{key}": value for key, value in metrics["params"].items()}
    summary |= {f"train/{key}": value for key, value in metrics["train"].items() if value is not None}
    summary |= {key: metrics[key] for key in ("peak_memory_mb", "git_commit")}
    return summary


def finish_run(
    metrics: Mapping[str, Any], adapter: Path | None, predictions_dir: Path, predictions_sample: int
) -> None:
    """Ends the W&B run of a training run: its summary (`summary_metrics`), the adapter file as an artifact of type
    "adapter" (when the run trained one) and the predictions table (when the benchmark wrote predictions)."""
    import wandb

    run = wandb.run
    run.summary.update(summary_metrics(metrics))
    if adapter is not None:
        metadata = {
            key: metrics[key] for key in ("benchmark", "profile", "method", "label", "model", "seed", "average")
        }
        # Named by the run's stable id: run names with their overrides outgrow W&B's 128-character artifact names,
        # and a resume or rerun adds a version of the same artifact.
        artifact = wandb.Artifact(
            f"adapter-{run.id}", type="adapter", description=run.name, metadata={**metadata, "run_name": run.name}
        )
        artifact.add_file(str(adapter))
        run.log_artifact(artifact)
    table = predictions_table(predictions_dir, metrics["task_order"], predictions_sample)
    if table is not None:
        run.log({PREDICTIONS_KEY: table})
    wandb.finish()


def sample_predictions(folder: Path, tasks: Sequence[str], per_task: int) -> tuple[list[str], list[list[Any]]]:
    """Returns (columns, rows) of up to `per_task` rows of each task's `<folder>/<task>.jsonl` (a fixed seeded sample,
    in file order): column `task`, then the files' fields as written (e.g. label, response, prediction); a value
    that is not a scalar becomes its JSON text."""
    sampled: list[tuple[str, dict[str, Any]]] = []
    for task in tasks:
        path = folder / f"{task}.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        picked = sorted(random.Random(0).sample(range(len(rows)), min(per_task, len(rows))))
        sampled += [(task, rows[i]) for i in picked]
    columns = list(dict.fromkeys(key for _, row in sampled for key in row))

    def cell(value: Any) -> Any:
        return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)

    return ["task", *columns], [[task, *(cell(row.get(key)) for key in columns)] for task, row in sampled]


def predictions_table(folder: Path, tasks: Sequence[str], per_task: int) -> Any:
    """A wandb.Table of `sample_predictions`, or None when the run wrote no predictions."""
    import wandb

    columns, rows = sample_predictions(folder, tasks, per_task)
    return wandb.Table(columns=columns, data=rows) if rows else None


def logger_settings(benchmark: str, model: str, profile: str) -> dict[str, Any]:
    """configs/logger/wandb.yaml resolved for one group of runs (project, entity, group, tags)."""
    node = OmegaConf.create(
        {
            "benchmark": {"name": benchmark},
            "model": {"name": model},
            "profile": profile,
            "method": {"name": TABLES_JOB},
            "logger": OmegaConf.load(LOGGER_CONFIG),
        }
    )
    return OmegaConf.to_container(node, resolve=True)["logger"]


def _typed_columns(header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> list[list[Any]]:
    """The csv rows as table rows: "" as None, and in a column whose every value is a number, numbers (counts as
    ints)."""

    def number(text: str) -> int | float | None:
        try:
            return int(text) if re.fullmatch(r"-?\d+", text) else float(text)
        except ValueError:
            return None

    numeric = {key for key in header if all(number(row[key]) is not None for row in rows if row[key] != "")}
    return [[None if row[k] == "" else number(row[k]) if k in numeric else row[k] for k in header] for row in rows]


def log_tables(written: Sequence[Path], runs_source: str, diff_kind: str) -> list[str]:
    """Logs the tables `mtllora.tables` wrote into W&B: for each benchmark csv, one "tables" run per group of our
    runs (benchmark, model, profile: the training runs' group) with the W&B Tables `scores` (that group's rows, its
    parser views, and the reference rows) and `differences` (its seed-paired differences; the `_std` columns of the
    csv, the standard errors, named `_se`), and the benchmark's plot. Returns the groups logged."""
    import wandb

    set_default_mode()
    groups = []
    for path in (p for p in written if p.suffix == ".csv"):
        with path.open(newline="") as file:
            reader = csv.DictReader(file)
            header, rows = list(reader.fieldnames or []), list(reader)

        def ours(row: Mapping[str, str]) -> bool:
            return row["source"] == runs_source or row["source"].startswith(runs_source + ": ")

        plot = path.with_suffix(".png")
        for profile, model in dict.fromkeys((row["profile"], row["model"]) for row in rows if ours(row)):
            mine = [row for row in rows if ours(row) and (row["profile"], row["model"]) == (profile, model)]
            scores = [row for row in rows if row["kind"] != diff_kind and (not ours(row) or row in mine)]
            differences = [row for row in mine if row["kind"] == diff_kind]
            settings = logger_settings(path.stem, model, profile)
            run = wandb.init(
                project=settings["project"],
                entity=settings["entity"],
                group=settings["group"],
                name=f"{TABLES_JOB} {settings['group']}",
                tags=settings["tags"],
                job_type=TABLES_JOB,
                id=stable_id(f"{TABLES_JOB}/{settings['group']}"),
                resume="allow",
                dir=str(path.parent),
                config={"benchmark": path.stem, "model": model, "profile": profile, "csv": path.name},
            )
            diff_header = [re.sub(r"_std$", "_se", key) for key in header]
            logged = {"scores": wandb.Table(columns=header, data=_typed_columns(header, scores))}
            if differences:
                logged["differences"] = wandb.Table(columns=diff_header, data=_typed_columns(header, differences))
            if plot.exists():
                logged["plot"] = wandb.Image(str(plot))
            run.log(logged)
            run.finish()
            groups.append(settings["group"])
    return groups
