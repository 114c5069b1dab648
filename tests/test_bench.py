"""The benchmark harness (`make bench`): a `--quick` run writes every row, peer and target; the reference
formulations compute the same function as our layers; the harness's timing and memory numbers are sane.

Timing targets are not asserted here: performance is what the benchmark measures, not what tests check."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mtllora.adapters import AdapterConfig, apply_adapters
from speed import harness, main, report
from speed.formulations import OfficialMTLLoRALinear, OfficialMultiLoRALinear, TaskIds
from speed.harness import measure, peak_step_memory
from speed.suites import ADAPTERHUB_ROWS, OUR_METHODS, SingleLinear

from .conftest import randomize_adapters

PEERS = ["peft_lora", "peft_dora", "official_mtl_lora", "official_multilora"]
TRAIN_ROWS = ["base", *(key for key, _, _ in OUR_METHODS), *PEERS, *(key for key, _ in ADAPTERHUB_ROWS)]
INFERENCE_ROWS = ["base", "mtl_lora_merged", "mtl_lora_unmerged", "lora_merged"]
VL_ROWS = [
    "base",
    "lora",
    "mtl_lora",
    "mtl_lora_diag",
    "mtl_lora_interleaved",
    "mtl_lora_interleaved_sorted",
    "peft_lora",
    "official_mtl_lora",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    path = main(["--quick", "--no-adapterhub", "--out", str(out)])
    return path, json.loads(path.read_text())


def test_quick_run_writes_json_markdown_and_plot(quick_run):
    path, data = quick_run
    assert path.name.endswith("-quick.json")
    assert path.with_suffix(".md").read_text().startswith("# Adapter benchmark")
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["meta"]["quick"] is True and data["meta"]["repeats"] == 3


def test_quick_run_has_every_row_with_positive_timings(quick_run):
    _, data = quick_run
    kinds = [(s["kind"], s["tags"]) for s in data["suites"]]
    assert kinds == [
        ("train", ["train", "layer", "large"]),
        ("train", ["train", "layer"]),
        ("train", ["train", "model"]),
        ("train", ["train", "model"]),
        ("inference", ["inference", "model"]),
        ("inference", ["inference", "model"]),
        ("train", ["train", "layer", "vl"]),
        ("train", ["train", "model", "vl"]),
    ]
    for suite in data["suites"]:
        expected = VL_ROWS if "vl" in suite["tags"] else TRAIN_ROWS if suite["kind"] == "train" else INFERENCE_ROWS
        assert [row["key"] for row in suite["rows"]] == expected, suite["name"]
        for row in suite["rows"]:
            if row["key"].startswith("adapterhub_"):
                # Never dropped: listed with the reason it did not run.
                reason = "skipped (--no-adapterhub)" if "model" in suite["tags"] else "AdapterHub adapts layers"
                assert row["status"].startswith(f"not run: {reason}"), (suite["name"], row["status"])
                continue
            assert row["status"] == "ok", (suite["name"], row["key"], row["status"])
            samples = row["samples_ms"]
            assert len(samples) == 3 and all(math.isfinite(t) and t > 0 for t in samples)
            assert row["median_ms"] > 0 and row["iters_per_sample"] >= 1
            assert row["peak_mem_bytes"] >= 0
            assert row["vs_base"] > 0
            if suite["kind"] == "train" and row["group"] != "floor":
                assert row["trainable_params"] > 0


def test_quick_run_lists_every_target(quick_run):
    _, data = quick_run
    entries = {(t["target"], t["suite"]): t for t in data["targets"]}
    for target in report.TARGETS:
        judged = [t for (key, _), t in entries.items() if key == target.key and t["result"] in ("PASS", "MISS")]
        in_scope = [s for s in data["suites"] if target.applies_to(s["tags"])]
        assert in_scope, target.key
        for suite in in_scope:
            assert (target.key, suite["name"]) in entries, (target.key, suite["name"])
        if target.key == "mtl_vs_adapterhub":
            assert not judged
            assert all(
                entries[(target.key, s["name"])]["result"].startswith("not run: adapterhub_mtl_lora") for s in in_scope
            )
    for suite in (s for s in data["suites"] if "vl" in s["tags"]):
        # The VL suites judge MTL-LoRA against LoRA; the peers' targets show there as info at most.
        assert entries[("mtl_vs_lora_total", suite["name"])]["result"] in ("PASS", "MISS")
        assert entries[("mtl_memory", suite["name"])]["result"] in ("PASS", "MISS")
        assert entries.get(("lora_vs_peft", suite["name"]), {"result": "info"})["result"] == "info"
    markdown = (quick_run[0]).with_suffix(".md").read_text()
    assert "| MTL-LoRA ≤ 0.8× AdapterHub MTL-LoRA (each ÷ its own LoRA) |" in markdown


def _suite(**medians: float) -> dict:
    rows = [
        {"key": key, "status": "ok", "median_ms": ms, "samples_ms": [ms - 1, ms, ms + 1], "peak_mem_bytes": 100}
        for key, ms in medians.items()
    ]
    return {"name": "s", "kind": "train", "tags": ["train", "layer"], "rows": rows}


def test_targets_use_ratios_of_medians_and_overheads():
    suite = _suite(base=100.0, lora=110.0, peft_lora=130.0, mtl_lora=112.0, official_mtl_lora=150.0)
    report.add_ratios(suite)
    results = {t["target"]: t for t in report.evaluate_targets([suite])}
    assert results["lora_vs_peft"]["value"] == pytest.approx(10 / 30)
    assert results["lora_vs_peft"]["result"] == "PASS"
    assert results["mtl_vs_lora_overhead"]["value"] == pytest.approx(12 / 10)
    assert results["mtl_vs_official"]["value"] == pytest.approx(112 / 150)
    assert results["mtl_vs_official"]["zero_overhead_bound"] == pytest.approx(100 / 150)
    low, high = results["mtl_vs_official"]["ci95"]  # bootstrap over each row's samples
    assert 111 / 151 <= low <= 112 / 150 <= high <= 113 / 149
    assert "ci95" not in results["mtl_memory"] and results["mtl_memory"]["value"] == 1.0
    assert results["multilora_vs_lora24"]["result"] == "not run: multilora: no such row"
    # The DoRA targets apply to the large layer only; elsewhere they are not judged.
    assert "dora_vs_lora" not in results


def test_target_with_overhead_within_noise_is_not_judged():
    suite = _suite(base=100.0, lora=99.0, peft_lora=120.0)
    report.add_ratios(suite)
    results = {t["target"]: t for t in report.evaluate_targets([suite])}
    assert results["lora_vs_peft"]["result"].startswith("not run: lora overhead is -1")


def test_official_formulations_compute_our_functions():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    ids = torch.tensor([2, 0, 1, 2])
    for lambda_type in ("full", "diagonal"):
        ours = apply_adapters(
            SingleLinear(nn.Linear(16, 12).double()),
            AdapterConfig(
                method="mtl_lora",
                r=4,
                alpha=8,
                target_modules=["lin"],
                num_tasks=3,
                num_up=2,
                temperature=0.5,
                lambda_type=lambda_type,
            ),
        )
        randomize_adapters(ours)
        layer = ours.lin
        box = TaskIds(ids)
        official = OfficialMTLLoRALinear(layer.base_layer, 4, 8, 3, 2, 0.5, lambda_type, box).double()
        with torch.no_grad():
            official.lora_A.copy_(layer.lora_A[None])
            official.lora_lambdas.copy_(layer.lora_lambda)
            official.lora_B.copy_(layer.lora_B)
            official.lora_B_w.copy_(layer.lora_B_weight)
            torch.testing.assert_close(official(x), ours(x, task_ids=ids))

    ours = apply_adapters(
        SingleLinear(nn.Linear(16, 12).double()),
        AdapterConfig(method="multilora", r=4, alpha=8, target_modules=["lin"], num_modules=3),
    )
    randomize_adapters(ours)
    official = OfficialMultiLoRALinear(ours.lin.base_layer, 4, 8, 3).double()
    with torch.no_grad():
        for name in ("lora_A", "lora_B", "lora_scale"):
            getattr(official, name).copy_(getattr(ours.lin, name))
        torch.testing.assert_close(official(x), ours(x))


def test_harness_times_rows_interleaved_and_rotated():
    calls = []
    steps = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    stats = measure(steps, {"a": 1.0, "b": 1.0}, 3, min_sample_s=0.0)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # one rotation per repeat; no retakes without a budget
    assert all(len(s.samples_s) == 3 and s.median_s > 0 and s.iters_per_sample == 1 for s in stats.values())
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure(steps, {"a": 1.0, "b": 1.0}, 0, min_sample_s=0.0)


def test_harness_retakes_disturbed_samples_within_budget(monkeypatch):
    outcomes = iter([(0.5, True), (0.1, False), (0.2, True), (0.3, True), (0.4, True)])
    monkeypatch.setattr(harness, "timed_sample", lambda step, number: next(outcomes))
    stats = measure({"a": lambda: None}, {"a": 1.0}, 2, min_sample_s=0.0, retake_budget_s=0.8)
    # Repeat 1: disturbed, retaken, clean. Repeat 2: disturbed, retaken once more (0.5 + 0.2 fits in 0.8), then
    # the next retake would exceed the budget, so the disturbed 0.3 is kept and counted.
    assert stats["a"].samples_s == [0.1, 0.3]
    assert (stats["a"].retaken, stats["a"].disturbed) == (2, 1)


def test_peak_step_memory_counts_what_a_step_allocates_on_cpu():
    def allocate() -> None:
        big = torch.ones(1 << 20)  # 4 MiB, freed before the step returns
        del big

    assert peak_step_memory(allocate, torch.device("cpu")) >= 4 << 20


def test_the_interleaved_paths_benchmark_runs_every_path(tmp_path, monkeypatch):
    """`python -m speed.interleaved --quick`: every row timed and measured at both tiny shapes; the forced row ran
    the sorted path (an order handed to the grouped Function), the ordered batch its own runs (no order)."""
    from mtllora.adapters import mtl_lora
    from speed import interleaved

    orders = []
    apply = mtl_lora._GroupedUpProjection.apply
    monkeypatch.setattr(mtl_lora._GroupedUpProjection, "apply", lambda *a: orders.append(a[3] is not None) or apply(*a))
    threads = torch.get_num_threads()
    results = interleaved.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "interleaved.json")])
    assert torch.get_num_threads() == threads  # measured on one thread, the caller's count restored
    data = json.loads((tmp_path / "interleaved.json").read_text())["results"]
    assert data == json.loads(json.dumps(results)) and len(data) == 2
    for res in data:
        assert set(res["seconds"]) == set(res["peak_bytes"]) == set(interleaved.ROWS)
        assert all(value > 0 for value in res["seconds"].values())
        assert res["default_path"] == "gathered"  # 6·4·32 gathered elements: far under 2^20
    assert True in orders and False in orders
