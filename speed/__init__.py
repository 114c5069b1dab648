"""Speed harness (`make bench`, `python -m speed` from the repository root): every adapter method's speed and memory
against its peers in one run, with ratios and targets. Not part of the installed package (as PEFT's
`method_comparison/`): it measures the library from outside.

Modules: `harness` (timing and peak memory, torch-only so the AdapterHub worker can import it), `formulations`
(the official MTL-LoRA and MultiLoRA formulations, written from docs/method.md), `suites` (workloads and rows),
`adapterhub` + `adapterhub_worker` (the AdapterHub peer in its own venv), `report` (ratios, targets, JSON,
markdown, PNG), `cli` (the command), `generation` (batched generation against the official evaluator's loop,
`python -m speed.generation`).
"""

from .cli import main

__all__ = ["main"]
