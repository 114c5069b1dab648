"""Adapter benchmark (`make bench`): every method against its peers in one run, with ratios and targets.

Modules: `harness` (timing and peak memory, torch-only so the AdapterHub worker can import it), `formulations`
(the official MTL-LoRA and MultiLoRA formulations, written from the spec), `suites` (workloads and rows),
`adapterhub` + `adapterhub_worker` (the AdapterHub peer in its own venv), `report` (ratios, targets, JSON,
markdown, PNG), `cli` (the command).
"""

from .cli import main

__all__ = ["main"]
