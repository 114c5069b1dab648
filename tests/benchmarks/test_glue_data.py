"""GLUE loading: tsv layouts of every task from small fixtures, strict parsing errors, the hub column mapping, and
(when the shared data is present) counts and first rows of the real files."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import datasets
import pytest

from mtllora.benchmarks.glue_data import GLUE_TASKS, glue_task, load_glue_split

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse"]
MNLI_TRAIN_HEADER += ["sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
# Dev files carry all five annotator labels before gold_label: 16 columns instead of 12.
MNLI_DEV_HEADER = [*MNLI_TRAIN_HEADER[:-1], "label2", "label3", "label4", "label5", "gold_label"]
STSB_HEADER = [
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
]


def tsv(*rows: list[str] | str) -> str:
    """Returns tsv text: list rows are joined with tabs, string rows are taken as they are; one "\\n" per row."""
    return "".join(("\t".join(row) if isinstance(row, list) else row) + "\n" for row in rows)


def mnli_row(index: int, premise: str, hypothesis: str, gold: str, num_annotator_labels: int) -> list[str]:
    """Returns an MNLI row whose annotator labels ("neutral") differ from gold, to catch reading the wrong column."""
    parses = ["( a )", "( b )", "(ROOT (NP a))", "(ROOT (NP b))"]
    return [
        str(index),
        "7",
        f"{index}e",
        "fiction",
        *parses,
        premise,
        hypothesis,
        *["neutral"] * num_annotator_labels,
        gold,
    ]


# task -> ({file: content}, {split: [(text_a, text_b, label), ...]}), modelled on the real files' first rows.
FIXTURES = {
    "cola": (
        {
            # No header; the third column (the author's own mark) is often empty.
            "train.tsv": tsv(
                ["gj04", "1", "", "Our friends won't buy this analysis."], ["gj04", "0", "*", "Bill ate."]
            ),
            "dev.tsv": 'gj04\t1\t\tHe said "hi.\n',
        },
        {
            "train": [("Our friends won't buy this analysis.", None, 1), ("Bill ate.", None, 0)],
            "validation": [('He said "hi.', None, 1)],
        },
    ),
    "sst2": (
        {
            "train.tsv": tsv(["sentence", "label"], ["hide new secretions ", "0"], ['a " charming journey . ', "1"]),
            "dev.tsv": tsv(["sentence", "label"], ["unflinchingly bleak ", "0"]),
        },
        {
            "train": [("hide new secretions ", None, 0), ('a " charming journey . ', None, 1)],
            "validation": [("unflinchingly bleak ", None, 0)],
        },
    ),
    "mrpc": (
        {
            # The real MRPC files start with a UTF-8 byte-order mark.
            "train.tsv": "\ufeff"
            + tsv(
                ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                ["1", "702876", "702977", 'He called " the witness " .', 'Referring to " the witness " .'],
                ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's ."],
            ),
            "dev.tsv": "\ufeff"
            + tsv(["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], ["1", "1", "2", "Pie .", '" Pie .']),
        },
        {
            "train": [
                ('He called " the witness " .', 'Referring to " the witness " .', 1),
                ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's .", 0),
            ],
            "validation": [("Pie .", '" Pie .', 1)],
        },
    ),
    "qqp": (
        {
            "train.tsv": tsv(
                ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                ["328831", "455423", "455424", "Why a blessing?", "Is it a blessing?", "1"],
                ["5", "11", "12", "How to invest?", "What is Quora?", "0"],
            ),
            "dev.tsv": tsv(
                ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["1", "2", "3", "A?", "B?", "0"]
            ),
        },
        {
            "train": [("Why a blessing?", "Is it a blessing?", 1), ("How to invest?", "What is Quora?", 0)],
            "validation": [("A?", "B?", 0)],
        },
    ),
    "stsb": (
        {
            "train.tsv": tsv(
                STSB_HEADER,
                [
                    "0",
                    "main-captions",
                    "MSRvid",
                    "2012test",
                    "0001",
                    "none",
                    "none",
                    "A plane.",
                    "An air plane.",
                    "5.000",
                ],
                ["1", "main-news", "headlines", "2015", "0004", "none", "none", "A man.", "A flute.", "3.750"],
            ),
            "dev.tsv": tsv(STSB_HEADER, ["0", "main-forums", "answers", "2015", "0002", "none", "none", "X", "Y", "0"]),
        },
        {
            "train": [("A plane.", "An air plane.", 5.0), ("A man.", "A flute.", 3.75)],  # exact in float32
            "validation": [("X", "Y", 0.0)],
        },
    ),
    "mnli": (
        {
            "train.tsv": tsv(
                MNLI_TRAIN_HEADER,
                mnli_row(155219, "That's all right.", "That's fine.", "entailment", 1),
                mnli_row(3, "It rained.", "It was dry.", "contradiction", 1),
            ),
            "dev_matched.tsv": tsv(MNLI_DEV_HEADER, mnli_row(9, "I remember.", "I forgot.", "contradiction", 5)),
            "dev_mismatched.tsv": tsv(MNLI_DEV_HEADER, mnli_row(10, "Prices rose.", "Prices fell.", "entailment", 5)),
        },
        {
            "train": [("That's all right.", "That's fine.", 0), ("It rained.", "It was dry.", 2)],
            "validation_matched": [("I remember.", "I forgot.", 2)],
            "validation_mismatched": [("Prices rose.", "Prices fell.", 0)],
        },
    ),
    "qnli": (
        {
            "train.tsv": tsv(
                ["index", "question", "sentence", "label"],
                ["0", "What came into force?", "The constitution came into force.", "entailment"],
                ["1", "What is the first city?", "The Ill joins below Strasbourg.", "not_entailment"],
            ),
            "dev.tsv": tsv(["index", "question", "sentence", "label"], ["0", "Q?", "S.", "not_entailment"]),
        },
        {
            "train": [
                ("What came into force?", "The constitution came into force.", 0),
                ("What is the first city?", "The Ill joins below Strasbourg.", 1),
            ],
            "validation": [("Q?", "S.", 1)],
        },
    ),
    "rte": (
        {
            "train.tsv": tsv(
                ["index", "sentence1", "sentence2", "label"],
                ["0", "No weapons found in Iraq yet.", "Weapons found in Iraq.", "not_entailment"],
            ),
            "dev.tsv": tsv(
                ["index", "sentence1", "sentence2", "label"], ["0", "Reeve died.", "Reeve is dead.", "entailment"]
            ),
        },
        {
            "train": [("No weapons found in Iraq yet.", "Weapons found in Iraq.", 1)],
            "validation": [("Reeve died.", "Reeve is dead.", 0)],
        },
    ),
}

# The hub's column names for the texts of each task (the mapping under test is the library's own table).
HUB_TEXT_COLUMNS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
}


def write_glue(root: Path, task: str, files: dict[str, str] | None = None) -> Path:
    """Writes `files` (default: the task's fixture) to `root/<TASK directory>/` and returns that folder."""
    folder = root / glue_task(task).directory
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (FIXTURES[task][0] if files is None else files).items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


def rows(dataset: datasets.Dataset) -> list[tuple]:
    """Returns the (text_a, text_b, label) triples of `dataset` in order."""
    return list(zip(dataset["text_a"], dataset["text_b"], dataset["label"], strict=True))


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_tsv_layout_of_every_task(tmp_path: Path, task: str) -> None:
    write_glue(tmp_path, task)
    for split, expected in FIXTURES[task][1].items():
        dataset = load_glue_split(task, split, tmp_path)
        assert dataset.column_names == ["text_a", "text_b", "label", "idx"]
        label_dtype = "float32" if task == "stsb" else "int64"
        assert {name: feature.dtype for name, feature in dataset.features.items()} == {
            "text_a": "string",
            "text_b": "string",
            "label": label_dtype,
            "idx": "int64",
        }
        assert rows(dataset) == expected
        assert dataset["idx"] == list(range(len(expected)))


def test_task_table() -> None:
    assert GLUE_TASKS == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")
    mnli = glue_task("mnli")
    assert (mnli.directory, mnli.num_labels, mnli.label_names) == (
        "MNLI",
        3,
        ("entailment", "neutral", "contradiction"),
    )
    assert mnli.eval_splits == {"mnli_m": "validation_matched", "mnli_mm": "validation_mismatched"}
    stsb = glue_task("stsb")
    assert (stsb.num_labels, stsb.label_names, stsb.is_regression) == (1, (), True)
    assert glue_task("cola").label_names == ("unacceptable", "acceptable")
    assert glue_task("rte").eval_splits == {"rte": "validation"}
    assert not glue_task("rte").is_regression
    assert {glue_task(name).directory for name in GLUE_TASKS} == {
        "CoLA",
        "SST-2",
        "MRPC",
        "QQP",
        "STS-B",
        "MNLI",
        "QNLI",
        "RTE",
    }
    assert hash(mnli) == hash(glue_task("mnli"))


def test_unknown_task_and_split() -> None:
    with pytest.raises(ValueError, match=r"unknown GLUE task 'wnli'; expected one of cola, sst2, .*, rte"):
        glue_task("wnli")
    with pytest.raises(ValueError, match=r"unknown split 'validation' for GLUE task 'mnli'; expected one of train, "):
        load_glue_split("mnli", "validation", "/nonexistent")
    with pytest.raises(ValueError, match=r"unknown split 'test' .* expected one of train, validation$"):
        load_glue_split("rte", "test")


def test_wrong_field_count_names_file_and_line(tmp_path: Path) -> None:
    folder = write_glue(
        tmp_path,
        "rte",
        {
            "train.tsv": tsv(
                ["index", "sentence1", "sentence2", "label"],
                ["0", "a", "b", "entailment"],
                ["1", "a\tb", "c", "entailment"],
            )
        },
    )
    message = f"{folder / 'train.tsv'}:3: expected 4 tab-separated fields (index, sentence1, sentence2, label), got 5"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_glue_split("rte", "train", tmp_path)
    # CoLA has no header, so its first line is line 1 and its columns are the fixed ones.
    write_glue(tmp_path, "cola", {"train.tsv": "gj04\t1\tno sentence\n"})
    with pytest.raises(ValueError, match=r"train\.tsv:1: expected 4 tab-separated fields \(source, label, .*\), got 3"):
        load_glue_split("cola", "train", tmp_path)


def test_unknown_label_and_bad_score(tmp_path: Path) -> None:
    header = ["index", "question", "sentence", "label"]
    write_glue(tmp_path, "qnli", {"dev.tsv": tsv(header, ["0", "q", "s", "entailment"], ["1", "q", "s", "neutral"])})
    with pytest.raises(ValueError, match=r"dev\.tsv:3: unknown label 'neutral', expected one of 'entailment', 'not_"):
        load_glue_split("qnli", "validation", tmp_path)
    write_glue(tmp_path, "sst2", {"train.tsv": tsv(["sentence", "label"], ["good", "positive"])})
    with pytest.raises(ValueError, match=r"train\.tsv:2: unknown label 'positive', expected one of '0', '1'"):
        load_glue_split("sst2", "train", tmp_path)
    for score in ("high", "5.5", "nan"):
        write_glue(
            tmp_path, "stsb", {"train.tsv": tsv(STSB_HEADER, ["0", "g", "f", "y", "o", "s1", "s2", "a", "b", score])}
        )
        with pytest.raises(ValueError, match=rf"train\.tsv:2: score '{score}' is not a number in \[0, 5\]"):
            load_glue_split("stsb", "train", tmp_path)


def test_header_without_needed_column(tmp_path: Path) -> None:
    write_glue(tmp_path, "qqp", {"train.tsv": tsv(["id", "question1", "question2", "label"], ["1", "a", "b", "0"])})
    with pytest.raises(ValueError, match=r"train\.tsv:1: header has no column 'is_duplicate'; columns: id, question1"):
        load_glue_split("qqp", "train", tmp_path)


def test_crlf_line_ends_and_missing_final_newline(tmp_path: Path) -> None:
    write_glue(tmp_path, "sst2", {"train.tsv": 'sentence\tlabel\r\na "\t1\r\nb\t0'})
    assert rows(load_glue_split("sst2", "train", tmp_path)) == [('a "', None, 1), ("b", None, 0)]


def test_missing_file_and_folder_errors(tmp_path: Path) -> None:
    folder = write_glue(tmp_path, "mnli", {"train.tsv": FIXTURES["mnli"][0]["train.tsv"]})
    with pytest.raises(FileNotFoundError) as error:
        load_glue_split("mnli", "validation_mismatched", tmp_path)
    message = str(error.value)
    assert f"GLUE task 'mnli' split 'validation_mismatched': no file {folder / 'dev_mismatched.tsv'}." in message
    assert "GLUE download script layout <data_dir>/MNLI/{train.tsv, dev_matched.tsv, dev_mismatched.tsv}" in message
    assert "data_dir=None to load 'nyu-mll/glue' from the Hugging Face hub" in message
    with pytest.raises(FileNotFoundError, match=r"GLUE task 'rte': no folder .*RTE or .*glue/RTE\. Expected") as error:
        load_glue_split("rte", "train", tmp_path)
    assert str(tmp_path / "glue" / "RTE") in str(error.value)


def test_data_dir_may_be_the_parent_of_glue(tmp_path: Path) -> None:
    write_glue(tmp_path / "glue", "rte")
    assert rows(load_glue_split("rte", "validation", str(tmp_path))) == FIXTURES["rte"][1]["validation"]
    assert rows(load_glue_split("rte", "validation", tmp_path / "glue")) == FIXTURES["rte"][1]["validation"]
    write_glue(tmp_path, "rte")  # now both tmp_path/RTE and tmp_path/glue/RTE exist: no guessing
    with pytest.raises(ValueError, match=r"both .*RTE and .*glue/RTE exist under data_dir="):
        load_glue_split("rte", "validation", tmp_path)


def test_task_dir_selects_a_k_shot_subset(tmp_path: Path) -> None:
    write_glue(tmp_path, "mnli")
    subset = tmp_path / "MNLI" / "k-shot" / "16-42"
    subset.mkdir(parents=True)
    # The k-shot dev file is sampled from the training set, so it has the 12 training columns.
    (subset / "dev_matched.tsv").write_text(tsv(MNLI_TRAIN_HEADER, mnli_row(1, "P.", "H.", "neutral", 1)))
    dataset = load_glue_split("mnli", "validation_matched", tmp_path, task_dir="MNLI/k-shot/16-42")
    assert rows(dataset) == [("P.", "H.", 1)]
    assert len(load_glue_split("mnli", "validation_matched", tmp_path)) == 1  # the full copy is still the default
    with pytest.raises(ValueError, match="task_dir='MNLI/k-shot/16-42' is relative to data_dir"):
        load_glue_split("mnli", "train", task_dir="MNLI/k-shot/16-42")


def fake_hub(task: str) -> datasets.DatasetDict:
    """Returns a two-row DatasetDict shaped like `nyu-mll/glue`'s config `task` (ClassLabel labels, int32 idx)."""
    spec = glue_task(task)
    label = datasets.Value("float32") if spec.is_regression else datasets.ClassLabel(names=list(spec.label_names))
    columns = HUB_TEXT_COLUMNS[task]
    features = datasets.Features(
        {**{name: datasets.Value("string") for name in columns}, "label": label, "idx": datasets.Value("int32")}
    )
    splits = {}
    for split in ("train", *spec.eval_splits.values()):
        data = {name: [f"{split} {name} {i}" for i in range(2)] for name in columns}
        splits[split] = datasets.Dataset.from_dict({**data, "label": [1, 0], "idx": [0, 1]}, features=features)
    return datasets.DatasetDict(splits)


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_hub_columns_are_mapped(monkeypatch: pytest.MonkeyPatch, task: str) -> None:
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or fake_hub(task))
    split = glue_task(task).eval_splits[next(iter(glue_task(task).eval_splits))]
    dataset = load_glue_split(task, split)
    assert calls == [("nyu-mll/glue", task)]
    assert dataset.column_names == ["text_a", "text_b", "label", "idx"]
    assert dataset.features["label"].dtype == ("float32" if task == "stsb" else "int64")
    assert dataset.features["idx"].dtype == "int64"
    first, second = HUB_TEXT_COLUMNS[task][0], HUB_TEXT_COLUMNS[task][-1]
    expected_b = [f"{split} {second} {i}" for i in range(2)] if first != second else [None, None]
    assert rows(dataset) == list(zip([f"{split} {first} {i}" for i in range(2)], expected_b, [1, 0], strict=True))
    assert dataset["idx"] == [0, 1]


def test_hub_failure_says_how_to_use_a_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    offline = ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    def unreachable(*args: str) -> None:
        raise offline

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(OSError) as error:
        load_glue_split("qnli", "train")
    message = str(error.value)
    assert "could not load GLUE task 'qnli' from the Hugging Face hub ('nyu-mll/glue', config 'qnli')" in message
    assert "OfflineModeIsEnabled" in message
    assert "data_dir (or set MTLLORA_DATA_DIR)" in message and "glue_data/<TASK>/{train,dev}.tsv" in message
    assert error.value.__cause__ is offline


def shared_glue_dir() -> Path:
    """Returns the shared data root: MTLLORA_DATA_DIR, else ../shared/data next to the repository (as the Makefile)."""
    return Path(os.environ.get("MTLLORA_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


@pytest.mark.skipif(
    not any((shared_glue_dir() / sub / "CoLA").is_dir() for sub in ("glue", ".")), reason="real GLUE data not present"
)
def test_real_glue_files() -> None:
    root = shared_glue_dir()
    counts = {
        ("cola", "train"): 8551,
        ("cola", "validation"): 1043,
        ("sst2", "train"): 67349,
        ("sst2", "validation"): 872,
        ("mrpc", "train"): 3667,  # one pair short of the official 3668 (see the data README)
        ("mrpc", "validation"): 408,
        ("stsb", "train"): 5749,
        ("stsb", "validation"): 1500,
        ("rte", "train"): 2490,
        ("rte", "validation"): 277,
        ("qnli", "validation"): 5463,
    }
    loaded = {key: load_glue_split(*key, data_dir=root) for key in counts}
    assert {key: len(dataset) for key, dataset in loaded.items()} == counts
    assert loaded["cola", "train"][0] == {
        "text_a": "Our friends won't buy this analysis, let alone the next one we propose.",
        "text_b": None,
        "label": 1,
        "idx": 0,
    }
    assert loaded["sst2", "train"][0]["text_a"] == "hide new secretions from the parental units "
    assert (
        loaded["mrpc", "validation"][0]["text_b"]
        == '" The foodservice pie business does not fit our long-term growth strategy .'
    )
    assert loaded["stsb", "validation"][1]["label"] == pytest.approx(4.75)
    assert loaded["qnli", "validation"][1]["label"] == 1  # not_entailment
    assert Counter(loaded["cola", "train"]["label"][:]) == {1: 6023, 0: 2528}
    assert Counter(loaded["sst2", "train"]["label"][:]) == {1: 37569, 0: 29780}
    assert Counter(loaded["rte", "train"]["label"][:]) == {0: 1249, 1: 1241}
    assert Counter(loaded["mrpc", "validation"]["label"][:]) == {1: 279, 0: 129}
    scores = loaded["stsb", "train"]["label"][:]
    assert (min(scores), max(scores)) == (0.0, 5.0)
    for split in ("train", "validation_matched"):
        mnli = load_glue_split("mnli", split, root, task_dir="MNLI/k-shot/16-42")
        assert Counter(mnli["label"][:]) == {0: 16, 1: 16, 2: 16}
    assert load_glue_split("mnli", "train", root, task_dir="MNLI/k-shot/16-42")[0]["text_b"] == "That's fine."
    qqp = load_glue_split("qqp", "train", root, task_dir="QQP/k-shot/16-42")
    assert Counter(qqp["label"][:]) == {0: 16, 1: 16}
    assert qqp[0]["text_a"] == "Why do some people think that having a baby is a blessing?"


def test_an_incomplete_local_copy_fails_before_training_naming_every_missing_file(tmp_path):
    from mtllora.benchmarks.glue import GlueBenchmark

    from ..conftest import write_tiny_glue

    write_tiny_glue(tmp_path)  # CoLA, SST-2, MRPC, STS-B, RTE
    (tmp_path / "RTE" / "dev.tsv").unlink()
    GlueBenchmark(tasks=["cola", "sst2"], data_dir=tmp_path).check_inputs()  # complete for these tasks
    with pytest.raises(FileNotFoundError) as err:
        GlueBenchmark(tasks=["cola", "qqp", "mnli", "rte"], data_dir=tmp_path).check_inputs()
    message = str(err.value)
    assert "lacks 3 file(s)" in message
    for missing in (f"{tmp_path}/QQP/", f"{tmp_path}/MNLI/", f"{tmp_path}/RTE/dev.tsv"):
        assert missing in message
    assert "paths.data_dir=null" in message


def test_a_split_without_rows_and_bytes_that_are_not_utf8_name_the_file(tmp_path):
    # A split without rows would train without its task (or score it on nothing) and still report numbers.
    folder = write_glue(tmp_path, "cola", {"train.tsv": ""})
    message = f"{folder / 'train.tsv'}: no data rows; expected at least one row of source, label, original_judgment, "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}sentence$"):
        load_glue_split("cola", "train", tmp_path)
    write_glue(tmp_path, "rte", {"dev.tsv": tsv(["index", "sentence1", "sentence2", "label"])})
    with pytest.raises(ValueError, match=r"RTE/dev\.tsv: no data rows besides its header; expected at least one row"):
        load_glue_split("rte", "validation", tmp_path)
    # Offsets count from the file's first byte, MRPC's byte-order mark included: 3 + the header + "1\t1\t2\tcaf".
    header = b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    folder = write_glue(tmp_path, "mrpc", {})
    (folder / "train.tsv").write_bytes(b"\xef\xbb\xbf" + header + b"1\t1\t2\tcaf\xe9\tb\n")
    message = rf"^{re.escape(str(folder / 'train.tsv'))}: line 2 \(byte offset {3 + len(header) + 9}\): b'\\xe9' is"
    with pytest.raises(ValueError, match=message + r" not valid UTF-8; expected a UTF-8 text file"):
        load_glue_split("mrpc", "train", tmp_path)


def test_check_inputs_reads_every_split_once_and_lists_every_bad_file(tmp_path, tiny_encoder_dir, monkeypatch):
    from transformers import AutoTokenizer

    from mtllora.benchmarks import glue

    from ..conftest import write_tiny_glue

    write_tiny_glue(tmp_path)  # CoLA, SST-2, MRPC, STS-B, RTE
    tasks = ["cola", "sst2", "mrpc", "stsb", "rte"]
    reads = Counter()

    def counted(task: str, split: str, *args):
        reads[task, split] += 1
        return load_glue_split(task, split, *args)

    monkeypatch.setattr(glue, "load_glue_split", counted)
    bench = glue.GlueBenchmark(tasks=tasks, data_dir=tmp_path)
    bench.check_inputs()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    assert len(bench.train_dataset(tokenizer)) == 5 * 48
    assert [len(d) for _, d in bench.eval_datasets(tokenizer).values()] == [24] * 5
    assert reads == {(task, split): 1 for task in tasks for split in ("train", "validation")}

    (tmp_path / "CoLA" / "train.tsv").write_text("")
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\n\xff\t1\n")
    with pytest.raises(ValueError) as err:
        glue.GlueBenchmark(tasks=tasks, data_dir=tmp_path).check_inputs()
    assert str(err.value).splitlines() == [
        f"the local GLUE copy data_dir={tmp_path} has 3 unusable file(s) of tasks {tasks}:",
        f"  - {tmp_path}/CoLA/train.tsv: no data rows; expected at least one row of source, label, original_judgment, "
        "sentence",
        f"  - {tmp_path}/SST-2/dev.tsv: line 2 (byte offset 15): b'\\xff' is not valid UTF-8; expected a UTF-8 text "
        "file (re-save it as UTF-8)",
        f"  - {tmp_path}/RTE/train.tsv: no data rows besides its header; expected at least one row of index, "
        "sentence1, sentence2, label",
    ]
