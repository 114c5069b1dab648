"""Commonsense data layer: task ids, answer parsing in both scoring modes, strict record loading, file layout, and
task-id recovery for a combined file; small fixtures shaped like the LLM-Adapters files, plus one test on the real
files when the shared data is present."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from mtllora.benchmarks import commonsense
from mtllora.benchmarks.commonsense import (
    TASK_IDS,
    TASKS,
    answer_format,
    assign_task_ids,
    extract_answer,
    is_correct,
    load_records,
    load_test,
    load_train,
    train_files,
)
from mtllora.testing import commonsense_record

# The LLM-Adapters record writer, shared with the rehearsal (`make rehearse`).
record = commonsense_record


def fixture_records(split: str) -> dict[str, list[dict[str, str]]]:
    """Returns two or three records per task; ARC-Easy has a three-answer question, ARC-Challenge a five-answer one
    (both kinds exist in the real files)."""
    records = {task: [record(task, f"{split} {task} q{i}", answer=i % 2 + 1) for i in range(2)] for task in TASKS}
    records["ARC-Easy"].append(record("ARC-Easy", f"{split} ARC-Easy three", answer=3, num_options=3))
    records["ARC-Challenge"].append(record("ARC-Challenge", f"{split} ARC-Challenge five", answer=5, num_options=5))
    return records


def with_task_ids(per_task: dict[str, list[dict[str, str]]]) -> dict[str, list[dict[str, object]]]:
    """Returns the records of each task with their `task_id` set, as `load_train` returns them."""
    return {task: [{**r, "task_id": TASK_IDS[task]} for r in records] for task, records in per_task.items()}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4))
    return path


def write_commonsense(root: Path) -> Path:
    """Writes the shared-data layout under root/commonsense (HellaSwag: the reconstructed test file and the partial
    train file, as in the shared data); returns root."""
    folder = root / "commonsense"
    for task, records in fixture_records("test").items():
        name = "test_reconstructed.json" if task == "hellaswag" else "test.json"
        write_json(folder / task / name, records)
    for task, records in fixture_records("train").items():
        name = "hellaswag_train_partial.json" if task == "hellaswag" else f"{task}_train.json"
        write_json(folder / "train" / name, records)
    return root


def test_tasks_have_the_official_ids():
    assert TASK_IDS == {
        "boolq": 0,
        "piqa": 1,
        "social_i_qa": 2,
        "hellaswag": 3,
        "winogrande": 4,
        "ARC-Challenge": 5,
        "ARC-Easy": 6,
        "openbookqa": 7,
    }
    assert list(TASK_IDS) == list(TASKS)


# (dataset, response, label, official prediction, official correct, strict prediction, strict correct)
RESPONSES = [
    ("boolq", "the correct answer is true", "true", "true", True, "true", True),
    ("boolq", "the correct answer is false, not true", "false", "false", True, "false", True),
    ("boolq", "True.", "true", "", False, "", False),  # the patterns are case-sensitive
    ("boolq", "", "false", "", False, "", False),
    ("piqa", "The correct answer is solution1.", "solution1", "solution1", True, "solution1", True),
    ("piqa", "Solution2: Pour it into a jar", "solution2", "", False, "", False),
    ("piqa", "2", "solution2", "", False, "", False),  # no digit fallback outside the answerN tasks
    ("social_i_qa", "answer3", "answer3", "answer3", True, "answer3", True),
    ("social_i_qa", "3", "answer3", "3", True, "", False),  # the fallback counts through the substring rule
    ("social_i_qa", "the correct answer is answer5", "answer2", "answer5", False, "answer5", False),
    ("social_i_qa", "5", "answer1", "", False, "", False),  # the fallback has no 5
    ("social_i_qa", "", "answer1", "", False, "", False),
    ("hellaswag", "ending2 because the man is on a roof", "ending2", "ending2", True, "ending2", True),
    ("hellaswag", "Ending4", "ending4", "", False, "", False),
    ("hellaswag", "4", "ending4", "", False, "", False),
    ("winogrande", "option1", "option1", "option1", True, "option1", True),
    ("winogrande", "the correct answer is option2", "option1", "option2", False, "option2", False),
    ("winogrande", "Sarah", "option1", "", False, "", False),
    ("ARC-Challenge", "Answer2: Planetary years will become longer.", "answer2", "2", True, "", False),
    ("ARC-Challenge", "the correct answer is answer3", "answer3", "answer3", True, "answer3", True),
    ("ARC-Easy", "12 apples", "answer1", "1", True, "", False),  # the fallback digit need not stand alone
    ("ARC-Easy", "the correct answer is answer4", "answer1", "answer4", False, "answer4", False),
    ("openbookqa", "answer1 or answer2", "answer2", "answer1", False, "answer1", False),  # the first match counts
    ("openbookqa", "the answer is 2, i.e. answer4", "answer4", "answer4", True, "answer4", True),
    ("openbookqa", "", "answer4", "", False, "", False),
]


@pytest.mark.parametrize("dataset,response,label,pred,correct,strict_pred,strict_correct", RESPONSES)
def test_extract_answer_and_score_in_both_modes(dataset, response, label, pred, correct, strict_pred, strict_correct):
    assert extract_answer(dataset, response) == pred  # "official" is the default
    assert is_correct(pred, label) is correct
    assert extract_answer(dataset, response, mode="strict") == strict_pred
    assert is_correct(strict_pred, label, mode="strict") is strict_correct


def test_is_correct_rules():
    assert is_correct("answer2", "answer2") and is_correct("2", "answer2")
    assert not is_correct("", "answer2") and not is_correct("answer1", "answer2") and not is_correct("3", "answer2")
    assert is_correct("answer2", "answer2", mode="strict") and not is_correct("2", "answer2", mode="strict")


def test_unknown_dataset_or_mode_is_an_error():
    with pytest.raises(
        ValueError, match="unknown commonsense dataset 'siqa'; expected one of boolq, piqa, social_i_qa,"
    ):
        extract_answer("siqa", "answer1")
    with pytest.raises(ValueError, match=r"unknown scoring mode 'exact'; expected one of \('official', 'strict'\)"):
        extract_answer("boolq", "true", mode="exact")
    with pytest.raises(ValueError, match="unknown scoring mode 'exact'"):
        is_correct("true", "true", mode="exact")


def test_load_records_reads_json_lists_and_json_lines(tmp_path):
    records = [record("boolq", "is it?"), {**record("piqa", "how?"), "task": "piqa", "task_id": 1, "extra": [1]}]
    assert load_records(write_json(tmp_path / "list.json", records)) == records
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n")
    assert load_records(lines) == records
    no_answer = {"instruction": "q", "input": "context", "output": "o"}  # answer is optional
    assert load_records(write_json(tmp_path / "no_answer.json", [no_answer])) == [no_answer]


GOOD = {"instruction": "q", "input": "", "output": "the correct answer is true", "answer": "true"}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"instruction": "q", "input": ""}, "missing 'output' (has 'instruction', 'input')"),
        ({**GOOD, "instruction": 3}, "'instruction' must be a string, got int 3"),
        ({**GOOD, "input": None}, "'input' must be a string, got NoneType None"),
        ({**GOOD, "answer": ["true"]}, "'answer' must be a string, got list ['true']"),
        ({**GOOD, "task": "siqa"}, f"unknown task 'siqa'; expected one of {', '.join(TASKS)}"),
        ({**GOOD, "task_id": 8}, "task_id must be an integer 0-7, got 8"),
        ({**GOOD, "task_id": True}, "task_id must be an integer 0-7, got True"),
        ({**GOOD, "task_id": "0"}, "task_id must be an integer 0-7, got '0'"),
        ({**GOOD, "task": "piqa", "task_id": 0}, "task 'piqa' and task_id 0 (boolq) disagree"),
        (["q", "", "o"], "expected a JSON object, got list"),
    ],
)
def test_a_malformed_record_names_file_index_and_problem(tmp_path, bad, problem):
    path = write_json(tmp_path / "train.json", [GOOD, bad])
    with pytest.raises(ValueError) as error:
        load_records(path)
    assert str(error.value) == f"{path}: record 1: {problem}"
    lines = tmp_path / "train.jsonl"
    lines.write_text(f"{json.dumps(GOOD)}\n\n{json.dumps(bad)}\n")
    if isinstance(bad, dict):  # a JSON Lines file is told by its first character, so a list line is invalid there
        with pytest.raises(ValueError) as error:
            load_records(lines)
        assert str(error.value) == f"{lines}: record 1 (line 3): {problem}"


def test_invalid_json_names_file_line_and_column(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n    {"instruction": "q",\n     "input": "" "output": "o"}\n]')
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON at line 3 column 18: Expecting ','"):
        load_records(broken)
    lines = tmp_path / "broken.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n" + '{"instruction": "q", "input": ""\n')
    with pytest.raises(ValueError, match=r"broken.jsonl: invalid JSON at line 2 column 33: Expecting ','"):
        load_records(lines)
    for name, text, got in (("empty.json", "  \n", "an empty file"), ("text.json", "instruction: q", "'i'")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name}: expected a JSON list of records or JSON Lines .*, got {got}"):
            load_records(tmp_path / name)


def test_test_file_accepts_the_data_root_or_the_commonsense_folder(tmp_path):
    root = write_commonsense(tmp_path)
    for data_dir in (root, root / "commonsense", str(root)):
        assert commonsense.test_file(data_dir, "piqa") == root / "commonsense" / "piqa" / "test.json"
    assert load_test(root, "piqa") == fixture_records("test")["piqa"]


def test_hellaswag_uses_test_json_when_present_else_the_reconstructed_file(tmp_path, caplog):
    root = write_commonsense(tmp_path)
    folder = root / "commonsense" / "hellaswag"
    with caplog.at_level(logging.INFO, logger="mtllora.benchmarks.commonsense"):
        assert commonsense.test_file(root, "hellaswag") == folder / "test_reconstructed.json"
    assert "reconstructed from the official validation set" in caplog.text
    write_json(folder / "test.json", [])
    assert commonsense.test_file(root, "hellaswag") == folder / "test.json"


def test_a_missing_test_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        commonsense.test_file(tmp_path, "ARC-Easy")
    message = str(error.value)
    assert f"commonsense test set 'ARC-Easy': no file {tmp_path / 'ARC-Easy' / 'test.json'}." in message
    assert "AGI-Edgerunners/LLM-Adapters: dataset/ARC-Easy/test.json, saved as ARC-Easy/test.json" in message
    with pytest.raises(FileNotFoundError, match=r"hellaswag/test.json or .*hellaswag/test_reconstructed.json"):
        commonsense.test_file(tmp_path, "hellaswag")
    with pytest.raises(ValueError, match="unknown commonsense dataset 'arc_easy'"):
        commonsense.test_file(tmp_path, "arc_easy")
    write_json(tmp_path / "boolq" / "test.json", [{k: v for k, v in GOOD.items() if k != "answer"}])
    with pytest.raises(ValueError, match=r"boolq/test.json: record 0: missing 'answer'"):
        load_test(tmp_path, "boolq")


def test_train_files_layout_partial_hellaswag_and_missing_files(tmp_path):
    root = write_commonsense(tmp_path)
    train = root / "commonsense" / "train"
    files = train_files(root)
    assert list(files) == list(TASKS)
    assert files["piqa"] == train / "piqa_train.json"
    assert files["hellaswag"] == train / "hellaswag_train_partial.json"
    write_json(train / "hellaswag_train.json", [])
    assert train_files(root / "commonsense")["hellaswag"] == train / "hellaswag_train.json"
    assert load_train(root) == with_task_ids(fixture_records("train")) | {"hellaswag": []}
    write_json(train / "piqa_train.json", [{**record("piqa", "q"), "task": "piqa"}, {**GOOD, "task_id": 0}])
    with pytest.raises(ValueError, match=r"piqa_train.json: record 1: task 'boolq' in the train file of 'piqa'"):
        load_train(root)
    for task in ("piqa", "openbookqa"):
        (train / f"{task}_train.json").unlink()
    with pytest.raises(FileNotFoundError) as error:
        train_files(root)
    message = str(error.value)
    assert (
        f"commonsense train files missing in {root / 'commonsense'}: piqa/train.json or train/piqa_train.json, "
        "openbookqa/train.json or train/openbookqa_train.json." in message
    )
    assert "https://github.com/AGI-Edgerunners/LLM-Adapters/tree/main/dataset" in message
    assert "make reproduce-commonsense ARGS='benchmark.train_file=" in message
    assert set(train_files(root, missing_ok=True)) == set(TASKS) - {"piqa", "openbookqa"}


def write_llm_adapters(root: Path) -> Path:
    """Writes LLM-Adapters' own layout, `dataset/<task>/{train,test}.json`, under root; returns root."""
    for split in ("train", "test"):
        for task, records in fixture_records(split).items():
            write_json(root / "dataset" / task / f"{split}.json", records)
    return root


def test_llm_adapters_own_layout_is_found(tmp_path):
    root = write_llm_adapters(tmp_path)
    files = train_files(root)
    assert files == {task: root / "dataset" / task / "train.json" for task in TASKS}
    assert commonsense.test_file(root, "hellaswag") == root / "dataset" / "hellaswag" / "test.json"
    assert load_train(root / "dataset") == with_task_ids(fixture_records("train"))
    write_json(root / "dataset" / "train" / "boolq_train.json", [])  # both layouts: which one trains is not guessed
    with pytest.raises(ValueError, match=r"train set 'boolq': both .*dataset/boolq/train.json and .*boolq_train"):
        train_files(root)


def test_answer_format():
    assert answer_format(record("boolq", "q")["instruction"]) == ("true/false", 2)
    assert answer_format(record("winogrande", "q")["instruction"]) == ("option", 2)
    assert answer_format(record("social_i_qa", "q")["instruction"]) == ("answer", 3)
    assert answer_format(record("ARC-Challenge", "q", num_options=5)["instruction"]) == ("answer", 5)
    assert answer_format("Which?\n\nAnswer format: answer1/answer3") is None  # not numbered 1..n
    assert answer_format("Which?\n\nAnswer format: choice1/choice2") is None
    assert answer_format("Which?") is None


def combined(split: str = "train") -> tuple[list[dict[str, str]], list[str]]:
    """Returns the fixture records of every task in one list without their task, and the true task of each."""
    per_task = fixture_records(split)
    return [r for task in TASKS for r in per_task[task]], [task for task in TASKS for _ in per_task[task]]


def test_assign_by_format_leaves_arc_and_openbookqa_ambiguous():
    records, truth = combined()
    ids, report = assign_task_ids(records)
    assigned = {task: TASKS[i] if i is not None else None for task, i in zip(truth, ids, strict=True)}
    by_format = ["boolq", "piqa", "social_i_qa", "hellaswag", "winogrande"]
    assert all(assigned[task] == task for task in by_format)
    # The three-answer ARC-Easy question is taken as social_i_qa: the known, reported limit of the format rule.
    three_answer = truth.index("ARC-Easy") + 2
    assert TASKS[ids[three_answer]] == "social_i_qa"
    assert [truth[i] for i, task_id in enumerate(ids) if task_id is None] == [
        *["ARC-Challenge"] * 3,
        *["ARC-Easy"] * 2,
        *["openbookqa"] * 2,
    ]
    assert not report.complete
    assert report.by_method == {"format": 11} and report.three_answer_rule == 3
    assert {k: len(v) for k, v in report.ambiguous.items()} == {("ARC-Challenge", "ARC-Easy", "openbookqa"): 7}
    summary = report.summary()
    assert summary.startswith("Task ids for 18 records: 11 by format. 3 of those by format are three-answer")
    assert "7 records are ambiguous between ARC-Challenge/ARC-Easy/openbookqa" in summary
    assert "Fix: train from commonsense_170k_taskid.json (every record carries task_id)" in summary


def test_assign_with_reference_places_every_record_and_keeps_given_ids():
    records, truth = combined()
    ids, report = assign_task_ids(records, fixture_records("train"))
    assert [TASKS[i] for i in ids] == truth and report.complete and report.by_method == {"reference": 18}
    assert report.summary() == "Task ids for 18 records: 18 by reference."
    # Records outside the reference fall back to the format; a record's own task wins and is checked.
    unseen, _ = combined("test")
    mixed = [unseen[0], {**unseen[-1], "task_id": 7}, {**unseen[-1], "task": "ARC-Easy"}, {**unseen[0], "task_id": 1}]
    ids, report = assign_task_ids(mixed, fixture_records("train"))
    assert ids == [0, 7, 6, 1]
    assert report.by_method == {"format": 1, "record": 3}
    assert report.conflicts == ["record 3: task 'piqa', answer format of boolq"] and not report.complete


def test_load_train_from_a_combined_file(tmp_path):
    records, truth = combined()
    expected = with_task_ids(fixture_records("train"))
    with_ids = [{**r, "task_id": TASK_IDS[t]} for r, t in zip(records, truth, strict=True)]
    assert load_train(train_file=write_json(tmp_path / "commonsense_170k_taskid.json", with_ids)) == expected
    plain = write_json(tmp_path / "commonsense_170k.json", records)
    with pytest.raises(ValueError) as error:
        load_train(train_file=plain)
    assert str(error.value).startswith(f"{plain}: Task ids for 18 records: 11 by format.")
    assert "7 records are ambiguous" in str(error.value) and "Fix:" in str(error.value)
    root = write_commonsense(tmp_path / "data")  # the per-task files under data_dir are the reference
    assert load_train(root, train_file=plain) == expected
    with pytest.raises(ValueError, match="load_train needs data_dir"):
        load_train()


def shared_data_root() -> Path:
    """Returns the shared data root: MTLLORA_DATA_DIR, else ../shared/data next to the repository (as the Makefile)."""
    return Path(os.environ.get("MTLLORA_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


# Rows per file in the shared data (its README) and in the fixture.
REAL_COUNTS = {
    "test": {"boolq": 3270, "piqa": 1838, "social_i_qa": 1954, "hellaswag": 10042, "winogrande": 1267}
    | {"ARC-Challenge": 1172, "ARC-Easy": 2376, "openbookqa": 500},
    "train": {"boolq": 9427, "piqa": 16113, "social_i_qa": 33410, "hellaswag": 3368, "winogrande": 63238}
    | {"ARC-Challenge": 1119, "ARC-Easy": 2251, "openbookqa": 4957},
}
FIXTURE_COUNTS = {split: {t: len(r) for t, r in fixture_records(split).items()} for split in ("test", "train")}


def test_every_gold_output_scores_as_its_answer_and_the_format_rule_holds(tmp_path):
    """On the real files when present (else on the fixture): each test record's own output parses to its answer in
    both modes, the labels use the documented vocabularies, and format-only assignment of the concatenated train
    files places every non-ARC/OBQA record and leaves ARC/OBQA unplaced except the three-answer ARC questions."""
    real = all((shared_data_root() / "commonsense" / task).is_dir() for task in TASKS)
    root = shared_data_root() if real else write_commonsense(tmp_path)
    counts = REAL_COUNTS if real else FIXTURE_COUNTS
    labels = {}
    for task in TASKS:
        records = load_test(root, task)
        assert len(records) == counts["test"][task], task
        for mode in ("official", "strict"):
            assert all(extract_answer(task, r["output"], mode) == r["answer"] for r in records), (task, mode)
        labels[task] = {r["answer"].rstrip("12345") for r in records}
    assert labels == {
        "boolq": {"true", "false"},
        "piqa": {"solution"},
        "social_i_qa": {"answer"},
        "hellaswag": {"ending"},
        "winogrande": {"option"},
        "ARC-Challenge": {"answer"},
        "ARC-Easy": {"answer"},
        "openbookqa": {"answer"},
    }
    train = load_train(root)
    assert {task: len(records) for task, records in train.items()} == counts["train"]
    records = [{k: v for k, v in r.items() if k != "task_id"} for task in TASKS for r in train[task]]
    truth = [task for task in TASKS for _ in train[task]]
    ids, _ = assign_task_ids(records)
    outcome = Counter((task, "unplaced" if i is None else TASKS[i]) for task, i in zip(truth, ids, strict=True))
    three_answer = {"ARC-Challenge": 1, "ARC-Easy": 6} if real else {"ARC-Challenge": 0, "ARC-Easy": 1}
    expected = Counter({(t, t): counts["train"][t] for t in ("boolq", "piqa", "social_i_qa", "hellaswag")})
    expected[("winogrande", "winogrande")] = counts["train"]["winogrande"]
    for task in ("ARC-Challenge", "ARC-Easy"):
        expected[(task, "social_i_qa")] = three_answer[task]
        expected[(task, "unplaced")] = counts["train"][task] - three_answer[task]
    expected[("openbookqa", "unplaced")] = counts["train"]["openbookqa"]
    assert outcome == +expected
