"""The device check's checks (docs/gpu-check.md), in the order they run: the adapter bench, a short training run
through the engine whose loss must fall, and batched generation under mixed task ids against one by one. Each test
fills its entry of gpu-check.json (`check`); the conftest records whether it passed. CPU mode: the same, shrunken."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from .checks import (
    GEN_DTYPES,
    bench_cmd,
    check_bench,
    check_train,
    copy_bench_files,
    generation_check,
    summarize_bench,
    train_cmd,
)
from .device import DeviceCheck, log

UNKNOWN_KWARG = re.compile(r"TrainingArguments\.__init__\(\) got an unexpected keyword argument '(\w+)'")


@pytest.mark.gpu("bench")
def test_bench_runs_every_adapter(device: DeviceCheck, work: Path, check: dict[str, Any]) -> None:
    # cuda: bf16, full shapes; cpu: fp32, --quick. GPU_CHECK_BENCH_SUITES / GPU_CHECK_BENCH_ARGS narrow or extend it.
    folder = work / "bench"
    suites = os.environ.get("GPU_CHECK_BENCH_SUITES", "layer,model")
    extra = os.environ.get("GPU_CHECK_BENCH_ARGS", "").split()
    check.update(device.run("bench", bench_cmd(sys.executable, device.plan, folder, suites, extra), "bench"))
    assert check["rc"] == 0, f"{check['detail']} (see gpu-check.log)"
    found = sorted(folder.glob("*.json"))
    assert found, f"the bench wrote no JSON into {folder} (see gpu-check.log)"
    data = json.loads(found[-1].read_text())
    copy_bench_files(found[-1], device.out)
    check["summary"] = summarize_bench(data)
    ok, check["detail"] = check_bench(data, data["meta"]["quick"])
    assert ok, check["detail"]


@pytest.mark.gpu("train")
def test_training_loss_falls_through_the_engine(device: DeviceCheck, work: Path, check: dict[str, Any]) -> None:
    # The engine as it is first (GLUE, MTL-LoRA, GPU_CHECK_DEEPSPEED=zero2; cuda: bf16). Where this machine's
    # transformers rejects a TrainingArguments keyword the engine passes, `engine_compat` fails and the run is repeated
    # through tests/gpu/train_compat.py (which maps or drops that keyword, recording it), so that the numbers still
    # come back. Where the run fails otherwise with a DeepSpeed config, the same run with deepspeed=none follows, to
    # tell the parts apart (the check still fails).
    ds = os.environ.get("GPU_CHECK_DEEPSPEED", "zero2")
    attempts: list[dict[str, Any]] = []
    compat = False
    while True:
        cmd, run_dir, losses = train_cmd(sys.executable, device.plan, work, device.mode, ds, compat)
        attempt = device.run(f"train ({ds}{', compat' if compat else ''})", cmd, "train")
        if attempt["rc"] == 0:
            attempt.update(check_train(run_dir, losses, device.mode))
        attempt.update(ok=attempt.get("ok", False), deepspeed=ds, compat=compat)
        record = Path(str(run_dir) + ".compat.json")
        if record.exists():
            attempt["compat_shims"] = json.loads(record.read_text())
        attempts.append(attempt)
        unknown = UNKNOWN_KWARG.search(attempt.get("output_tail", ""))
        if unknown and not compat:
            device.result["checks"]["engine_compat"] = {
                "ok": False,
                "detail": f"this machine's transformers {device.result['meta']['versions'].get('transformers')} "
                f"rejects TrainingArguments({unknown.group(1)}=...), which src/mtllora/training_args.py passes: the "
                "engine as it is cannot train here. The train numbers come from the same run through `python -m "
                "tests.gpu.train_compat`, which maps the keyword to its older name (or drops it) and records that in "
                "compat_shims.",
            }
            log(f"engine_compat: {device.result['checks']['engine_compat']['detail']}")
            compat = True
            continue
        if "metrics" not in attempt and ds != "none":
            log(f"train with deepspeed={ds} failed; running the same with deepspeed=none to tell the parts apart")
            ds = "none"
            continue
        break
    final, intended = attempts[-1], attempts[0]["deepspeed"]
    check.update({k: v for k, v in final.items() if k != "ok"})
    check["attempts"] = [{k: v for k, v in a.items() if k not in ("log", "metrics")} for a in attempts]
    fallback = f"deepspeed={intended} failed (see attempts); deepspeed=none: {final['detail']}"
    assert final["deepspeed"] == intended, fallback
    assert final["ok"], final["detail"]


@pytest.mark.gpu("generation")
@pytest.mark.parametrize("dtype", GEN_DTYPES)
def test_batched_generation_equals_one_by_one(
    device: DeviceCheck, work: Path, check: dict[str, Any], dtype: str
) -> None:
    # An MTL-LoRA Llama of SmolLM2-135M's shape (cpu: tiny), random weights, greedy; fp32 with TF32 off.
    with device.time_limit("generation"):
        result = generation_check(device.mode, device.plan, dtype)
    check[dtype] = result
    brief = {k: v for k, v in result.items() if not k.endswith("_tokens") and k != "model"}
    log(f"generation {dtype}: {json.dumps(brief, default=str)}")
    line = (
        f"{dtype}: {result['equal']}/{result['samples']} equal, ties {len(result['ties'])}, max rel diff "
        f"{result['max_rel_diff']:.2g}, control {result['control']}"
    )
    check["detail"] = f"{check['detail']}, {line}" if check.get("detail") else line
    assert not result["mismatches"], (
        f"{len(result['mismatches'])} of {result['samples']} samples differ from one-by-one generation beyond a "
        f"rounding tie: {result['mismatches']}"
    )
    assert result["max_rel_diff"] <= result["tolerance_rel"], (
        f"logits differ by {result['max_rel_diff']:.3g} × their std (tolerance {result['tolerance_rel']})"
    )
    assert result["control_ok"], (
        f"the control (the same batch all on task 0) shows no effect of the task ids: {result['control']}"
    )
