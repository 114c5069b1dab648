"""Image-text inputs before any model loads: where the data is (MTLLORA_DATA_DIR, a root holding image_text/ or that
folder), one error listing every missing file, the paper profile's official settings, and the one-task batches of
the official multitask loader (sizes, ranks, epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtllora.benchmarks.image_text import ImageTextBenchmark, TaskBatchSampler
from mtllora.configs import CONFIG_DIR, instantiate_node, register_resolvers

CLIP = "clip_features/data_clip_RN101_att"


def _touch(root: Path, *relative: str) -> None:
    for path in relative:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(json.dumps([]))


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=unused"])


def test_check_inputs_lists_every_missing_annotation_file_and_feature_folder(tmp_path):
    folder = tmp_path / "image_text"
    _touch(folder, "vqa/karpathy_train.json", "vqa/karpathy_test.json", "nlvr/train.json")
    (folder / "COCO" / CLIP).mkdir(parents=True)
    bench = ImageTextBenchmark(tmp_path, tasks=["vqa", "nlvr"])  # a data root holding image_text/
    assert bench.data_dir == folder
    with pytest.raises(FileNotFoundError) as error:
        bench.check_inputs()
    message = str(error.value)
    assert f"{folder / 'nlvr' / 'test.json'}, {folder / 'nlvr' / CLIP}. Expected a VL-T5 datasets/" in message
    assert "lacks 2 file(s) or folder(s)" in message and "karpathy" not in message.split("Expected")[0]
    # The folder itself works as well, and nothing is missing once the files are there.
    _touch(folder, "nlvr/test.json")
    (folder / "nlvr" / CLIP).mkdir(parents=True)
    ImageTextBenchmark(folder, tasks=["vqa", "nlvr"]).check_inputs()


def test_check_inputs_names_a_missing_feature_file_and_every_split_read(tmp_path):
    _touch(tmp_path, "GQA/train.json", "GQA/valid.json", "COCO/dataset_coco.json")
    bench = ImageTextBenchmark(tmp_path, tasks=["gqa", "caption"], features=["features.h5"], n_boxes=None)
    with pytest.raises(FileNotFoundError, match="lacks 2 ") as error:
        bench.check_inputs()
    assert f"{tmp_path / 'GQA' / 'testdev.json'}, {tmp_path / 'features.h5'}." in str(error.value)


def test_paper_profile_resolves_the_data_root_and_follows_the_official_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLLORA_DATA_DIR", str(tmp_path))
    cfg = _compose("experiment=image_text", "method=mtl_lora")
    assert cfg.benchmark.data_dir == str(tmp_path)
    assert (cfg.benchmark.num_beams, cfg.benchmark.task_batches, cfg.trainer.bf16) == (1, True, False)
    assert cfg.trainer.dataloader_num_workers == 4
    bench = instantiate_node(cfg.benchmark)
    assert bench.max_text_length == {"vqa": 20, "gqa": 20, "nlvr": None, "caption": 40}
    assert bench.max_target_length == {"vqa": 10, "gqa": None, "nlvr": None, "caption": 40}
    assert bench.max_new_tokens == {"vqa": 19, "gqa": 19, "nlvr": 19, "caption": 39}
    with pytest.raises(FileNotFoundError, match=r"lacks 12 file\(s\) or folder\(s\) of tasks"):
        bench.check_inputs()  # 8 annotation files (train and test), 4 feature folders (COCO, VG, GQA, nlvr)
    override = _compose("experiment=image_text", f"benchmark.data_dir={tmp_path / 'datasets'}")
    assert instantiate_node(override.benchmark).data_dir == tmp_path / "datasets"
    # The CPU profiles keep what they measured with: mixed batches, 40-token texts and targets.
    cpu = OmegaConf.to_container(_compose("experiment=image_text_cpu").benchmark)
    keys = ("task_batches", "max_text_length", "max_target_length", "num_beams")
    assert [cpu[key] for key in keys] == [False, 40, 40, 1]


def test_per_task_settings_must_name_exactly_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"benchmark.max_text_length must give one value or one per task .* missing "
                                         r"\['nlvr'\], unknown \['okvqa'\]"):  # fmt: skip
        ImageTextBenchmark(tmp_path, tasks=["vqa", "nlvr"], max_text_length={"vqa": 20, "okvqa": 20})


def _task_ids(counts: dict[int, int], seed: int = 0) -> list[int]:
    ids = [task for task, n in counts.items() for _ in range(n)]
    return np.random.default_rng(seed).permutation(ids).tolist()  # tasks interleaved, as after mixing


def test_official_task_batch_sizes_from_the_per_device_batch(tmp_path):
    bench = ImageTextBenchmark(tmp_path, task_batches=True)
    dataset = Dataset.from_dict({"task_ids": _task_ids({0: 5, 1: 5, 2: 5, 3: 5})})
    sampler = bench.train_batch_sampler(dataset, batch_size=512, world_size=1, rank=0, seed=1)
    assert sampler.batch_sizes == {0: 512, 1: 853, 2: 170, 3: 426}  # multitask.py with --batch_size 512
    assert bench.train_batch_sampler(dataset, 300, 1, 0, 1).batch_sizes == {0: 300, 1: 500, 2: 100, 3: 250}
    assert ImageTextBenchmark(tmp_path, task_batches=False).train_batch_sampler(dataset, 512, 1, 0, 1) is None
    with pytest.raises(ValueError, match=r"task batch of nlvr is floor\(2 × 1/3\) = 0 examples"):
        bench.train_batch_sampler(dataset, 2, 1, 0, 1)


def test_task_batches_hold_one_task_and_cover_the_epoch_once():
    task_ids = _task_ids({0: 50, 1: 37, 2: 11, 3: 23})
    sampler = TaskBatchSampler(task_ids, {0: 6, 1: 10, 2: 3, 3: 5}, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 9 + 4 + 4 + 5
    for batch in batches:
        assert len({task_ids[i] for i in batch}) == 1
    sizes = {task: sorted((len(b) for b in batches if task_ids[b[0]] == task), reverse=True) for task in range(4)}
    assert sizes == {0: [6] * 8 + [2], 1: [10] * 3 + [7], 2: [3] * 3 + [2], 3: [5] * 4 + [3]}
    assert sorted(i for b in batches for i in b) == list(range(len(task_ids)))
    assert [task_ids[b[0]] for b in batches] != sorted(task_ids[b[0]] for b in batches)  # tasks interleaved
    assert list(sampler) == batches  # the same epoch again: the same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches and sorted(i for b in sampler for i in b) == list(range(len(task_ids)))


def test_two_ranks_get_disjoint_examples_equal_batch_counts_and_the_same_task_each_step():
    task_ids = _task_ids({0: 51, 1: 36, 2: 11, 3: 24})
    sizes = {0: 6, 1: 10, 2: 3, 3: 5}
    for epoch in (0, 1):
        ranks = [TaskBatchSampler(task_ids, sizes, world_size=2, rank=r, seed=3) for r in (0, 1)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        batches = [list(sampler) for sampler in ranks]
        assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 5 + 2 + 2 + 3
        assert [task_ids[b[0]] for b in batches[0]] == [task_ids[b[0]] for b in batches[1]]
        seen = [{i for b in rank for i in b} for rank in batches]
        assert not seen[0] & seen[1]
        # Each rank half of every task; an odd task drops one example (another each epoch).
        assert len(seen[0] | seen[1]) == len(task_ids) - 2 and len(seen[0]) == len(seen[1]) == 60
