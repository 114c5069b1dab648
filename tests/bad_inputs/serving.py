"""Bad inputs: serving. One `Case` row each (see tests/bad_inputs/__init__.py).

Fixed behaviours that raise nothing are tested where they live: adapters in an eval-mode model run without dropout
(tests/adapters/test_routing.py), adapter exports need no tokenizer and serving a commonsense run needs no data
(tests/test_export.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mtllora.adapters import AdapterFileError, TaskIdError
from mtllora.benchmarks.instruct import RecordError
from mtllora.engine import ADAPTER_FILE
from mtllora.export import export
from mtllora.predict import main as predict_main
from mtllora.predict import predict
from mtllora.runs import load_run
from tests.bad_inputs import Case, Inputs
from tests.conftest import adapted
from tests.test_export import fake_run, glue_args


def glue_serving_run(inputs: Inputs, tmp: Path, *extra: str, name: str = "run") -> Path:
    """A trained-looking MTL-LoRA GLUE run directory (random adapter values, no training) in `tmp/name`."""
    return fake_run(tmp / name, [*glue_args(inputs.encoder, inputs.glue, "mtl_lora"), *extra])


def export_adapter_of_another_run(inputs: Inputs, tmp: Path) -> None:
    five = glue_serving_run(inputs, tmp, name="five-tasks")
    two = glue_serving_run(inputs, tmp, "benchmark.tasks=[cola,rte]", name="two-tasks")
    shutil.copy(five / ADAPTER_FILE, two / ADAPTER_FILE)  # cola..rte's weights would be exported as cola and rte
    export(two, "peft-per-task", tmp / "out")


def predict_into_its_input(inputs: Inputs, tmp: Path) -> None:
    records = tmp / "in.jsonl"
    records.write_text('{"sentence": "a good film"}\n')
    predict_main([str(tmp / "run"), "--task", "cola", "--input", str(records), "--output", str(records)])


def predict_on(content: bytes):
    def call(inputs: Inputs, tmp: Path) -> None:
        records = tmp / "in.jsonl"
        records.write_bytes(content)
        predict(load_run(glue_serving_run(inputs, tmp)), "cola", records)

    return call


def export_truncated_adapter(inputs: Inputs, tmp: Path) -> None:
    run_dir = glue_serving_run(inputs, tmp)
    adapter = run_dir / ADAPTER_FILE
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    export(run_dir, "peft-per-task", tmp / "out")


def task_ids_on_meta(inputs: Inputs, tmp: Path) -> None:
    adapted("mtl_lora")(input_ids=torch.tensor([[1, 2]]), task_ids=torch.tensor([0], device="meta"))


CASES: list[Case] = [
    Case(
        "export-adapter-of-another-run",
        export_adapter_of_another_run,
        ValueError,
        r"two-tasks/adapter.safetensors is not this run's adapter: it holds mtl_lora with 5 tasks \['cola', 'sst2', "
        r"'mrpc', 'stsb', 'rte'\], the run's config trains mtl_lora with 2 tasks for its tasks \['cola', 'rte'\]",
    ),
    Case("predict-output-is-input", predict_into_its_input, SystemExit, r"--output .*in.jsonl is the --input file"),
    Case("predict-empty-list", predict_on(b"[]"), RecordError, r"in.jsonl: no input records \(an empty JSON list\)"),
    Case(
        "predict-non-utf8",
        predict_on(b'{"sentence": "good"}\n{"sentence": "caf\xe9"}\n'),
        ValueError,
        r"in.jsonl: line 2 \(byte offset 38\): b'\\xe9' is not valid UTF-8",
    ),
    Case(
        "export-truncated-adapter",
        export_truncated_adapter,
        AdapterFileError,
        r"run/adapter.safetensors is truncated or corrupt, not a readable safetensors adapter file",
    ),
    Case("task-ids-on-meta", task_ids_on_meta, TaskIdError, r"task_ids are on the meta device .* device \(cpu\)"),
]
