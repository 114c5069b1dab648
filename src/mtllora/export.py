"""`python -m mtllora.export SOURCE --format FORMAT --out DIR`: a trained adapter, served anywhere.

For a fixed task t the MTL-LoRA update is an ordinary rank-r LoRA (ΔW_t = s·B̃_t Λ_t A, B̃_t = Σ_i p_ti B_i), so
every task leaves as a standard PEFT LoRA adapter; MoELoRA likewise, and MultiLoRA as one LoRA of rank n·r.

- `peft`: one PEFT adapter folder (LoRA, DoRA, MultiLoRA runs without per-task heads).
- `peft-per-task`: one PEFT adapter folder per task, `<out>/<task id>-<task name>` (MTL-LoRA and MoELoRA runs,
  and every run of a benchmark with a head per task, whose heads travel as PEFT `modules_to_save`).
- `merged`: a plain Hugging Face checkpoint (`save_pretrained`, tokenizer included) with one task's update folded
  into the weights (`--task`), loadable with `AutoModel*.from_pretrained` alone.

SOURCE is a run directory, or an `adapter.safetensors` file alone (then `--base-model` names the causal LM and
tasks are those the file stores, else `task0`, `task1`, ...). Extra `key=value` arguments override the run's stored
config (e.g. a model path that differs on this machine). No training or test data is read; only `merged` loads the
tokenizer (to copy it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .adapters import adapter_layers, adapter_state_dict, get_adapter_config, merge_task
from .adapters.convert import save_peft
from .runs import TrainedRun, load_run, parse_args_with_overrides

FORMATS = ("peft", "peft-per-task", "merged")
EXPORT_INFO_FILE = "mtllora_export.json"


def fitting_formats(run: TrainedRun) -> list[str]:
    """Returns the formats that fit the run: one adapter for all tasks (`peft`) only when neither the method
    (task-aware) nor the benchmark (a head per task) differs between tasks."""
    per_task = get_adapter_config(run.model).num_tasks is not None or run.task_heads
    return ["peft-per-task", "merged"] if per_task else ["peft", "merged"]


def export(
    source: str | Path,
    fmt: str,
    out: str | Path,
    task: str | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Writes the export of the run at `source` in format `fmt` under `out` and returns the folders written (one
    per task for `peft-per-task`). Raises naming the fitting formats, the run's tasks, or an existing `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    out = Path(out)
    if Path(source).resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out {out} holds the source {source}, which writing the export would replace")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    # Adapter formats need the weights only: a base model folder without tokenizer files exports them.
    run = load_run(source, overrides, device="cpu", with_tokenizer=fmt == "merged")
    config = get_adapter_config(run.model)
    fitting = fitting_formats(run)
    if fmt not in fitting:
        heads = " with a head per task" if run.task_heads else ""
        raise ValueError(f"--format {fmt} does not fit this {config.method} run{heads}; formats that do: {fitting}")
    per_task = fitting[0] == "peft-per-task"
    if fmt == "merged" and per_task and task is None:
        raise ValueError(f"--format merged writes one task's model: pass --task, one of {run.tasks}")
    if task is not None and not per_task:
        raise ValueError(f"this {config.method} run is the same model for every task: drop --task")
    task_ids = [run.task_id(task)] if task is not None else list(range(len(run.tasks))) if per_task else [None]
    if out.exists():
        shutil.rmtree(out)
    if fmt == "merged":
        return [_export_merged(run, task_ids[0], out)]
    return [_export_peft(run, task_id, out / _folder_name(run, task_id) if per_task else out) for task_id in task_ids]


def _folder_name(run: TrainedRun, task_id: int) -> str:
    """`<task id>-<task name>`, so that folders sort in task-id order."""
    return f"{task_id}-{run.tasks[task_id]}"


def _export_peft(run: TrainedRun, task_id: int | None, folder: Path) -> Path:
    """One PEFT adapter folder for task `task_id` (None: the task-agnostic adapter of a model without heads)."""
    layout = run.export_layout(task_id or 0)
    config = get_adapter_config(run.model)
    save_peft(
        run.model,
        folder,
        task_id=task_id if config.num_tasks is not None else None,
        base_model_name_or_path=run.base_model,
        rename=layout.rename,
        modules_to_save=_trained_modules(run, layout.rename),
        task_type=layout.peft_task_type,
    )
    if run.task_heads:  # the base model needs this task's head shape (num_labels) to load the adapter onto
        layout.config.save_pretrained(folder)
    _write_info(run, folder, "peft", task_id, layout.auto_class_name)
    return folder


def _trained_modules(run: TrainedRun, rename) -> dict[str, torch.Tensor]:
    """Returns {path in the standard model: value} of every parameter of the modules holding trained base
    parameters (task heads): PEFT's `modules_to_save` stores whole modules."""
    layers = dict(adapter_layers(run.model))
    own = {f"{path}.{name}" for path, layer in layers.items() for name, _ in layer.named_parameters(recurse=False)}
    trained = [name for name in adapter_state_dict(run.model) if name not in own and rename(name) is not None]
    values = {}
    for owner in sorted({name.rpartition(".")[0] for name in trained}):
        if any(owner == path or owner.startswith(path + ".") for path in layers):
            raise ValueError(
                f"{owner} has trained parameters inside an adapted layer, which a PEFT LoRA adapter cannot hold; "
                f"export with --format merged"
            )
        for leaf, value in run.model.get_submodule(owner).state_dict().items():
            values[f"{rename(owner)}.{leaf}"] = value
    return values


def _export_merged(run: TrainedRun, task_id: int | None, out: Path) -> Path:
    """A plain checkpoint of task `task_id` with the update folded in (the run's model is consumed)."""
    layout = run.export_layout(task_id or 0)
    _write_info(run, out, "merged", task_id, layout.auto_class_name)
    task_aware = get_adapter_config(run.model).num_tasks is not None
    merged = merge_task(run.model, task_id if task_aware else None, inplace=True)
    layout.standalone(merged).save_pretrained(out)
    run.tokenizer.save_pretrained(out)
    return out


def _write_info(run: TrainedRun, folder: Path, fmt: str, task_id: int | None, auto_class_name: str) -> None:
    config = get_adapter_config(run.model)
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "format": fmt,
        "source": str(run.source),
        "method": config.method,
        "task": run.tasks[task_id] if task_id is not None else None,
        "task_id": task_id,
        "base_model": run.base_model,
        "auto_class": auto_class_name,
    }
    (folder / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point; prints the folders written."""
    parser = argparse.ArgumentParser(prog="python -m mtllora.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory, or an adapter.safetensors file (then --base-model)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--out", required=True, help="the folder to write (refused if it exists, see --overwrite)")
    parser.add_argument("--task", help="the task to export (merged: required for per-task runs)")
    parser.add_argument("--base-model", help="the base model's path or hub id (model.name_or_path)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parse_args_with_overrides(parser, argv)
    overrides = [*args.overrides, *([f"model.name_or_path={args.base_model}"] if args.base_model else [])]
    try:
        folders = export(args.source, args.fmt, args.out, args.task, overrides, args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        sys.exit(f"mtllora.export: {err}")
    for folder in folders:
        info = json.loads((folder / EXPORT_INFO_FILE).read_text())
        task = f" task {info['task_id']} ({info['task']})" if info["task"] is not None else ""
        print(f"{folder}: {info['format']} {info['method']}{task}, loads with {info['auto_class']}")


if __name__ == "__main__":
    main()
