"""Run directories: one configuration per directory, and configs that say nothing about the machine they ran on.

A run directory is named from the config (`<benchmark>-<method>-<model>-s<seed>`) plus the command-line overrides
that change results (`run_suffix`), and keeps the run's config in `config.json`. A later run that would reuse the
directory with a different configuration (or resume another configuration's checkpoint) is refused with the keys
that differ, so no `metrics.json` is ever overwritten by another configuration's results.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
STORED_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"

# Keys that do not change what a run computes: where things live, how it is logged and checkpointed, how eval
# batches are sized. Left out of run-directory names and of the config comparison. A prefix ends in ".".
RESULT_NEUTRAL_KEYS = (
    "paths.",
    "logger",
    "hydra.",
    "hparams_search",  # picks the sweeper; each trial's own overrides name its directory
    "run_name",
    "model.name_or_path",
    "benchmark.data_dir",
    "benchmark.cache_dir",
    "trainer.resume",
    "trainer.logging_steps",
    "trainer.save_steps",
    "trainer.save_total_limit",
    "trainer.per_device_eval_batch_size",
    "trainer.dataloader_num_workers",
    "trainer.callbacks",
)
# Overrides already spelled out in the run name (or choosing the profile that names the parent directory).
NAMED_KEYS = ("experiment", "benchmark", "method", "model", "seed", "profile")


class RunDirError(ValueError):
    """A run directory holds another configuration's run."""


def _is_neutral(key: str) -> bool:
    return any(key == k or key.startswith(k if k.endswith(".") else k + ".") for k in RESULT_NEUTRAL_KEYS)


def run_suffix(overrides: list[str]) -> str:
    """Returns `,key=value,...` for the command-line overrides that change results and are not already part of
    the run name (e.g. `,trainer.learning_rate=0.001`), or "" when there are none; characters that cannot be in a
    directory name become `_`."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in NAMED_KEYS or _is_neutral(key):
            continue
        kept.append(re.sub(r"[/\\:\s]", "_", override.lstrip("+~")))
    return "".join("," + item for item in sorted(kept))


def suffix_overrides(run_name: str) -> list[str]:
    """Returns the overrides `run_suffix` appended to a run name, e.g. ["trainer.learning_rate=0.001"] for
    `glue-lora-minilm-l6-s1,trainer.learning_rate=0.001`; [] for a name without any. A comma inside brackets,
    braces or quotes (`benchmark.tasks=[cola,rte]`) belongs to its value."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(run_name):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(run_name[start:i])
            start = i + 1
    items.append(run_name[start:])
    return items[1:]  # the first item is the name itself


def hydra_run_suffix() -> str:
    """`run_suffix` of the current Hydra job's overrides; "" outside a Hydra app (e.g. configs made by compose)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    return run_suffix(list(HydraConfig.get().overrides.task))


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def portable_config(cfg: DictConfig) -> dict[str, Any]:
    """Returns the resolved config as plain data with no machine-specific path in it: an absolute path inside the
    repository or inside the data directory (`paths.data_dir`) becomes relative to the repository
    (`results/runs/...`, `../shared/data`); any other absolute path (an installed package's folder included) is
    shown as its configured value (`${pypi_model_path:...}`, `${hydra:runtime.output_dir}`) or, for a literal one,
    as `<external>/<last part>`. Containment is decided on real paths (symlinks resolved), component by component."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    raw = OmegaConf.to_container(cfg, resolve=False)
    data_dir = (resolved.get("paths") or {}).get("data_dir")
    portable_roots = [REPO_ROOT] + ([Path(os.path.realpath(data_dir))] if data_dir else [])

    def fix(value: Any, configured: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v, configured.get(k) if isinstance(configured, dict) else None) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v, None) for v in value]
        if not (isinstance(value, str) and os.path.isabs(value)):
            return value
        real = Path(os.path.realpath(value))
        if "site-packages" not in real.parts and any(real.is_relative_to(root) for root in portable_roots):
            return os.path.relpath(real, REPO_ROOT)
        if isinstance(configured, str) and "${" in configured:
            return configured
        return f"<external>/{Path(os.path.normpath(value)).name}"

    return fix(resolved, raw)


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Returns {dotted key: value} of the settings that change a run's results (the neutral keys left out)."""
    return {key: value for key, value in _flatten(config) if not _is_neutral(key)}


def stored_config(output_dir: Path) -> dict[str, Any] | None:
    """Returns the config a run directory belongs to: its config.json, else the one inside its metrics.json
    (committed results keep only metrics.json), else None."""
    if (output_dir / STORED_CONFIG_FILE).exists():
        return json.loads((output_dir / STORED_CONFIG_FILE).read_text())
    if (output_dir / METRICS_FILE).exists():
        return json.loads((output_dir / METRICS_FILE).read_text()).get("config")
    return None


def claim_run_dir(output_dir: Path, config: Mapping[str, Any], resume: bool, write: bool = True) -> None:
    """Checks `config` (a `portable_config`) against the one stored in the run directory and, if `write` (the main
    process), stores it there; raises RunDirError naming every differing key when the directory belongs to another
    configuration. Every rank checks, so that all of them stop together."""
    stored_file = output_dir / STORED_CONFIG_FILE
    mine = result_config(config)
    stored = stored_config(output_dir)
    if stored is not None:
        theirs = result_config(stored)
        differing = sorted(set(mine) ^ set(theirs) | {k for k in set(mine) & set(theirs) if mine[k] != theirs[k]})
        if differing:
            shown = "; ".join(
                f"{k}: {theirs.get(k, '<unset>')!r} there, {mine.get(k, '<unset>')!r} now" for k in differing
            )
            action = "resume" if resume else "write into"
            raise RunDirError(
                f"refusing to {action} {output_dir}: it holds a run of another configuration ({shown}). Give this "
                f"run its own directory (run_name=... or an override on the command line), or delete that one."
            )
    if not write:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = stored_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(stored_file)
