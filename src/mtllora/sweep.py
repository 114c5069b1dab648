"""The end of a Hydra multirun (basic or submitit launcher, grid or Optuna sweeper): one line per run with its name,
average and directory, read from the runs' metrics.json (configured in configs/hydra/default.yaml `callbacks:`).

Each job appends its number and run directory to `<hydra.sweep.dir>/runs.tsv` when it ends, in its own process
(another one under submitit, maybe on another node), so the multirun's last callback finds every run of this sweep
and only those; the file stays beside the sweep's multirun.yaml as its record of where the runs went.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .rundir import METRICS_FILE

RUNS_FILE = "runs.tsv"


def sweep_runs(sweep_dir: Path) -> list[Path]:
    """Returns the run directories a multirun's jobs recorded in `sweep_dir`, in job order ([] when none did)."""
    path = sweep_dir / RUNS_FILE
    if not path.exists():
        return []
    rows = [line.split("\t", 1) for line in path.read_text().splitlines() if line]
    return [Path(directory) for _, directory in sorted(rows, key=lambda row: int(row[0]))]


def summary_lines(run_dirs: list[Path]) -> list[str]:
    """Returns one line per run: its name, `average <Avg ×100>` from its metrics.json (or why there is none) and its
    directory (relative to the working directory when inside it)."""
    width = max((len(d.name) for d in run_dirs), default=0)
    lines = []
    for run_dir in run_dirs:
        metrics = run_dir / METRICS_FILE
        result = f"average {json.loads(metrics.read_text())['average']:6.2f}" if metrics.exists() else "no metrics.json"
        shown = os.path.relpath(run_dir) if run_dir.is_relative_to(Path.cwd()) else str(run_dir)
        lines.append(f"{run_dir.name:<{width}}  {result}  {shown}")
    return lines


class MultirunSummary(Callback):
    """Hydra callback: records each job's run directory, and prints the summary of all of them at the end."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with open(sweep_dir / RUNS_FILE, "a") as file:  # one short append per job: whole lines, whatever the order
            file.write(f"{config.hydra.job.num}\t{config.hydra.runtime.output_dir}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sweep_runs(sweep_dir)
        print(f"[mtllora] multirun of {len(runs)} run(s); the sweep's own files are in {sweep_dir}")
        for line in summary_lines(runs):
            print(f"[mtllora]   {line}")
