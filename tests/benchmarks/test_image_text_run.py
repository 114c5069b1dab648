"""Image-text end to end on the synthetic set at a tiny size: the CLI's shrunken path (features, tiny VL-BART,
training under task ids, batched generation, every metric), evaluation independent of the batch size, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments

from mtllora.adapters import apply_adapters
from mtllora.benchmarks.image_text import ImageTextBenchmark
from mtllora.benchmarks.image_text_data import OFFICIAL_SPLITS, TASKS, MissingImageFeaturesError, input_text, load_task
from mtllora.models import ModelConfig

from ..conftest import make_config, randomize_adapters
from ..test_train import ENV, REPO, cli


def _script(name: str, *args: str) -> None:
    command = [sys.executable, str(REPO / "scripts" / name), *args]
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The synthetic set (8 training and 6 test examples per task), pixel features and a tiny VL-BART."""
    root = tmp_path_factory.mktemp("image-text")
    _script("make-synthetic-image-text.py", "--out", str(root), "--train-per-task", "8", "--eval-per-task", "6")
    images = [str(root / folder / "images") for folder in ("COCO", "VG", "GQA", "nlvr")]
    _script("extract-image-features.py", "--dim", "16", "--output", str(root / "features.h5"), "--images", *images)
    model = ["--feat-dim", "16", "--d-model", "32", "--out", str(root / "m")]
    _script("make-tiny-vl-bart.py", "--data", str(root), *model)
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
            f"benchmark.data_dir={synthetic}",
            f"model.name_or_path={synthetic / 'm'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "runs").rglob("metrics.json")).parent
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task_order"] == list(TASKS) and metrics["train"]["steps"] == 3
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
