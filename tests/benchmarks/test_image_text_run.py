"""Image-text end to end on the synthetic set at a tiny size: the CLI's shrunken path (features, tiny VL-BART,
training under task ids in one-task batches, batched generation, every metric), evaluation independent of the batch
size, the training loader's batches (one task each; the same in worker processes), clear errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, Trainer, TrainingArguments

from mtllora.adapters import apply_adapters
from mtllora.benchmarks.image_text import ImageTextBenchmark
from mtllora.benchmarks.image_text_data import OFFICIAL_SPLITS, TASKS, MissingImageFeaturesError, input_text, load_task
from mtllora.engine import AdapterTrainer
from mtllora.models import ModelConfig

from ..conftest import make_config, randomize_adapters
from ..test_train import ENV, REPO, cli


def _module(name: str, *args: str) -> None:
    command = [sys.executable, "-m", name, *args]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The synthetic set (8 training and 6 test examples per task), pixel features and a tiny VL-BART."""
    root = tmp_path_factory.mktemp("image-text")
    _module(
        "mtllora.benchmarks.image_text_synthetic", "--out", str(root), "--train-per-task", "8", "--eval-per-task", "6"
    )
    images = [str(root / folder / "images") for folder in ("COCO", "VG", "GQA", "nlvr")]
    _module(
        "mtllora.benchmarks.image_text_features",
        "--dim",
        "16",
        "--output",
        str(root / "features.h5"),
        "--images",
        *images,
    )
    model = ["--feat-dim", "16", "--d-model", "32", "--out", str(root / "m")]
    _module("mtllora.vl_bart_tiny", "--data", str(root), *model)
    return root


def test_tiny_vl_bart_vocabulary_covers_every_input_and_target(synthetic):
    """Every word the benchmark feeds or trains on has a token (NLVR2's "false" comes from an integer label, not from
    the JSON text), and nothing else does (image ids, question ids)."""
    tokenizer = AutoTokenizer.from_pretrained(synthetic / "m")
    records = [
        record
        for task, splits in OFFICIAL_SPLITS.items()
        for split in dict.fromkeys(splits.values())
        for record in load_task(task, split, synthetic).records
    ]
    texts = [text for record in records for text in (input_text(record), *record.targets)]
    assert {"true", "false"} <= set(texts)
    assert all(tokenizer.unk_token_id not in ids for ids in tokenizer(texts)["input_ids"])
    image_ids = {image for record in records for image in record.image_ids if not image.isdigit()}  # VG: "1", ...
    assert image_ids and not image_ids & set(tokenizer.get_vocab())


def test_shrunken_image_text_run_scores_every_task(synthetic, tmp_path):
    result = cli(
        [
            "experiment=image_text_ci",
            "method=mtl_lora",
            "benchmark.task_batches=true",
            "trainer.max_steps=-1",
            "trainer.num_train_epochs=1",
            f"benchmark.data_dir={synthetic}",
            f"model.name_or_path={synthetic / 'm'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # One epoch of one-task batches: per-device 8 → vqa 8, gqa 13, nlvr 2, caption 6 examples a batch.
    sizes = {"vqa": 8, "gqa": 13, "nlvr": 2, "caption": 6}
    counts = {task: len(load_task(task, OFFICIAL_SPLITS[task]["train"], synthetic).records) for task in TASKS}
    steps = sum(-(-counts[task] // sizes[task]) for task in TASKS)
    assert steps != -(-sum(counts.values()) // 8)  # mixed batches would take another number of steps
    assert metrics["task_order"] == list(TASKS) and metrics["train"]["steps"] == steps
    assert metrics["config"]["method"]["adapter"]["num_tasks"] == 4
    assert set(metrics["tasks"]["caption"]) == {"CIDEr", "BLEU-4"}
    for task in ("vqa", "gqa", "nlvr"):
        assert 0.0 <= metrics["tasks"][task]["accuracy"] <= 1.0
    scores = [100 * metrics["tasks"][t]["accuracy"] for t in ("vqa", "gqa", "nlvr")]
    assert metrics["average"] == pytest.approx((sum(scores) + 100 * metrics["tasks"]["caption"]["CIDEr"]) / 4)
    rows = [json.loads(line) for line in (run_dir / "predictions" / "nlvr.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(row["images"]) == 2 for row in rows)


def test_batched_evaluation_equals_one_by_one(synthetic, tmp_path):
    results = {}
    for batch_size in (12, 1):
        bench = ImageTextBenchmark(
            synthetic, features=["features.h5"], n_boxes=None, eval_batch_size=batch_size, max_new_tokens=5, num_beams=1
        )
        model, tokenizer = bench.build_model(ModelConfig(name="tiny", name_or_path=str(synthetic / "m")))
        torch.manual_seed(0)  # the same adapter initialisation for both batch sizes
        apply_adapters(model, make_config("mtl_lora", num_tasks=4, target_modules=["q_proj", "v_proj"]))
        randomize_adapters(model, std=0.5)
        out = tmp_path / f"batch{batch_size}"
        args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])
        metrics = bench.evaluate(Trainer(model=model, args=args), tokenizer)
        results[batch_size] = (metrics, {t: (out / "predictions" / f"{t}.jsonl").read_text() for t in TASKS})
    assert results[12] == results[1]
    predictions = [json.loads(line)["prediction"] for text in results[12][1].values() for line in text.splitlines()]
    assert len(set(predictions)) > 1  # the model says different things to different examples


def test_missing_features_and_data_are_named_up_front(synthetic, tmp_path):
    import h5py

    partial = tmp_path / "partial.h5"
    with h5py.File(synthetic / "features.h5", "r") as source, h5py.File(partial, "w") as target:
        for image_id in list(source)[:1]:
            source.copy(image_id, target)
    bench = ImageTextBenchmark(synthetic, features=[str(partial)], n_boxes=None)
    with pytest.raises(MissingImageFeaturesError, match=r"vqa train: \d+ of \d+ image ids have no features in"):
        bench.records("vqa", "train", None, seed=0)
    with pytest.raises(ValueError, match=r"image_text needs a VL-T5 datasets/ folder \(benchmark.data_dir\)"):
        ImageTextBenchmark(None)
    with pytest.raises(ValueError, match=r"tasks must be distinct names from \['vqa', 'gqa', 'nlvr', 'caption'\]"):
        ImageTextBenchmark(synthetic, tasks=["vqa", "okvqa"], features=["features.h5"])


def _bench(synthetic: Path, **overrides) -> ImageTextBenchmark:
    return ImageTextBenchmark(synthetic, features=["features.h5"], n_boxes=None, **overrides)


def _loader_batches(synthetic: Path, tmp_path: Path, workers: int, epoch: int = 0) -> list[dict[str, torch.Tensor]]:
    """The batches of one epoch of the Trainer's training loader (task batches, per-device batch 6)."""
    bench = _bench(synthetic, task_batches=True, max_train_samples=7)
    model, tokenizer = bench.build_model(ModelConfig(name="tiny", name_or_path=str(synthetic / "m")))
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=6,
        dataloader_num_workers=workers, remove_unused_columns=False,
    )  # fmt: skip
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=bench.train_dataset(tokenizer), data_collator=bench.collator(tokenizer),
        benchmark=bench,
    )  # fmt: skip
    loader = trainer.get_train_dataloader()
    loader.set_epoch(epoch)  # as the Trainer does every epoch
    return list(loader)


def test_training_loader_yields_one_task_batches_of_the_official_sizes(synthetic, tmp_path):
    batches = _loader_batches(synthetic, tmp_path, workers=0)
    sizes = {}
    for batch in batches:
        assert len(set(batch["task_ids"].tolist())) == 1
        sizes.setdefault(int(batch["task_ids"][0]), []).append(len(batch["task_ids"]))
    # 7 training records per task (max_train_samples); per-device 6 → vqa 6, gqa 10, nlvr 2, caption 5.
    assert sizes == {0: [6, 1], 1: [7], 2: [2, 2, 2, 1], 3: [5, 2]}
    order = [int(b["task_ids"][0]) for b in batches]
    assert order != sorted(order)
    assert order != [int(b["task_ids"][0]) for b in _loader_batches(synthetic, tmp_path, workers=0, epoch=1)]


def test_worker_processes_yield_the_same_batches(synthetic, tmp_path):
    """Features are read from HDF5 in the workers (each opens its own file; the parent's handle is open at fork)."""
    in_process, in_workers = (_loader_batches(synthetic, tmp_path, workers=n) for n in (0, 2))
    assert len(in_process) == len(in_workers) == 9
    for a, b in zip(in_process, in_workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Mixed batches through a plain DataLoader, as the Trainer's default path builds them.
    bench = _bench(synthetic)
    tokenizer = AutoTokenizer.from_pretrained(synthetic / "m")
    dataset, collator = bench.train_dataset(tokenizer), bench.collator(tokenizer)
    plain, forked = ([*DataLoader(dataset, batch_size=5, collate_fn=collator, num_workers=n)] for n in (0, 2))
    assert len(plain) == len(forked) == 8
    for a, b in zip(plain, forked, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_collator_pickles_without_open_files(synthetic):
    """A worker started by spawn or forkserver gets a pickled copy, which opens its own HDF5 files."""
    bench = _bench(synthetic)
    tokenizer = AutoTokenizer.from_pretrained(synthetic / "m")
    dataset, collator = bench.train_dataset(tokenizer), bench.collator(tokenizer)
    examples = [dataset[i] for i in range(4)]
    expected = collator(examples)  # the features' file is open now
    copy = pickle.loads(pickle.dumps(collator))
    assert all(torch.equal(expected[k], v) for k, v in copy(examples).items())


def test_per_task_lengths_cut_training_and_evaluation_inputs_alike(synthetic):
    tokenizer = AutoTokenizer.from_pretrained(synthetic / "m")
    bench = _bench(synthetic, max_text_length={"vqa": 4, "gqa": None, "nlvr": None, "caption": 40}, max_target_length=2)
    vqa, gqa = (bench.records(task, "test", None, seed=0)[0] for task in ("vqa", "gqa"))
    ids = bench._encode(tokenizer, vqa)
    assert len(ids) == 4 and ids == [*tokenizer(input_text(vqa))["input_ids"][:3], tokenizer.eos_token_id]
    assert bench._eval_text(tokenizer, vqa) == tokenizer.decode(ids, skip_special_tokens=True) != input_text(vqa)
    assert bench._eval_text(tokenizer, gqa) == input_text(gqa)  # no limit: the text as it is
    labels = bench.train_dataset(tokenizer)["labels"]
    assert max(len(label) for label in labels) == 2
