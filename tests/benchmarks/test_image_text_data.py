"""Image-text data layer: the four VL-T5 loaders on tiny hand-written files (bad input included), prompts and
targets, the HDF5 feature store, and the SYNTHETIC generator with the pixel feature extractor end to end."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mtllora.benchmarks import image_text_features, image_text_synthetic
from mtllora.benchmarks.image_text_data import (
    TASK_IDS,
    ImageFeatures,
    ImageTextRecord,
    MalformedRecordError,
    MissingImageFeaturesError,
    downsample_grid,
    input_text,
    load_answer_vocab,
    load_coco_captions,
    load_gqa,
    load_nlvr2,
    load_task,
    load_vqa,
    load_vqa_annotations,
    nlvr2_image_ids,
    official_feature_paths,
    sample_target,
)


def write_json(path: Path, data: object) -> Path:
    """Writes `data` as JSON (creating folders) and returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


VQA_RECORDS = [
    {
        "answer_type": "other",
        "img_id": "COCO_train2014_000000458752",
        "label": {"net": 1, "netting": 0.3},
        "question_id": 458752000,
        "question_type": "what is this",
        "sent": "What is this photo taken looking through?",
    },
    {"img_id": "COCO_val2014_000000000042", "label": {"2": 0.9, "3": 0.3}, "question_id": 42001, "sent": "How many?"},
    {"img_id": "COCO_val2014_000000000042", "label": {}, "question_id": 42002, "sent": "What brand?"},
]
VQA_ANNOTATIONS = {
    "annotations": [
        {
            "question_id": 458752000,
            "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(["net"] * 9 + ["netting"])],
        },
        {"question_id": 42001, "answers": [{"answer": a} for a in ["2", "2", "2", "3"] + ["two"] * 6]},
        {"question_id": 42002, "answers": [{"answer": f"brand{i}"} for i in range(10)]},
    ]
}


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def test_vqa_records_targets_and_annotator_answers(tmp_path):
    path = write_json(tmp_path / "karpathy_train.json", VQA_RECORDS)
    annotations = load_vqa_annotations([write_json(tmp_path / "ann.json", VQA_ANNOTATIONS)])
    loaded = load_vqa(path, vocab={"net": 0, "netting": 1, "2": 2, "3": 3}, annotations=annotations)
    first, second, third = loaded.records
    assert loaded.split == "karpathy_train" and loaded.n_records_out_of_vocab == 0
    assert first == ImageTextRecord(
        task="vqa",
        example_id=458752000,
        image_ids=("COCO_train2014_000000458752",),
        text="What is this photo taken looking through?",
        targets={"net": 1.0, "netting": 0.3},
        answer="net",
        label={"net": 1.0, "netting": 0.3},
        answers=("net",) * 9 + ("netting",),
    )
    assert second.answers == ("2", "2", "2", "3") + ("two",) * 6
    assert third.answer is None and third.label == {}
    assert loaded.image_ids == ["COCO_train2014_000000458752", "COCO_val2014_000000000042"]
    assert input_text(first) == "vqa: What is this photo taken looking through?"
    assert input_text(first, prompts=False) == "What is this photo taken looking through?"


def test_vqa_answers_outside_the_vocabulary_are_counted_and_logged_not_dropped(tmp_path, caplog):
    path = write_json(tmp_path / "karpathy_val.json", VQA_RECORDS)
    with caplog.at_level(logging.WARNING):
        loaded = load_vqa(path, vocab={"net": 0, "2": 1})
    assert len(loaded.records) == 3
    assert loaded.out_of_vocab == Counter({"netting": 1, "3": 1})
    assert loaded.n_records_out_of_vocab == 2
    assert "2 of 3 records have label answers outside the 2-answer vocabulary" in caplog.text
    assert "'netting' x1" in caplog.text and "they are kept" in caplog.text


def test_vqa_question_missing_from_the_annotations_is_an_error(tmp_path):
    path = write_json(tmp_path / "karpathy_test.json", VQA_RECORDS)
    annotations = {458752000: ["net"] * 10}
    with pytest.raises(
        MalformedRecordError, match=r"karpathy_test.json: 2 of 3 questions have no annotator answers.*42001, 42002"
    ):
        load_vqa(path, annotations=annotations)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"img_id": "x", "label": {"a": 1}, "question_id": 1},
            r"record 1: missing key 'sent' \(has keys: img_id, label, question_id\)",
        ),
        (
            {"img_id": "x", "label": ["a"], "question_id": 1, "sent": "q"},
            r"record 1: 'label' must be dict, got \['a'\]",
        ),
        (
            {"img_id": "x", "label": {"a": "high"}, "question_id": 1, "sent": "q"},
            r"record 1: 'label' must map answers to scores >= 0",
        ),
        ({"img_id": 7, "label": {}, "question_id": 1, "sent": "q"}, r"record 1: 'img_id' must be str, got 7"),
        ("not an object", r"record 1: expected a JSON object, got str"),
    ],
)
def test_malformed_vqa_records_name_file_index_and_key(tmp_path, record, message):
    path = write_json(tmp_path / "karpathy_train.json", [VQA_RECORDS[0], record])
    with pytest.raises(MalformedRecordError, match=f"{path}: {message}"):
        load_vqa(path)


def test_not_a_list_and_invalid_json_are_errors(tmp_path):
    with pytest.raises(MalformedRecordError, match="expected a JSON list of records, got a JSON dict"):
        load_gqa(write_json(tmp_path / "train.json", {"a": 1}))
    bad = tmp_path / "valid.json"
    bad.write_text('[{"img_id": "1",]')
    with pytest.raises(MalformedRecordError, match=r"valid\.json: invalid JSON at line 1"):
        load_gqa(bad)
    with pytest.raises(FileNotFoundError, match="no data file"):
        load_gqa(tmp_path / "missing.json")


def test_gqa_answer_is_the_label_answer(tmp_path):
    records = [{"img_id": "2375429", "label": {"pipe": 1.0}, "question_id": "07333408", "sent": "What is on the wall?"}]
    loaded = load_gqa(write_json(tmp_path / "testdev.json", records), vocab={"pipe": 0})
    (record,) = loaded.records
    assert (record.task, record.example_id, record.image_ids, record.answer) == (
        "gqa",
        "07333408",
        ("2375429",),
        "pipe",
    )
    assert input_text(record) == "gpa: What is on the wall?"  # the official prompt, typo included
    records[0]["label"] = {}
    with pytest.raises(MalformedRecordError, match=r"record 0: 'label' is empty"):
        load_gqa(write_json(tmp_path / "train.json", records))


def test_nlvr2_images_from_keys_or_identifier_and_true_false_answers(tmp_path):
    records = [
        {
            "identifier": "train-10171-0-0",
            "img0": "train-10171-0-img0",
            "img1": "train-10171-0-img1",
            "label": 0,
            "sent": "An image shows one case.",
            "uid": "nlvr2_train_0",
        },
        {"identifier": "dev-850-0-1", "label": 1, "sent": "Two dogs.", "uid": "nlvr2_dev_1"},
    ]
    first, second = load_nlvr2(write_json(tmp_path / "valid.json", records)).records
    assert first.image_ids == ("train-10171-0-img0", "train-10171-0-img1") and first.answer == "false"
    assert second.image_ids == ("dev-850-0-img0", "dev-850-0-img1") and second.targets == {"true": 1.0}
    assert input_text(second) == "nlvr: Two dogs."
    assert nlvr2_image_ids("test1-0-1-3") == ("test1-0-1-img0", "test1-0-1-img1")
    records[1]["label"] = 2
    with pytest.raises(MalformedRecordError, match=r"record 1: 'label' must be 0 or 1, got 2"):
        load_nlvr2(write_json(tmp_path / "test.json", records))
    records[1].update(label=True)
    with pytest.raises(MalformedRecordError, match=r"record 1: 'label' must be int, got True"):
        load_nlvr2(write_json(tmp_path / "test.json", records))
    records[1].update(label=1, identifier="nodash")
    with pytest.raises(MalformedRecordError, match=r"record 1: NLVR2 identifier 'nodash'"):
        load_nlvr2(write_json(tmp_path / "test.json", records))


def karpathy(images: list[tuple[str, str, list[str]]]) -> dict:
    """Returns a dataset_coco.json object of (file name, Karpathy split, raw captions) images."""
    return {
        "images": [
            {"filename": name, "split": split, "sentences": [{"raw": r, "tokens": []} for r in raws], "cocoid": i}
            for i, (name, split, raws) in enumerate(images)
        ],
        "dataset": "coco",
    }


def test_coco_captions_one_example_per_reference_for_training_one_per_image_for_evaluation(tmp_path):
    path = write_json(
        tmp_path / "dataset_coco.json",
        karpathy(
            [
                ("COCO_train2014_000000000001.jpg", "train", ["A cat. ", "A small cat."]),
                ("COCO_val2014_000000000002.jpg", "restval", ["A dog."]),
                ("COCO_val2014_000000000003.jpg", "test", ["Two birds.", "Birds on a wire."]),
            ]
        ),
    )
    train = load_coco_captions(path, "karpathy_train")
    assert [r.example_id for r in train.records] == [
        "COCO_train2014_000000000001#0",
        "COCO_train2014_000000000001#1",
        "COCO_val2014_000000000002#0",
    ]
    assert train.records[0].targets == {"A cat.": 1.0} and train.records[0].references == ("A cat.", "A small cat.")
    assert input_text(train.records[0]) == "caption: " and input_text(train.records[0], prompts=False) == ""
    (test,) = load_coco_captions(path, "karpathy_test").records
    assert test.example_id == "COCO_val2014_000000000003" and test.references == ("Two birds.", "Birds on a wire.")
    assert load_coco_captions(path, "karpathy_val").records == []
    with pytest.raises(ValueError, match="unknown COCO Karpathy split 'val'"):
        load_coco_captions(path, "val")


def test_caption_image_without_references_is_an_error(tmp_path):
    path = write_json(
        tmp_path / "dataset_coco.json",
        karpathy(
            [("COCO_val2014_000000000003.jpg", "val", ["Two birds."]), ("COCO_val2014_000000000004.jpg", "val", [])]
        ),
    )
    with pytest.raises(MalformedRecordError, match=r"image 1 \(COCO_val2014_000000000004\): no reference captions"):
        load_coco_captions(path, "karpathy_val")
    path = write_json(tmp_path / "bad.json", karpathy([("COCO_val2014_000000000003.jpg", "val", ["x"])]))
    data = json.loads(path.read_text())
    del data["images"][0]["sentences"][0]["raw"]
    with pytest.raises(
        MalformedRecordError, match=r"image 0 \(COCO_val2014_000000000003\) sentence 0: missing key 'raw'"
    ):
        load_coco_captions(write_json(path, data), "karpathy_val")


def test_sample_target_follows_the_label_scores():
    record = ImageTextRecord("vqa", 1, ("i",), "q", {"net": 1.0, "netting": 0.3, "mesh": 0.0})
    rng = np.random.default_rng(0)
    draws = Counter(sample_target(record, rng) for _ in range(4000))
    assert set(draws) == {"net", "netting"}
    assert draws["net"] / 4000 == pytest.approx(1 / 1.3, abs=0.03)
    assert sample_target(ImageTextRecord("vqa", 2, ("i",), "q", {}), rng) == ""


def test_load_task_reads_the_vl_t5_layout_and_merges_splits(tmp_path):
    write_json(tmp_path / "vqa" / "karpathy_val.json", VQA_RECORDS)
    write_json(tmp_path / "vqa" / "trainval_ans2label.json", {"net": 0, "2": 1, "3": 2})
    write_json(tmp_path / "vqa" / "v2_mscoco_val2014_annotations.json", VQA_ANNOTATIONS)
    gqa = [{"img_id": "1", "label": {"yes": 1.0}, "question_id": "1", "sent": "Is it?"}]
    write_json(tmp_path / "GQA" / "train.json", gqa)
    write_json(tmp_path / "GQA" / "valid.json", [{**gqa[0], "question_id": "2", "label": {"maybe": 1.0}}])
    write_json(tmp_path / "GQA" / "trainval_ans2label.json", {"yes": 0})
    vqa = load_task("vqa", "karpathy_val", tmp_path)
    assert vqa.records[0].answers[-1] == "netting" and vqa.out_of_vocab == Counter({"netting": 1})
    merged = load_task("gqa", "train,valid", tmp_path)
    assert [r.example_id for r in merged.records] == ["1", "2"] and merged.split == "train,valid"
    assert merged.out_of_vocab == Counter({"maybe": 1}) and merged.n_records_out_of_vocab == 1
    with pytest.raises(ValueError, match="unknown image-text task 'vqa2'"):
        load_task("vqa2", "train", tmp_path)
    assert TASK_IDS == {"vqa": 0, "gqa": 1, "nlvr": 2, "caption": 3}


def test_official_feature_paths(tmp_path):
    clip = "clip_features/data_clip_RN101_att"
    assert official_feature_paths("gqa", "train,valid", tmp_path) == [tmp_path / "VG" / clip]
    assert official_feature_paths("gqa", "testdev", tmp_path) == [tmp_path / "GQA" / clip]
    assert official_feature_paths("caption", "karpathy_test", tmp_path) == [tmp_path / "COCO" / clip]
    assert official_feature_paths("nlvr", "valid", tmp_path, layout="butd") == [
        tmp_path / "nlvr/features/valid_obj36.h5"
    ]
    assert official_feature_paths("vqa", "karpathy_train", tmp_path, layout="butd") == [
        tmp_path / "COCO/features/train2014_obj36.h5",
        tmp_path / "COCO/features/val2014_obj36.h5",
    ]


def test_shared_answer_vocabularies_load():
    root = Path(os.environ.get("MTLLORA_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
    files = {"vqa": 3129, "gqa": 1842}
    if not all((root / "image_text" / task / "trainval_ans2label.json").is_file() for task in files):
        pytest.skip(f"no shared image_text vocabularies under {root}")
    for task, size in files.items():
        assert len(load_answer_vocab(root / "image_text" / task / "trainval_ans2label.json")) == size


# ---------------------------------------------------------------------------------------------------------------
# Feature store


def write_features(path: Path, images: dict[str, dict[str, object]]) -> Path:
    """Writes {img_id: {dataset name: value}} as HDF5 groups and returns the path."""
    with h5py.File(path, "w") as f:
        for image_id, datasets in images.items():
            for key, value in datasets.items():
                f[f"{image_id}/{key}"] = value
    return path


def test_feature_store_reads_lazily_and_normalises_boxes(tmp_path):
    features = np.arange(8, dtype=np.float32).reshape(2, 4)
    pixel_boxes = np.array([[0, 0, 50, 20], [10, 10, 100, 40]], dtype=np.float32)
    butd = write_features(
        tmp_path / "train2014_obj36.h5",
        {"a": {"features": features, "boxes": pixel_boxes, "img_w": 100, "img_h": 40}, "b": {"features": features + 1}},
    )
    folder = tmp_path / "data_clip_RN101_att"
    folder.mkdir()
    write_features(folder / "c.h5", {"c": {"features": features * 2, "boxes": pixel_boxes / 100}})
    store = ImageFeatures([butd, folder])
    got, boxes = store.get("a")
    np.testing.assert_array_equal(got, features)
    np.testing.assert_allclose(boxes, [[0, 0, 0.5, 0.5], [0.1, 0.25, 1, 1]])
    np.testing.assert_array_equal(store["b"][1], np.zeros((2, 4)))  # no boxes: zeros, as VL-Adapter's CLIP loaders
    np.testing.assert_array_equal(store.get("c")[0], features * 2)
    assert "c" in store and "d" not in store and store.feature_dim() == 4
    store.close()
    write_features(folder / "e.h5", {"e": {"features": features, "boxes": pixel_boxes}})
    with pytest.raises(ValueError, match=r"image 'e': boxes without img_w/img_h must be normalised to 0..1"):
        store.get("e")
    with pytest.raises(FileNotFoundError, match="no image feature file or folder"):
        ImageFeatures(tmp_path / "nothing.h5")


def test_missing_image_ids_are_one_error_with_the_first_few_and_the_count(tmp_path):
    store = ImageFeatures(write_features(tmp_path / "f.h5", {"a": {"features": np.zeros((1, 2))}}))
    wanted = ["a"] + [f"m{i}" for i in range(7)] + ["m0"]
    assert store.missing(wanted) == [f"m{i}" for i in range(7)]
    with pytest.raises(
        MissingImageFeaturesError,
        match=rf"vqa karpathy_val: 7 of 8 image ids have no features in {tmp_path}/f\.h5: m0, m1, m2, m3, m4, \.\.\.$",
    ):
        store.check(wanted, what="vqa karpathy_val")
    store.check(["a"])
    with pytest.raises(MissingImageFeaturesError, match="no features for image id 'zz'"):
        store.get("zz")


def test_downsampling_a_clip_grid_matches_adaptive_max_pooling(tmp_path):
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((49, 3)).astype(np.float32)
    expected = torch.nn.AdaptiveMaxPool2d((6, 6))(torch.from_numpy(grid.T.reshape(1, 3, 7, 7))).reshape(3, 36).T
    cells = np.array([[c, r, c + 1, r + 1] for r in range(7) for c in range(7)], dtype=np.float32) / 7
    pooled, boxes = downsample_grid(grid, cells, 36)
    np.testing.assert_array_equal(pooled, expected.numpy())
    np.testing.assert_allclose(boxes[0], [0, 0, 2 / 7, 2 / 7]) and np.testing.assert_allclose(
        boxes[-1], [5 / 7, 5 / 7, 1, 1]
    )
    store = ImageFeatures(write_features(tmp_path / "clip.h5", {"x": {"features": grid}}), n_boxes=36)
    np.testing.assert_array_equal(store.get("x")[0], expected.numpy())
    with pytest.raises(ValueError, match="cannot downsample 49 regions to 40"):
        downsample_grid(grid, cells, 40)


# ---------------------------------------------------------------------------------------------------------------
# SYNTHETIC generator and pixel features, end to end


def digest(folder: Path) -> dict[str, str]:
    """Returns relative path -> SHA-1 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A tiny SYNTHETIC set and its pixel features, made twice with the same seed and once with another."""
    generator, extractor = image_text_synthetic, image_text_features
    root = tmp_path_factory.mktemp("synthetic")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generator.main(
            ["--out", str(root / name), "--seed", str(seed), "--train-per-task", "12", "--eval-per-task", "4"]
        )
        folders = [str(root / name / sub / "images") for sub in ("COCO", "VG", "GQA", "nlvr")]
        extractor.main(["--images", *folders, "--output", str(root / f"{name}.h5"), "--dim", "24"])
    return root


def test_generator_is_deterministic_and_says_synthetic(synthetic):
    first, second, other = (digest(synthetic / name) for name in "abc")
    assert first == second and first != other
    assert (
        "baselines.json" in first
        and "COCO/dataset_coco.json" in first
        and "vqa/v2_mscoco_val2014_annotations.json" in first
    )
    assert "SYNTHETIC" in (synthetic / "a" / "README.md").read_text()
    for path in (synthetic / "a").rglob("*.json"):
        if "ans2label" not in path.name and "label2ans" not in path.name:
            assert "SYNTHETIC" in path.read_text(), path
    baselines = json.loads((synthetic / "a" / "baselines.json").read_text())
    assert set(baselines) == {"note", "vqa", "gqa", "nlvr", "caption", "average"}
    assert 0 <= baselines["vqa"]["accuracy"] <= 1 and baselines["caption"]["CIDEr"] >= 0
    for task in ("vqa", "gqa", "nlvr"):  # the blind baselines the README compares a model against
        assert 0 <= baselines[task]["text_prior_accuracy"] <= 1


def test_generated_set_loads_in_every_split_and_has_features_for_every_image(synthetic):
    root = synthetic / "a"
    store = ImageFeatures(synthetic / "a.h5")
    sizes = {}
    for task, splits in {
        "vqa": ["karpathy_train", "karpathy_val", "karpathy_test"],
        "gqa": ["train,valid", "testdev"],
        "nlvr": ["train", "valid", "test"],
        "caption": ["karpathy_train", "karpathy_val", "karpathy_test"],
    }.items():
        for split in splits:
            loaded = load_task(task, split, root)
            assert loaded.n_records_out_of_vocab == 0
            store.check(loaded.image_ids, what=f"{task} {split}")
            sizes[task, split] = len(loaded.records)
    assert sizes["vqa", "karpathy_train"] == sizes["nlvr", "train"] == 12
    assert sizes["caption", "karpathy_train"] == 15  # 5 references each of ceil(12 / 5) training images
    assert sizes["gqa", "train,valid"] == 16 and sizes["vqa", "karpathy_test"] == sizes["caption", "karpathy_test"] == 4
    vqa = load_task("vqa", "karpathy_test", root).records
    assert all(r.answers is not None and len(r.answers) == 10 for r in vqa)
    features, boxes = store.get(vqa[0].image_ids[0])
    assert features.shape == (36, 24) and features.dtype == np.float32
    np.testing.assert_allclose(boxes[7], [1 / 6, 1 / 6, 2 / 6, 2 / 6], atol=1e-6)


def test_pixel_features_are_deterministic(synthetic):
    with h5py.File(synthetic / "a.h5") as a, h5py.File(synthetic / "b.h5") as b:
        assert list(a) == list(b) and a.attrs["backbone"] == "pixels"
        for image_id in list(a)[:20]:
            np.testing.assert_array_equal(a[image_id]["features"][()], b[image_id]["features"][()])
        distinct = {a[image_id]["features"][()].tobytes() for image_id in list(a)[:20]}
        assert len(distinct) == 20  # different scenes, different features


def test_pixel_features_tell_the_shapes_apart_by_ink_fill():
    """The last raw descriptor (the share of the ink's bounding box that the ink fills) separates the three shapes
    whatever their colour and size: about 1 for squares, pi/4 for circles, 1/2 for triangles, 0 for empty cells."""
    generator, extractor = image_text_synthetic, image_text_features
    rng = random.Random(0)
    fills = {shape: [] for shape in generator.SHAPES}
    for _ in range(20):
        scene = generator.random_scene(rng)
        rgb = np.asarray(generator.render(scene, 96, rng), dtype=np.float32) / 255
        fill = extractor.pixel_cell_features(rgb, 3)[:, -1]
        for obj in scene:
            fills[obj.shape].append(fill[obj.row * 3 + obj.col])
        assert not fill[[i for i in range(9) if i not in {o.row * 3 + o.col for o in scene}]].any()
    np.testing.assert_allclose(fills["square"], 1.0)
    np.testing.assert_allclose(fills["circle"], np.pi / 4, atol=0.03)
    np.testing.assert_allclose(fills["triangle"], 0.5, atol=0.04)


def test_clip_backbone_without_clip_stops_with_a_clear_message(tmp_path, monkeypatch):
    extractor = image_text_features
    for name in ("clip", "open_clip"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail, as when not installed
    (tmp_path / "im").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "im" / "x.png")
    with pytest.raises(
        SystemExit, match="--backbone clip-rn101 needs CLIP RN101: install openai's `clip` package or `open_clip_torch`"
    ):
        extractor.main(
            ["--images", str(tmp_path / "im"), "--output", str(tmp_path / "f.h5"), "--backbone", "clip-rn101"]
        )
    assert not (tmp_path / "f.h5").exists()


def test_clip_backbone_pools_the_last_stage_grid(tmp_path, monkeypatch):
    """A stand-in for open_clip's RN101 (same interface, no weights): the layer4 grid is captured, pooled 7x7 -> 6x6
    and written 2048-d; the preprocessing hands it 224x224 CLIP-normalised images."""
    extractor = image_text_features
    seen = {}

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer4 = torch.nn.Conv2d(3, 2048, 1)

        def forward(self, x):
            seen["input"] = tuple(x.shape)
            return self.layer4(torch.nn.functional.adaptive_avg_pool2d(x, 7)).mean()

    class FakeOpenClip:
        @staticmethod
        def create_model(name, pretrained, device):
            assert (name, pretrained) == ("RN101", "openai")
            return torch.nn.ModuleDict({"visual": Visual()})

    monkeypatch.setitem(sys.modules, "clip", None)
    monkeypatch.setitem(sys.modules, "open_clip", FakeOpenClip)
    from PIL import Image

    (tmp_path / "im").mkdir()
    Image.new("RGB", (50, 30), (255, 0, 0)).save(tmp_path / "im" / "x.png")
    extractor.main(["--images", str(tmp_path / "im"), "--output", str(tmp_path / "f.h5"), "--backbone", "clip-rn101"])
    assert seen["input"] == (1, 3, 224, 224)
    store = ImageFeatures(tmp_path / "f.h5")
    features, boxes = store.get("x")
    assert features.shape == (36, 2048) and store.feature_dim() == 2048
    np.testing.assert_allclose(boxes[0], [0, 0, 1 / 6, 1 / 6], atol=1e-6)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f.attrs["backbone"] == "clip-rn101" and f.attrs["n_boxes"] == 36


def test_features_of_another_width_and_truncated_files_are_named(tmp_path):
    wide, narrow = {"features": np.zeros((2, 4))}, {"features": np.zeros((2, 3))}
    file = write_features(tmp_path / "f.h5", {"a": wide, "b": narrow, "c": wide})
    folder = tmp_path / "clip"
    folder.mkdir()
    write_features(folder / "d.h5", {"d": narrow})
    store = ImageFeatures([file, folder])
    assert store.expected_dim() == 4  # the first image of the first source
    # Multi-image files are checked up front (a shape lookup); a folder's files as they are read.
    with pytest.raises(ValueError, match=r"^gqa train: 1 of 3 images have features of another width than 4 .*: b in "):
        store.check(["a", "b", "d"], what="gqa train")
    with pytest.raises(ValueError, match=rf"image 'd' in {folder}/d\.h5: features are 3 wide, expected 4 \(the width"):
        store.get("d")
    assert ImageFeatures([folder], dim=3).get("d")[0].shape == (2, 3)

    data = file.read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=rf"^{tmp_path}/cut\.h5: not a readable HDF5 feature file \(.*truncated file"):
        ImageFeatures(tmp_path / "cut.h5").get("a")
    (folder / "e.h5").write_bytes(data[:100])
    with pytest.raises(OSError, match=rf"^{folder}/e\.h5: not a readable HDF5 feature file"):
        ImageFeatures([folder]).get("e")
