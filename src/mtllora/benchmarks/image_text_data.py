"""Image-text data (VQAv2, GQA, NLVR2, COCO Caption) in the VL-T5 formats: records, prompts, targets, features.

The MTL-LoRA paper trains VL-BART on the four tasks together, following VL-Adapter and DoRA, whose data code is
VL-T5's (github j-min/VL-T5, ylsung/VL_adapter; the MTL-LoRA copy is pUmpKin-Co/MTL-LoRA
`image_text_understanding/VL-T5/src/*_clip_data.py`). Task ids are the positions in TASKS: vqa 0, gqa 1, nlvr 2,
caption 3.

Files, under a `datasets/` folder laid out as VL-T5's (`load_task`):

- `vqa/karpathy_{train,val,test}.json`: `[{img_id, sent, question_id, label: {answer: score}, ...}]` with
  `vqa/trainval_ans2label.json`; the 10 raw annotator answers (for the official VQA accuracy) come from the
  record's own `answers` or from `vqa/v2_mscoco_{train,val}2014_annotations.json` (`{"annotations": [{question_id,
  answers: [{answer, ...}]}]}`).
- `GQA/{train,valid,testdev}.json`: `[{img_id, sent, question_id, label: {answer: score}}]` with
  `GQA/trainval_ans2label.json`.
- `nlvr/{train,valid,test}.json`: `[{uid, identifier, sent, label: 0|1, img0?, img1?}]`; the two image ids are
  `img0`/`img1` when present, else derived from the identifier as NLVR2 names its images ("train-10171-0-0" ->
  "train-10171-0-img0", "train-10171-0-img1"), which is what VL-T5's preprocessed `img0`/`img1` hold.
- `COCO/dataset_coco.json` (Karpathy split): `{"images": [{filename, split, sentences: [{raw}], ...}]}`; the image
  id is the file name without extension ("COCO_val2014_000000391895"), `restval` counts as train.

Training targets follow VL-T5's multitask code: a VQA or GQA example samples one answer of its `label` with
probability proportional to the scores (`np.random.multinomial`), and an empty target when the scores sum to 0
(VQA questions whose answers are all outside the vocabulary); NLVR2 targets "true"/"false" (label 1/0); a captioning
training split has one example per reference caption (each image's references stay attached for evaluation),
an evaluation split one example per image. Inputs are `TASK_PROMPTS[task] + text` with `--use_tasks_prompts`.

Image features (`ImageFeatures`) are HDF5 groups `<img_id>/features` [boxes, dim] with optional `<img_id>/boxes`
(x1, y1, x2, y2) and `<img_id>/img_w`, `<img_id>/img_h`; see the class for both official layouts.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .base import read_text

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("vqa", "gqa", "nlvr", "caption")
TASK_IDS: dict[str, int] = {task: i for i, task in enumerate(TASKS)}

# `--use_tasks_prompts` in VL-Adapter's and MTL-LoRA's multitask.py, byte for byte: GQA's prompt really is "gpa: "
# there (a typo the published models were trained with), and captioning's input is the prompt alone.
TASK_PROMPTS: dict[str, str] = {"vqa": "vqa: ", "gqa": "gpa: ", "nlvr": "nlvr: ", "caption": "caption: "}

# The splits the official multitask run trains, validates and tests on (multitask.py); GQA trains on train+valid
# and is evaluated on testdev, which has no separate test split here.
OFFICIAL_SPLITS: dict[str, dict[str, str]] = {
    "vqa": {"train": "karpathy_train", "validation": "karpathy_val", "test": "karpathy_test"},
    "gqa": {"train": "train,valid", "validation": "testdev", "test": "testdev"},
    "nlvr": {"train": "train", "validation": "valid", "test": "test"},
    "caption": {"train": "karpathy_train", "validation": "karpathy_val", "test": "karpathy_test"},
}

_KARPATHY_SPLITS = {"karpathy_train": "train", "karpathy_val": "val", "karpathy_test": "test"}
_COCO_SPLIT_RENAME = {"train": "train", "restval": "train", "val": "val", "test": "test"}
_NLVR_ANSWERS = {0: "false", 1: "true"}
_SHOW = 5  # how many offending values an error or warning lists


class MalformedRecordError(ValueError):
    """A data record is malformed; the message names the file, the record's index and what is wrong."""


class MissingImageFeaturesError(ValueError):
    """Image ids of a dataset have no features in the feature files; the message lists the first few and the count."""


@dataclass(frozen=True)
class ImageTextRecord:
    """One example of one task.

    `targets` maps each training target to its sampling weight (`sample_target`): the `label` scores for VQA and
    GQA, {"true"|"false": 1} for NLVR2, the example's reference caption (training split) or all of them (evaluation
    split) for captioning. Evaluation uses `label` (VQA score-dict accuracy), `answers` (the 10 annotator answers of
    the official VQA accuracy, None when unknown), `answer` (exact match: GQA's best label answer, NLVR2's
    "true"/"false"; VQA's best-scored answer for information) and `references` (captions).
    """

    task: str
    example_id: str | int  # VQA/GQA question_id, NLVR2 uid, caption image id ("<img_id>#<k>" per training reference)
    image_ids: tuple[str, ...]  # one image; NLVR2 two (img0, img1)
    text: str  # question or statement; "" for captioning
    targets: Mapping[str, float]
    answer: str | None = None
    label: Mapping[str, float] | None = None
    answers: tuple[str, ...] | None = None
    references: tuple[str, ...] = ()


@dataclass
class LoadedSplit:
    """The records of one task split, with what loading found: answers outside the vocabulary are counted here (and
    logged), not dropped, so a vocabulary that does not fit the files shows up instead of silently shrinking them."""

    task: str
    split: str
    records: list[ImageTextRecord]
    # label answer -> number of records using it, for answers not in the vocabulary (empty when no vocabulary given)
    out_of_vocab: Counter[str] = field(default_factory=Counter)
    n_records_out_of_vocab: int = 0  # records with at least one label answer outside the vocabulary

    @property
    def image_ids(self) -> list[str]:
        """Returns every image id the records use, once each, in first-use order (for `ImageFeatures.check`)."""
        return list(dict.fromkeys(image_id for record in self.records for image_id in record.image_ids))


def _check_task(task: str) -> None:
    """Raises unless `task` is one of TASKS."""
    if task not in TASK_IDS:
        raise ValueError(f"unknown image-text task {task!r}; expected one of {', '.join(TASKS)}")


def input_text(record: ImageTextRecord, prompts: bool = True) -> str:
    """Returns the encoder's text input: `TASK_PROMPTS[task] + text` as VL-T5 builds it with `--use_tasks_prompts`
    (`f"{prompt}{sent}"`), or the bare text without prompts (then "" for captioning)."""
    return (TASK_PROMPTS[record.task] if prompts else "") + record.text


def sample_target(record: ImageTextRecord, rng: np.random.Generator) -> str:
    """Returns one training target drawn with probability proportional to its weight, as VL-T5's multitask data does
    for VQA/GQA label scores; "" when there is no target or every weight is 0 (VL-T5 then trains on an empty
    answer)."""
    answers = list(record.targets)
    weights = np.asarray([record.targets[a] for a in answers], dtype=np.float64)
    total = weights.sum()
    if not answers or total <= 0:
        return ""
    return answers[int(rng.choice(len(answers), p=weights / total))]


# ---------------------------------------------------------------------------------------------------------------
# Files


def _read_json(path: str | os.PathLike[str]) -> Any:
    """Returns the parsed JSON of `path`; a missing file or invalid JSON is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise MalformedRecordError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def _read_record_list(path: str | os.PathLike[str]) -> list[Any]:
    """Returns the JSON list of records in `path` (VL-T5's preprocessed files are one JSON list each)."""
    records = _read_json(path)
    if not isinstance(records, list):
        raise MalformedRecordError(f"{path}: expected a JSON list of records, got a JSON {type(records).__name__}")
    return records


def _field(record: Any, key: str, kind: Any, path: Path, where: str) -> Any:
    """Returns record[key], checked to exist and be of `kind` (a type or a union; never bool, which JSON keeps
    apart from numbers); otherwise an error naming the file, the record and the key."""
    if not isinstance(record, dict):
        raise MalformedRecordError(f"{path}: {where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise MalformedRecordError(f"{path}: {where}: missing key {key!r} (has keys: {', '.join(sorted(record))})")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = getattr(kind, "__name__", str(kind))
        raise MalformedRecordError(f"{path}: {where}: {key!r} must be {expected}, got {value!r}")
    return value


def _score_dict(record: dict[str, Any], path: Path, where: str) -> dict[str, float]:
    """Returns a record's `label` {answer: score} dict with float scores (VL-T5's soft VQA/GQA labels)."""
    label = _field(record, "label", dict, path, where)
    for answer, score in label.items():
        if isinstance(score, bool) or not isinstance(score, int | float) or score < 0:
            raise MalformedRecordError(
                f"{path}: {where}: 'label' must map answers to scores >= 0, got {answer!r}: {score!r}"
            )
    return {answer: float(score) for answer, score in label.items()}


def load_answer_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
    """Returns an answer vocabulary `{answer: label id}` (`trainval_ans2label.json`, as VL-T5/LXMERT ship them)."""
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
    ):
        raise MalformedRecordError(f"{path}: expected a JSON object mapping answers to integer label ids")
    return vocab


def _count_out_of_vocab(split: LoadedSplit, vocab: Mapping[str, int] | None, path: Path) -> None:
    """Counts (and logs) the label answers of `split` that `vocab` lacks; the records are kept as they are."""
    if vocab is None:
        return
    for record in split.records:
        missing = [answer for answer in record.label or {} if answer not in vocab]
        split.out_of_vocab.update(missing)
        split.n_records_out_of_vocab += bool(missing)
    if split.n_records_out_of_vocab:
        shown = ", ".join(f"{answer!r} x{n}" for answer, n in split.out_of_vocab.most_common(_SHOW))
        logger.warning(
            "%s %s (%s): %d of %d records have label answers outside the %d-answer vocabulary (%d distinct: %s%s); "
            "they are kept",
            split.task,
            split.split,
            path,
            split.n_records_out_of_vocab,
            len(split.records),
            len(vocab),
            len(split.out_of_vocab),
            shown,
            ", ..." if len(split.out_of_vocab) > _SHOW else "",
        )


def load_vqa_annotations(paths: Iterable[str | os.PathLike[str]]) -> dict[int, tuple[str, ...]]:
    """Returns question_id -> the 10 annotator answers, from official VQA annotation files
    (`v2_mscoco_{train,val}2014_annotations.json`); the official accuracy needs them, the label dicts do not."""
    answers: dict[int, tuple[str, ...]] = {}
    for path in map(Path, paths):
        data = _read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise MalformedRecordError(f"{path}: expected a JSON object with an 'annotations' list (VQA format)")
        for i, annotation in enumerate(data["annotations"]):
            where = f"annotation {i}"
            question_id = _field(annotation, "question_id", int, path, where)
            raw = _field(annotation, "answers", list, path, where)
            answers[question_id] = tuple(
                _field(a, "answer", str, path, f"{where} answer {j}") for j, a in enumerate(raw)
            )
    return answers


def load_vqa(
    path: str | os.PathLike[str],
    vocab: Mapping[str, int] | None = None,
    annotations: Mapping[int, Sequence[str]] | None = None,
    split: str | None = None,
) -> LoadedSplit:
    """Returns the VQA records of a VL-T5 Karpathy file (`karpathy_{train,val,test}.json`).

    Each record keeps `label` (score-dict accuracy, training targets) and, when the record has an `answers` list
    or `annotations` (`load_vqa_annotations`) are given, the 10 annotator answers for the official accuracy; with
    `annotations`, a question missing from them is an error. Label answers outside `vocab` are counted and logged.
    """
    path = Path(path)
    records, unannotated = [], []
    for i, raw in enumerate(_read_record_list(path)):
        where = f"record {i}"
        question_id = _field(raw, "question_id", int | str, path, where)
        label = _score_dict(raw, path, where)
        answers = None
        if "answers" in raw:
            own = _field(raw, "answers", list, path, where)
            answers = tuple(
                a if isinstance(a, str) else _field(a, "answer", str, path, f"{where} answer {j}")
                for j, a in enumerate(own)
            )
        elif annotations is not None:
            if question_id in annotations:
                answers = tuple(annotations[question_id])
            else:
                unannotated.append(question_id)
        records.append(
            ImageTextRecord(
                task="vqa",
                example_id=question_id,
                image_ids=(_field(raw, "img_id", str, path, where),),
                text=_field(raw, "sent", str, path, where),
                targets=label,
                answer=max(label, key=label.__getitem__) if label else None,
                label=label,
                answers=answers,
            )
        )
    if unannotated:
        raise MalformedRecordError(
            f"{path}: {len(unannotated)} of {len(records)} questions have no annotator answers in the annotation "
            f"files (first: {', '.join(map(str, unannotated[:_SHOW]))})"
        )
    loaded = LoadedSplit("vqa", split or path.stem, records)
    _count_out_of_vocab(loaded, vocab, path)
    return loaded


def load_gqa(
    path: str | os.PathLike[str], vocab: Mapping[str, int] | None = None, split: str | None = None
) -> LoadedSplit:
    """Returns the GQA records of a VL-T5 file (`{train,valid,testdev}.json`); `answer` is the best-scored label
    answer (GQA labels hold one answer with score 1), which exact-match accuracy compares with."""
    path = Path(path)
    records = []
    for i, raw in enumerate(_read_record_list(path)):
        where = f"record {i}"
        label = _score_dict(raw, path, where)
        if not label:
            raise MalformedRecordError(f"{path}: {where}: 'label' is empty; a GQA question needs its answer")
        records.append(
            ImageTextRecord(
                task="gqa",
                example_id=_field(raw, "question_id", int | str, path, where),
                image_ids=(_field(raw, "img_id", str, path, where),),
                text=_field(raw, "sent", str, path, where),
                targets=label,
                answer=max(label, key=label.__getitem__),
                label=label,
            )
        )
    loaded = LoadedSplit("gqa", split or path.stem, records)
    _count_out_of_vocab(loaded, vocab, path)
    return loaded


def nlvr2_image_ids(identifier: str) -> tuple[str, str]:
    """Returns the two image ids of an NLVR2 example from its identifier ("dev-850-0-1" -> "dev-850-0-img0",
    "dev-850-0-img1"): the last field numbers the sentence, the images are named after the pair."""
    pair, sep, _ = identifier.rpartition("-")
    if not sep or not pair:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not of the form <split>-<set>-<pair>-<sentence>")
    return f"{pair}-img0", f"{pair}-img1"


def load_nlvr2(path: str | os.PathLike[str], split: str | None = None) -> LoadedSplit:
    """Returns the NLVR2 records of a VL-T5 file (`{train,valid,test}.json`): two images each, `answer` "true"
    for label 1 and "false" for label 0 as VL-T5 trains them."""
    path = Path(path)
    records = []
    for i, raw in enumerate(_read_record_list(path)):
        where = f"record {i}"
        identifier = _field(raw, "identifier", str, path, where)
        label = _field(raw, "label", int, path, where)
        if label not in _NLVR_ANSWERS:
            raise MalformedRecordError(f"{path}: {where}: 'label' must be 0 or 1, got {label!r}")
        if "img0" in raw or "img1" in raw:
            image_ids = (_field(raw, "img0", str, path, where), _field(raw, "img1", str, path, where))
        else:
            try:
                image_ids = nlvr2_image_ids(identifier)
            except ValueError as err:
                raise MalformedRecordError(f"{path}: {where}: {err}") from None
        answer = _NLVR_ANSWERS[label]
        records.append(
            ImageTextRecord(
                task="nlvr",
                example_id=_field(raw, "uid", str, path, where),
                image_ids=image_ids,
                text=_field(raw, "sent", str, path, where),
                targets={answer: 1.0},
                answer=answer,
            )
        )
    return LoadedSplit("nlvr", split or path.stem, records)


def load_coco_captions(path: str | os.PathLike[str], split: str) -> LoadedSplit:
    """Returns the captioning records of one Karpathy split of `dataset_coco.json` (`karpathy_train` includes
    restval): per reference caption for training, per image for evaluation. An image without references is an error,
    since it could neither be trained on nor scored."""
    if split not in _KARPATHY_SPLITS:
        raise ValueError(f"unknown COCO Karpathy split {split!r}; expected one of {', '.join(_KARPATHY_SPLITS)}")
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MalformedRecordError(f"{path}: expected a JSON object with an 'images' list (Karpathy dataset_coco.json)")
    wanted = _KARPATHY_SPLITS[split]
    records = []
    for i, image in enumerate(data["images"]):
        where = f"image {i}"
        image_split = _field(image, "split", str, path, where)
        if image_split not in _COCO_SPLIT_RENAME:
            raise MalformedRecordError(
                f"{path}: {where}: unknown split {image_split!r}; expected one of {', '.join(_COCO_SPLIT_RENAME)}"
            )
        if _COCO_SPLIT_RENAME[image_split] != wanted:
            continue
        image_id = _field(image, "filename", str, path, where).split(".")[0]
        sentences = _field(image, "sentences", list, path, where)
        references = tuple(
            _field(s, "raw", str, path, f"{where} ({image_id}) sentence {j}").strip() for j, s in enumerate(sentences)
        )
        if not references:
            raise MalformedRecordError(
                f"{path}: {where} ({image_id}): no reference captions; captioning needs at least one per image"
            )
        if wanted == "train":
            records.extend(
                ImageTextRecord("caption", f"{image_id}#{k}", (image_id,), "", {ref: 1.0}, references=references)
                for k, ref in enumerate(references)
            )
        else:
            targets = dict.fromkeys(references, 1.0)
            records.append(ImageTextRecord("caption", image_id, (image_id,), "", targets, references=references))
    return LoadedSplit("caption", split, records)


def load_task(task: str, split: str, data_dir: str | os.PathLike[str]) -> LoadedSplit:
    """Returns one task split from a VL-T5 `datasets/` folder (module docstring), with the answer vocabularies and,
    for VQA, the official annotation files when present; `split` may join several with commas ("train,valid")."""
    _check_task(task)
    data_dir = Path(data_dir)
    parts = [_load_one(task, part.strip(), data_dir) for part in split.split(",")]
    merged = LoadedSplit(task, split, [record for part in parts for record in part.records])
    for part in parts:
        merged.out_of_vocab.update(part.out_of_vocab)
        merged.n_records_out_of_vocab += part.n_records_out_of_vocab
    return merged


# The files `load_task` and `official_feature_paths` read, for error messages.
EXPECTED_LAYOUT = (
    "vqa/<split>.json (karpathy_train, karpathy_val, karpathy_test), GQA/<split>.json (train, valid, testdev), "
    "nlvr/<split>.json (train, valid, test), COCO/dataset_coco.json, optionally vqa/ and GQA/trainval_ans2label.json "
    "and vqa/v2_mscoco_<train|val>2014_annotations.json; features (default) "
    "<COCO|VG|GQA|nlvr>/clip_features/data_clip_RN101_att/<img_id>.h5, or the files benchmark.features names"
)


def image_text_root(data_dir: str | os.PathLike[str]) -> Path:
    """Returns the VL-T5 `datasets/` folder: `data_dir/image_text` when it exists (a data root such as
    MTLLORA_DATA_DIR), else `data_dir` itself."""
    data_dir = Path(data_dir)
    return data_dir / "image_text" if (data_dir / "image_text").is_dir() else data_dir


def annotation_file(task: str, split: str, data_dir: str | os.PathLike[str]) -> Path:
    """Returns the annotation file of one (single) split of a task in a VL-T5 `datasets/` folder."""
    _check_task(task)
    folder = {"vqa": "vqa", "gqa": "GQA", "nlvr": "nlvr"}.get(task)
    return Path(data_dir) / (f"{folder}/{split}.json" if folder else "COCO/dataset_coco.json")


def _load_one(task: str, split: str, data_dir: Path) -> LoadedSplit:
    """Returns one split of one task from the VL-T5 layout."""
    path = annotation_file(task, split, data_dir)
    if task == "vqa":
        vocab_file = data_dir / "vqa" / "trainval_ans2label.json"
        annotation_files = sorted((data_dir / "vqa").glob("v2_mscoco_*_annotations.json"))
        annotations = load_vqa_annotations(annotation_files) if annotation_files else None
        vocab = load_answer_vocab(vocab_file) if vocab_file.is_file() else None
        return load_vqa(path, vocab, annotations, split=split)
    if task == "gqa":
        vocab_file = data_dir / "GQA" / "trainval_ans2label.json"
        vocab = load_answer_vocab(vocab_file) if vocab_file.is_file() else None
        return load_gqa(path, vocab, split=split)
    if task == "nlvr":
        return load_nlvr2(path, split=split)
    return load_coco_captions(path, split)


def official_feature_paths(
    task: str, split: str, data_dir: str | os.PathLike[str], layout: str = "clip", backbone: str = "RN101"
) -> list[Path]:
    """Returns where the official feature files of a task split live under a VL-T5 `datasets/` folder.

    layout "clip" (VL-Adapter/DoRA/MTL-LoRA, the paper's): one file per image in
    `<COCO|VG|GQA|nlvr>/clip_features/data_clip_<backbone>_att/<img_id>.h5` (GQA train/valid images are VG's,
    testdev GQA's). layout "butd" (VL-T5's Faster R-CNN boxes): `COCO/features/{train,val}2014_obj36.h5`,
    `VG/features/vg_gqa_obj36.h5`, `GQA/features/gqa_testdev_obj36.h5`, `nlvr/features/{split}_obj36.h5`.
    """
    _check_task(task)
    data_dir = Path(data_dir)
    paths: list[Path] = []
    for part in (p.strip() for p in split.split(",")):
        if layout == "clip":
            folder = {"vqa": "COCO", "caption": "COCO", "nlvr": "nlvr"}.get(task)
            folder = folder or ("GQA" if part in ("testdev", "submit") else "VG")
            paths.append(data_dir / folder / "clip_features" / f"data_clip_{backbone}_att")
        elif layout == "butd":
            if task in ("vqa", "caption"):
                paths += [data_dir / "COCO" / "features" / f"{s}2014_obj36.h5" for s in ("train", "val")]
            elif task == "gqa":
                name = "GQA/features/gqa_testdev_obj36.h5" if part == "testdev" else "VG/features/vg_gqa_obj36.h5"
                paths.append(data_dir / name)
            else:
                paths.append(data_dir / "nlvr" / "features" / f"{part}_obj36.h5")
        else:
            raise ValueError(f"unknown feature layout {layout!r}; expected 'clip' or 'butd'")
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------------------------------------------------------
# Image features


def downsample_grid(features: np.ndarray, boxes: np.ndarray, n_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns a square grid of region features max-pooled to `n_boxes` (a square), as VL-Adapter's `--downsample`
    turns CLIP's 7x7 grid into 36 regions (`nn.AdaptiveMaxPool2d((6, 6))`, same bins); each box becomes the
    union of the cells it pools (all-zero boxes stay zero)."""
    side, out = round(len(features) ** 0.5), round(n_boxes**0.5)
    if side * side != len(features) or out * out != n_boxes or out > side:
        raise ValueError(
            f"cannot downsample {len(features)} regions to {n_boxes}: both must be square grids, the target smaller"
        )
    grid = features.reshape(side, side, -1)
    cell_boxes = boxes.reshape(side, side, 4)
    # Adaptive pooling bins: output i covers input rows floor(i*side/out) .. ceil((i+1)*side/out) - 1.
    bins = [(i * side // out, -(-(i + 1) * side // out)) for i in range(out)]

    def pool(values: np.ndarray, reduce: Any) -> np.ndarray:
        return np.stack([reduce(values[r0:r1, c0:c1], axis=(0, 1)) for r0, r1 in bins for c0, c1 in bins])

    pooled = pool(grid, np.max)
    union = np.concatenate([pool(cell_boxes[..., :2], np.min), pool(cell_boxes[..., 2:], np.max)], axis=1)
    return pooled.astype(features.dtype, copy=False), union.astype(boxes.dtype, copy=False)


def open_h5(path: Path) -> h5py.File:
    """Opens an HDF5 feature file for reading; a file that is not readable HDF5 (truncated by an interrupted copy,
    another format) is an OSError naming it (h5py's own names no file)."""
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"{path}: not a readable HDF5 feature file ({err}); copy or extract it again") from None


class ImageFeatures:
    """Region features by image id, read lazily from HDF5 (one image at a time; files stay open, per process).

    Each source is an `.h5` file holding many images (VL-T5's `train2014_obj36.h5`, or what
    `mtllora.benchmarks.image_text_features` writes) or a folder of one `<img_id>.h5` file per image (VL-Adapter's CLIP
    `data_clip_RN101_att/`); an id is looked up in the sources in order. In both, `<img_id>/features` is
    [boxes, dim]. Boxes, returned normalised to 0..1 as (x1, y1, x2, y2), are VL-T5's: `<img_id>/boxes` in pixels
    divided by `<img_id>/img_w` and `img_h` and clamped; without img_w/img_h the stored boxes must already be in
    0..1; without boxes they are zeros, as VL-Adapter's CLIP loaders feed them (VL-BART's "pos" input is these 4
    values plus the box area). `n_boxes` pools a larger square grid down (`downsample_grid`); None keeps what is
    stored. `dim`: the feature width every image must have (None: the first image's, `feature_dim`); an image of
    another width is an error naming it and its file.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        n_boxes: int | None = None,
        dim: int | None = None,
    ):
        self.paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("ImageFeatures needs at least one feature file or folder")
        for path in self.paths:
            if not path.exists():
                raise FileNotFoundError(f"no image feature file or folder {path}")
        self.n_boxes = n_boxes
        self.dim = dim
        self._files: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def _file(self, path: Path) -> h5py.File:
        """Returns the open handle of a multi-image file; a forked worker opens its own (h5py handles do not
        survive fork)."""
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = open_h5(path)
        return self._files[path]

    def _source(self, image_id: str) -> Path | None:
        """Returns the first source holding `image_id`, or None."""
        for path in self.paths:
            if path.is_dir():
                if (path / f"{image_id}.h5").is_file():
                    return path
            elif f"{image_id}/features" in self._file(path):
                return path
        return None

    def __contains__(self, image_id: object) -> bool:
        return isinstance(image_id, str) and self._source(image_id) is not None

    def missing(self, image_ids: Iterable[str]) -> list[str]:
        """Returns the ids (each once, in order) that no source has features for."""
        return [image_id for image_id in dict.fromkeys(image_ids) if self._source(image_id) is None]

    def check(self, image_ids: Iterable[str], what: str = "dataset") -> None:
        """Raises one MissingImageFeaturesError listing the first few missing ids and their count, or a ValueError
        listing images of multi-image files whose feature width is not `dim` (a shape lookup in the open file; a
        folder's per-image files are checked as they are read), so a dataset fails up front rather than at its
        first batch."""
        image_ids = list(dict.fromkeys(image_ids))
        missing = self.missing(image_ids)
        if missing:
            more = ", ..." if len(missing) > _SHOW else ""
            raise MissingImageFeaturesError(
                f"{what}: {len(missing)} of {len(image_ids)} image ids have no features in "
                f"{', '.join(map(str, self.paths))}: {', '.join(missing[:_SHOW])}{more}"
            )
        dim = self.expected_dim()
        wrong = []
        for image_id in image_ids:
            source = self._source(image_id)
            if not source.is_dir() and (width := self._file(source)[image_id]["features"].shape[-1]) != dim:
                wrong.append(f"{image_id} in {source} ({width})")
        if wrong:
            raise ValueError(
                f"{what}: {len(wrong)} of {len(image_ids)} images have features of another width than {dim} (the "
                f"first image's of {self.paths[0]}): {', '.join(wrong[:_SHOW])}{', ...' if len(wrong) > _SHOW else ''}"
            )

    def get(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns (features [boxes, dim] float32, boxes [boxes, 4] float32 normalised x1, y1, x2, y2) of an image."""
        source = self._source(image_id)
        if source is None:
            raise MissingImageFeaturesError(
                f"no features for image id {image_id!r} in {', '.join(map(str, self.paths))}"
            )
        if source.is_dir():
            with open_h5(source / f"{image_id}.h5") as f:
                return self._read(f[image_id], image_id, source / f"{image_id}.h5")
        return self._read(self._file(source)[image_id], image_id, source)

    __getitem__ = get

    def _read(self, group: h5py.Group, image_id: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Returns the features and normalised boxes of one image's group (read from `path`), pooled to `n_boxes` if
        asked."""
        features = np.asarray(group["features"][()], dtype=np.float32)
        if features.ndim != 2:
            raise ValueError(f"image {image_id!r} in {path}: features must be [boxes, dim], got shape {features.shape}")
        if features.shape[1] != (dim := self.expected_dim()):
            raise ValueError(
                f"image {image_id!r} in {path}: features are {features.shape[1]} wide, expected {dim} (the width of "
                f"the first image of {self.paths[0]}, which the model's visual embedding takes)"
            )
        if "boxes" not in group:
            boxes = np.zeros((len(features), 4), dtype=np.float32)
        else:
            boxes = np.array(group["boxes"][()], dtype=np.float32)
            if "img_w" in group and "img_h" in group:
                boxes[:, (0, 2)] /= float(group["img_w"][()])
                boxes[:, (1, 3)] /= float(group["img_h"][()])
                np.clip(boxes, 0.0, 1.0, out=boxes)
            elif boxes.size and (boxes.min() < -1e-5 or boxes.max() > 1 + 1e-5):
                raise ValueError(
                    f"image {image_id!r}: boxes without img_w/img_h must be normalised to 0..1, "
                    f"got values in [{boxes.min():.3g}, {boxes.max():.3g}]"
                )
        if self.n_boxes is not None and len(features) != self.n_boxes:
            features, boxes = downsample_grid(features, boxes, self.n_boxes)
        return features, boxes

    def feature_dim(self) -> int:
        """Returns the feature dimension, read from the first image of the first source."""
        source = self.paths[0]
        if source.is_dir():
            first = next(iter(sorted(source.glob("*.h5"))), None)
            if first is None:
                raise ValueError(f"feature folder {source} holds no <img_id>.h5 files")
            with open_h5(first) as f:
                return int(f[first.stem]["features"].shape[-1])
        handle = self._file(source)
        first_id = next(iter(handle), None)
        if first_id is None:
            raise ValueError(f"feature file {source} holds no images")
        return int(handle[first_id]["features"].shape[-1])

    def expected_dim(self) -> int:
        """Returns the width every image's features must have: `dim`, set from `feature_dim` on first use."""
        if self.dim is None:
            self.dim = self.feature_dim()
        return self.dim

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without the open HDF5 handles (a DataLoader worker started by spawn or forkserver gets a copy and
        opens its own files; h5py handles cannot be pickled)."""
        return {**self.__dict__, "_files": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _pid=os.getpid())

    def close(self) -> None:
        """Closes the open files (they reopen on the next read)."""
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __enter__(self) -> ImageFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
