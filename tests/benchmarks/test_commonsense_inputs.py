"""Commonsense inputs checked before any model loads (every missing or malformed file in one error, a partial train
set refused unless opted in, and then recorded), and both official parsers scored from the same responses."""

from __future__ import annotations

import pytest

from mtllora.benchmarks import commonsense
from mtllora.benchmarks.commonsense import TASKS, CommonsenseBenchmark
from mtllora.benchmarks.instruct import InputsError

from .test_commonsense import GOOD, fixture_records, write_commonsense, write_json, write_llm_adapters

FIXTURE_TRAIN = {task: len(records) for task, records in fixture_records("train").items()}
LAYOUT_SOURCE = "Download: https://github.com/AGI-Edgerunners/LLM-Adapters/tree/main/dataset"


@pytest.fixture
def complete(monkeypatch):
    """The fixture's train files count as LLM-Adapters' complete ones."""
    monkeypatch.setattr(commonsense, "FULL_TRAIN_RECORDS", dict(FIXTURE_TRAIN))


def test_complete_data_passes_and_is_recorded_as_not_partial(tmp_path, complete):
    root = write_llm_adapters(tmp_path)
    bench = CommonsenseBenchmark(root, cache_dir=tmp_path / "cache")
    bench.check_inputs()
    assert bench.data_facts() == {
        "train_source": str(root / "dataset"),
        "train_records": FIXTURE_TRAIN,
        "full_train_records": FIXTURE_TRAIN,
        "partial": False,
    }
    assert len(bench.train_records()) == sum(FIXTURE_TRAIN.values())


def test_a_partial_train_set_needs_the_opt_in_and_is_recorded(tmp_path, monkeypatch, complete):
    full = {**FIXTURE_TRAIN, "hellaswag": 5, "piqa": 4}
    monkeypatch.setattr(commonsense, "FULL_TRAIN_RECORDS", full)
    root = write_commonsense(tmp_path)
    bench = CommonsenseBenchmark(root, cache_dir=tmp_path / "cache")
    with pytest.raises(InputsError) as error:
        bench.check_inputs()
    assert (
        "  - partial train set: piqa has 2 of 4 records, hellaswag has 2 of 5 records (18 of 23 records of "
        "LLM-Adapters' commonsense_170k)." in str(error.value)
    )
    assert "benchmark.allow_partial_train=true" in str(error.value)
    with pytest.raises(ValueError, match="partial train set"):  # training itself refuses too, not only the check
        bench.train_records()
    allowed = CommonsenseBenchmark(root, allow_partial_train=True, cache_dir=tmp_path / "cache")
    allowed.check_inputs()
    assert allowed.data_facts() == {
        "train_source": str(root / "commonsense"),
        "train_records": FIXTURE_TRAIN,
        "full_train_records": full,
        "partial": True,
    }
    assert len(allowed.train_records()) == 18


def test_the_shared_copy_counts_as_partial():
    assert sum(commonsense.FULL_TRAIN_RECORDS.values()) == 170_420
    assert commonsense._partial_tasks({**commonsense.FULL_TRAIN_RECORDS, "hellaswag": 3368}) == {"hellaswag": 3368}


def test_every_missing_or_malformed_file_in_one_error(tmp_path, complete):
    root = write_commonsense(tmp_path)
    folder = root / "commonsense"
    (folder / "piqa" / "test.json").unlink()
    (folder / "hellaswag" / "test_reconstructed.json").unlink()
    write_json(folder / "boolq" / "test.json", [{k: v for k, v in GOOD.items() if k != "answer"}])
    write_json(folder / "winogrande" / "test.json", [])
    (folder / "train" / "openbookqa_train.json").unlink()
    bench = CommonsenseBenchmark(root, cache_dir=tmp_path / "cache")  # constructing it does not raise
    with pytest.raises(InputsError) as error:
        bench.check_inputs()
    lines = str(error.value).splitlines()
    assert lines[:6] == [
        f"commonsense: the data under data_dir={root} is not usable:",
        f"  - {folder / 'boolq' / 'test.json'}: record 0: missing 'answer' (the label of a test record)",
        f"  - test set 'piqa': no file {folder / 'piqa' / 'test.json'}",
        f"  - test set 'hellaswag': no file {folder / 'hellaswag' / 'test.json'} or "
        f"{folder / 'hellaswag' / 'test_reconstructed.json'}",
        f"  - test set 'winogrande': {folder / 'winogrande' / 'test.json'} has no records",
        f"  - commonsense train files missing in {folder}: openbookqa/train.json or train/openbookqa_train.json.",
    ]
    assert "make reproduce-commonsense ARGS='benchmark.train_file=/path/to/commonsense_170k_taskid.json'" in lines[6]
    assert lines[6].endswith(f"{LAYOUT_SOURCE} (commonsense_170k.json at the repository root).")


def test_a_combined_train_file_is_read_by_the_check(tmp_path, complete):
    root = write_commonsense(tmp_path)
    records = [{**r, "task": task} for task, rs in fixture_records("train").items() for r in rs]
    bench = CommonsenseBenchmark(root, train_file=write_json(tmp_path / "all.json", records), cache_dir=tmp_path)
    bench.check_inputs()
    assert bench.data_facts()["train_records"] == FIXTURE_TRAIN
    assert bench.data_facts()["train_source"] == str(tmp_path / "all.json")
    bad = CommonsenseBenchmark(root, train_file=write_json(tmp_path / "bad.json", [{"x": 1}]), cache_dir=tmp_path)
    with pytest.raises(InputsError, match=r"bad.json: record 0: missing 'instruction'"):
        bad.check_inputs()


def test_both_parsers_score_the_same_responses(tmp_path):
    root = write_commonsense(tmp_path)
    rows = [
        {"label": "answer2", "response": "the correct answer is answer2"},  # both
        {"label": "answer2", "response": "I think 2"},  # official only: digit fallback + substring rule
        {"label": "answer3", "response": "maybe 1"},  # neither
        {"label": "answer1", "response": "no idea"},  # neither; no answer under strict and official
    ]
    for mode in ("official", "strict"):
        bench = CommonsenseBenchmark(root, mode=mode, cache_dir=tmp_path)
        scored = [{**row, "prediction": bench.extract_answer("ARC-Easy", row["response"])} for row in rows]
        metrics = bench.score("ARC-Easy", scored)
        headline = {"official": (0.5, 0.25), "strict": (0.25, 0.75)}[mode]
        assert metrics == {
            "accuracy": headline[0],
            "no_answer": headline[1],
            "accuracy_official": 0.5,
            "accuracy_strict": 0.25,
        }
        assert [row["prediction_official"] for row in scored] == ["answer2", "2", "1", ""]
        assert [row["prediction_strict"] for row in scored] == ["answer2", "", "", ""]
        assert [row["correct_official"] for row in scored] == [True, True, False, False]
        assert [row["correct_strict"] for row in scored] == [True, False, False, False]
        assert [row["correct"] for row in scored] == [row[f"correct_{mode}"] for row in scored]


def test_the_configured_tasks_only(tmp_path, complete):
    root = write_commonsense(tmp_path)
    (root / "commonsense" / "piqa" / "test.json").unlink()
    bench = CommonsenseBenchmark(root, tasks=[t for t in TASKS if t != "piqa"], cache_dir=tmp_path)
    bench.check_inputs()  # piqa's test file is not needed
    assert list(bench.data_facts()["train_records"]) == [t for t in TASKS if t != "piqa"]


def test_a_run_fails_on_its_data_before_the_model_loads(tmp_path):
    from mtllora.train import run

    from ..test_train import compose_cfg

    root = write_commonsense(tmp_path / "data")
    (root / "commonsense" / "train" / "piqa_train.json").unlink()
    (tmp_path / "empty-model").mkdir()  # a folder (the config check wants one) without a model in it
    cfg = compose_cfg(
        [
            "experiment=commonsense_ci",
            "method=lora",
            f"model.name_or_path={tmp_path / 'empty-model'}",  # loading it would raise something else
            f"paths.data_dir={root}",
        ],
        tmp_path / "run",
    )
    with pytest.raises(InputsError, match=r"train files missing in .*: piqa/train.json or train/piqa_train.json"):
        run(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written either
