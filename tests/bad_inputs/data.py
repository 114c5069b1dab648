"""Bad inputs: data. One `Case` row each (see tests/bad_inputs/__init__.py).

Every row fails in the benchmark's `check_inputs`, before any model loads, except the ones that say otherwise: a
model folder is still given (the tiny encoder), so a check that stopped working would fail later with another
message and the row would catch it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mtllora.benchmarks.image_text import ImageTextBenchmark
from mtllora.benchmarks.instruct import InputsError
from mtllora.testing import write_tiny_commonsense, write_tiny_llama
from tests.bad_inputs import Case, Inputs, glue_run
from tests.test_train import REPO, compose_cfg

TOY = REPO / "data" / "examples" / "toy_multitask"
NOT_UTF8 = b"\xff"


def _run(tmp: Path, *args: str) -> dict:
    """Runs `mtllora.train` on the composed overrides in `tmp/run`; returns its metrics."""
    from mtllora.train import run

    return run(compose_cfg([*args, f"paths.runs_dir={tmp / 'runs'}"], tmp / "run"))


def _insert(path: Path, line: int, data: bytes) -> None:
    """Puts `data` at the start of line `line` (1-based) of a file."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = data + lines[line - 1]
    path.write_bytes(b"\n".join(lines))


# --- GLUE (experiment=glue_ci on a copy of the tiny tsvs) -------------------------------------------------------


def _glue(edit: Callable[[Path], Any]) -> Callable[[Inputs, Path], dict]:
    """A case: the tiny GLUE copy changed by `edit(copy)`, then trained on."""

    def call(inputs: Inputs, tmp: Path) -> dict:
        glue = shutil.copytree(inputs.glue, tmp / "glue")
        edit(glue)
        return glue_run(inputs, tmp, glue=glue)

    return call


def _header_only(path: Path) -> None:
    path.write_text(path.read_text().split("\n", 1)[0] + "\n")


# --- instruct (experiment=instruct_example on a copy of the toy data) ------------------------------------------


def _instruct(edit: Callable[[Path], Any], *extra: str, llama: bool = False) -> Callable[[Inputs, Path], dict]:
    """A case: the toy multi-task data copied and changed by `edit(copy)`, then trained on (`llama`: on a tiny Llama
    that knows its words, for a run that goes to the end; else on the tiny encoder, which the data check precedes)."""

    def call(inputs: Inputs, tmp: Path) -> dict:
        toy = shutil.copytree(TOY, tmp / "toy")
        edit(toy)
        model = inputs.encoder
        if llama:
            model = write_tiny_llama(tmp / "llama", [path.read_text() for path in sorted(toy.glob("*.jsonl"))])
        return _run(
            tmp,
            "experiment=instruct_example",
            f"model.name_or_path={model}",
            "model.gguf_file=null",
            "benchmark.tasks=[topic,sentiment]",
            f"benchmark.train_files=[{toy / 'train.jsonl'}]",
            f"benchmark.test_files.sentiment={toy / 'test_sentiment.jsonl'}",
            f"benchmark.test_files.topic={toy / 'test_topic.jsonl'}",
            f"benchmark.cache_dir={tmp / 'cache'}",
            *extra,
        )

    return call


def _edit_records(file: str, change: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    """An edit of the toy data: `change(records)` on the records of `file`, in place."""

    def edit(toy: Path) -> None:
        records = [json.loads(line) for line in (toy / file).read_text().splitlines()]
        change(records)
        (toy / file).write_text("".join(json.dumps(r) + "\n" for r in records))

    return edit


def _empty_sentiment_outputs(every: int) -> Callable[[list[dict]], None]:
    """Empties `output` (keeping `answer`) of every `every`-th sentiment record, from the first."""

    def change(records: list[dict]) -> None:
        for record in [r for r in records if r["task"] == "sentiment"][::every]:
            record["output"] = ""

    return change


def _no_labels(records: list[dict]) -> None:
    for record in records:
        record.pop("answer")
        record["output"] = ""


# --- commonsense (experiment=commonsense_ci on the tiny LLM-Adapters layout) ----------------------------------


def _commonsense(edit: Callable[[Path], Any]) -> Callable[[Inputs, Path], dict]:
    """A case: the tiny commonsense data (`write_tiny_commonsense`) changed by `edit(<data>/commonsense)`."""

    def call(inputs: Inputs, tmp: Path) -> dict:
        root = write_tiny_commonsense(tmp / "data")
        edit(root / "commonsense")
        args = ["experiment=commonsense_ci", f"model.name_or_path={inputs.encoder}", f"paths.data_dir={root}"]
        return _run(tmp, *args, f"benchmark.cache_dir={tmp / 'cache'}")

    return call


# --- image-text (a hand-written GQA split in the VL-T5 layout, one multi-image features.h5) ------------------


def _write_gqa(root: Path, widths: dict[str, int] | None = None) -> Path:
    """Writes GQA train/valid/testdev files of two questions each about images i0..i5, and their 9 × 16 features
    (`widths` changes an image's width); returns root."""
    (root / "GQA").mkdir(parents=True)
    for number, split in enumerate(("train", "valid", "testdev")):
        records = [
            {"img_id": f"i{2 * number + k}", "sent": "what is it?", "question_id": f"{split}{k}", "label": {"a": 1}}
            for k in range(2)
        ]
        (root / "GQA" / f"{split}.json").write_text(json.dumps(records))
    with h5py.File(root / "features.h5", "w") as features:
        for i in range(6):
            features[f"i{i}/features"] = np.zeros((9, (widths or {}).get(f"i{i}", 16)), dtype=np.float32)
    return root


def _truncated_features(inputs: Inputs, tmp: Path) -> dict:
    root = _write_gqa(tmp / "data")
    data = (root / "features.h5").read_bytes()
    (root / "features.h5").write_bytes(data[: len(data) // 2])  # an interrupted copy
    args = ["experiment=image_text_ci", f"model.name_or_path={inputs.encoder}", f"benchmark.data_dir={root}"]
    return _run(tmp, *args, "benchmark.tasks=[gqa]")


def _feature_width(inputs: Inputs, tmp: Path) -> Any:
    # Read after the model loads (the records are read to build the training set), before any training step.
    root = _write_gqa(tmp / "data", widths={"i1": 12})
    benchmark = ImageTextBenchmark(root, tasks=["gqa"], features=["features.h5"], n_boxes=None)
    return benchmark.records("gqa", "train", None, 0)


CASES: list[Case] = [
    # A task without training rows trained without it and still scored it (issue 19, case 5).
    Case(
        "glue-empty-train-tsv",
        _glue(lambda glue: (glue / "CoLA" / "train.tsv").write_text("")),
        ValueError,
        r"CoLA/train\.tsv: no data rows; expected at least one row of source, label, original_judgment, sentence",
    ),
    Case(
        "glue-train-tsv-header-only",
        _glue(lambda glue: _header_only(glue / "RTE" / "train.tsv")),
        ValueError,
        r"RTE/train\.tsv: no data rows besides its header; expected at least one row of index, sentence1",
    ),
    # Failed after training ("Column 'input_ids' doesn't exist").
    Case(
        "glue-dev-tsv-header-only",
        _glue(lambda glue: _header_only(glue / "SST-2" / "dev.tsv")),
        ValueError,
        r"has 1 unusable file\(s\) of tasks .*\n  - .*SST-2/dev\.tsv: no data rows besides its header",
    ),
    Case(
        "glue-tsv-not-utf8",
        _glue(lambda glue: _insert(glue / "SST-2" / "train.tsv", 3, NOT_UTF8)),
        ValueError,
        r"SST-2/train\.tsv: line 3 \(byte offset \d+\): b'\\xff' is not valid UTF-8",
    ),
    # Every output empty trained on EOS alone (issue 19, case 6).
    Case(
        "instruct-every-output-empty",
        _instruct(_edit_records("train.jsonl", _empty_sentiment_outputs(1))),
        InputsError,
        r"task 'sentiment': all 64 training records have an empty 'output' \(first: .*/train\.jsonl: record 3\); the "
        r"model would learn to answer with EOS alone",
    ),
    # Some empty outputs among many: the run still means something, and says so.
    Case(
        "instruct-some-outputs-empty",
        _instruct(_edit_records("train.jsonl", _empty_sentiment_outputs(8)), "trainer.max_steps=2", llama=True),
        None,
        r"toy_multitask: 8 of 64 training records of task 'sentiment' have an empty 'output' \(first: instruction "
        r"'Is the sentiment of this review positive or negative\?'\); each trains the model to answer with EOS alone",
    ),
    # Empty labels without `answer` scored accuracy 1.0 (an empty prediction equals an empty label).
    Case(
        "instruct-test-labels-empty",
        _instruct(_edit_records("test_sentiment.jsonl", _no_labels)),
        InputsError,
        r"test_sentiment\.jsonl: record 0 \(line 1\): empty label: 'output' is '' and there is no 'answer'; a test "
        r"record needs the answer its response is scored against \(the test file of task 'sentiment'\)",
    ),
    Case(
        "instruct-task-without-train-records",
        _instruct(lambda toy: None, "benchmark.tasks=[topic,sentiment,weather]", "+benchmark.test_files.weather=x"),
        InputsError,
        r"task 'weather' has no training records in .*/train\.jsonl; every task of benchmark.tasks needs some",
    ),
    Case(
        "instruct-jsonl-not-utf8",
        _instruct(lambda toy: _insert(toy / "train.jsonl", 2, NOT_UTF8)),
        InputsError,
        r"toy/train\.jsonl: line 2 \(byte offset \d+\): b'\\xff' is not valid UTF-8",
    ),
    Case(
        "instruct-answer-pattern-not-a-regex",
        _instruct(lambda toy: None, "benchmark.answer_patterns.sentiment='(positive|negative'"),
        ValueError,
        r"benchmark\.answer_patterns\.sentiment: '\(positive\|negative' is not a valid regular expression \(missing \)",
    ),
    # An empty test file gave exit 0 with NaN accuracy and average (issue 19, case 7).
    Case(
        "commonsense-test-file-empty",
        _commonsense(lambda root: (root / "boolq" / "test.json").write_text("[]")),
        InputsError,
        r"test set 'boolq': .*/boolq/test\.json has no records",
    ),
    Case(
        "commonsense-task-without-train-records",
        _commonsense(lambda root: (root / "piqa" / "train.json").write_text("[]")),
        InputsError,
        r"task 'piqa' has no training records in .*/piqa/train\.json",
    ),
    Case(
        "commonsense-test-answer-empty",
        _commonsense(
            lambda root: (root / "winogrande" / "test.json").write_text(
                json.dumps([{**r, "answer": " "} for r in json.loads((root / "winogrande" / "test.json").read_text())])
            )
        ),
        InputsError,
        r"winogrande/test\.json: record 0: empty label: 'answer' is ' '",
    ),
    Case(
        "commonsense-json-not-utf8",
        _commonsense(lambda root: _insert(root / "ARC-Challenge" / "test.json", 3, NOT_UTF8)),
        InputsError,
        r"ARC-Challenge/test\.json: line 3 \(byte offset \d+\): b'\\xff' is not valid UTF-8",
    ),
    Case(
        "image-text-features-h5-truncated",
        _truncated_features,
        OSError,
        r"image_text: 1 unreadable feature file\(s\): .*/features\.h5: not a readable HDF5 feature file \(.*truncated",
    ),
    Case(
        "image-text-feature-width",
        _feature_width,
        ValueError,
        r"gqa train: 1 of 4 images have features of another width than 16 \(the first image's of .*features\.h5\): i1 "
        r"in .*/features\.h5 \(12\)",
    ),
]
