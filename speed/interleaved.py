"""MTL-LoRA's paths for a batch whose tasks are interleaved, against LoRA, at several layer shapes: the evidence
behind the layer's rule for sorting such a batch by task (`mtllora.adapters.mtl_lora.SORT_MAX_TOKENS_PER_RANK`,
`SORT_MIN_GATHERED`).

    python -m speed.interleaved [--repeats 9] [--out results/bench/interleaved.json]   # from the repository root

One adapted d×d linear layer, forward + backward, fp32 on the CPU, one thread. Rows: LoRA; MTL-LoRA on the batch
ordered by task (grouped runs); interleaved on the gathered path; interleaved sorted inside the layer (forced, the
rule's thresholds lifted); and the path the rule picks. Time is each step's thread CPU time (steadier than wall time
on a shared machine), median of rotated repeats, ÷ LoRA's; memory the peak bytes allocated during a step
(`speed.harness.peak_step_memory`) ÷ LoRA's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn

from mtllora.adapters import apply_adapters, mtl_lora

from .harness import peak_step_memory, perturb_trainable
from .suites import SingleLinear, mixed_task_ids, our_config, task_ordered_ids

# (d, r, T, batch, tokens per sample): GLUE's MiniLM layer at r 8, the VL recipe's 768 layer at r 64 over batches and
# lengths around the thresholds (2·r tokens, 2^20 gathered elements).
SHAPES = (
    (384, 8, 5, 16, 8),
    (384, 8, 5, 16, 40),
    (768, 64, 4, 16, 56),
    (768, 64, 4, 64, 56),
    (768, 64, 4, 64, 128),
    (768, 64, 4, 64, 256),
    (768, 64, 4, 512, 56),
)
QUICK_SHAPES = ((32, 4, 3, 6, 4), (32, 4, 3, 6, 16))
ROWS = ("lora", "ordered", "gathered", "sorted", "default")


def _model(dim: int, rank: int, tasks: int, method: str, **options: Any) -> nn.Module:
    torch.manual_seed(0)
    mtl = {"num_tasks": tasks, "num_up": 2, "temperature": 0.8} if method == "mtl_lora" else {}
    config = our_config({"method": method, "r": rank, "alpha": 16, **mtl, **options}, ["lin"])
    model = apply_adapters(SingleLinear(nn.Linear(dim, dim)).requires_grad_(False), config)
    perturb_trainable(model, seed=0)
    return model


@contextlib.contextmanager
def _always_sorted() -> Iterator[None]:
    """Lifts the rule's thresholds, so that every interleaved batch of short samples is sorted."""
    with (
        mock.patch.object(mtl_lora, "SORT_MAX_TOKENS_PER_RANK", mtl_lora.GATHER_MIN_TOKENS_PER_RANK),
        mock.patch.object(mtl_lora, "SORT_MIN_GATHERED", 0),
    ):
        yield


def measure_shape(dim: int, rank: int, tasks: int, batch: int, tokens: int, repeats: int) -> dict[str, Any]:
    """Returns each row's median thread CPU seconds and peak bytes at one shape, and the path the rule picks."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, dim, generator=gen, requires_grad=True)
    grad = torch.randn(batch, tokens, dim, generator=gen)
    cpu = torch.device("cpu")
    interleaved, ordered = mixed_task_ids(batch, cpu, tasks), task_ordered_ids(batch, cpu, tasks)
    lora, mtl, gathered = (
        _model(dim, rank, tasks, "lora"),
        _model(dim, rank, tasks, "mtl_lora"),
        _model(dim, rank, tasks, "mtl_lora", sort_tasks=False),
    )

    def step(model: nn.Module, ids: torch.Tensor | None, context: Callable = contextlib.nullcontext) -> Callable:
        def run() -> None:
            with context():
                model(x, **({} if ids is None else {"task_ids": ids})).backward(grad)

        return run

    steps = {
        "lora": step(lora, None),
        "ordered": step(mtl, ordered),
        "gathered": step(gathered, interleaved),
        "sorted": step(mtl, interleaved, _always_sorted),
        "default": step(mtl, interleaved),
    }
    memory = {}
    for name, run in steps.items():
        run()  # first call outside the timing
        memory[name] = peak_step_memory(run, torch.device("cpu"))
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.thread_time()
            steps[name]()
            seconds[name].append(time.thread_time() - start)
    rule = mtl_lora._grouping(interleaved, tokens, rank, dim, tasks, sort_tasks=True)
    return {
        "shape": {"dim": dim, "r": rank, "tasks": tasks, "batch": batch, "tokens": tokens},
        "gathered_elements": batch * rank * dim,
        "default_path": "gathered" if rule is None else "sorted",
        "seconds": {name: statistics.median(values) for name, values in seconds.items()},
        "peak_bytes": memory,
    }


def markdown(results: Sequence[dict[str, Any]]) -> str:
    """Returns the table: time and peak memory of every row ÷ LoRA's, per shape."""
    lines = [
        "| d | r | T | batch × tokens | batch·r·d | default | "
        + " | ".join(f"{row} time / memory" for row in ROWS[1:])
        + " |",
        "|" + "---|" * (6 + len(ROWS) - 1),
    ]
    for res in results:
        s, time_, peak = res["shape"], res["seconds"], res["peak_bytes"]
        cells = [f"{time_[row] / time_['lora']:.3f} / {peak[row] / peak['lora']:.3f}" for row in ROWS[1:]]
        head = f"| {s['dim']} | {s['r']} | {s['tasks']} | {s['batch']} × {s['tokens']} | {res['gathered_elements']:,} "
        lines.append(head + f"| {res['default_path']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Measures every shape (`--quick`: two tiny ones), prints the table, and writes the JSON with `--out`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed steps per row and shape (median)")
    parser.add_argument("--quick", action="store_true", help="two tiny shapes (for tests)")
    parser.add_argument("--out", type=Path, default=None, help="write every number as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [measure_shape(*shape, repeats=args.repeats) for shape in (QUICK_SHAPES if args.quick else SHAPES)]
    finally:
        torch.set_num_threads(threads)  # a caller's threads (the test suite's) stay as they were
    print(markdown(results), end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
