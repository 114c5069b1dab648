"""Run directories: one configuration per directory, and configs that say nothing about the machine they ran on.

A run directory is named from the config (`<benchmark>-<method>-<model>-s<seed>`) plus the command-line overrides
that change results (`run_suffix`), and keeps the run's config in `config.json`. A later run that would reuse the
directory with a different configuration (or resume another configuration's checkpoint) is refused with the keys
that differ, so no `metrics.json` is ever overwritten by another configuration's results.

The inputs a run read identify it too, by content rather than by machine path (`inputs.json`, and metrics.json's
"inputs"): a fingerprint of every data file its benchmark reads (`Benchmark.data_files`) and of its base model
(`model_fingerprint`). A rerun or resume on other data or another base model is refused naming the files that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .fileio import write_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
STORED_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
INPUTS_FILE = "inputs.json"
# Files up to this size are hashed whole (SHA-256 reads ~850 MB/s: the shared GLUE copy in 0.02 s, commonsense in
# 0.08 s); a larger one (image features, 7B weight shards) by its size and SAMPLE_BYTES at its start, middle and end.
FULL_HASH_BYTES = 256 * 2**20
SAMPLE_BYTES = 16 * 2**20
# Files of a local model folder that loading reads (weights, config, tokenizer); READMEs and the like change nothing.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".model", ".txt", ".tiktoken", ".gguf")

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
    "benchmark.eval_merged",  # the same generations with the adapters merged per task (docs/commonsense.md)
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


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Returns what identifies a file's content: its size and SHA-256 (of the whole file up to FULL_HASH_BYTES,
    else of SAMPLE_BYTES at its start, middle and end: `sha256_sampled`); for a folder (e.g. one feature file per
    image), its file count, total size and the SHA-256 of its sorted (relative name, size) listing."""
    if path.is_dir():
        listing = sorted((str(f.relative_to(path)), f.stat().st_size) for f in path.rglob("*") if f.is_file())
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
        return {"files": len(listing), "size": sum(size for _, size in listing), "listing_sha256": digest}
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        if size <= FULL_HASH_BYTES:
            while chunk := handle.read(2**20):
                digest.update(chunk)
            return {"size": size, "sha256": digest.hexdigest()}
        for start in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
            handle.seek(start)
            digest.update(handle.read(SAMPLE_BYTES))
    return {"size": size, "sha256_sampled": digest.hexdigest()}


def data_fingerprint(files: Sequence[str | os.PathLike[str]]) -> dict[str, dict[str, Any]]:
    """Returns {file name: `file_fingerprint`} of the data files a run reads, each named relative to the folder
    holding them all (`CoLA/train.tsv`), so that the same data elsewhere (another machine, another data_dir) gives
    the same fingerprint; {} for none (data from the Hugging Face hub, named by the config)."""
    paths = [Path(os.path.abspath(f)) for f in dict.fromkeys(files)]
    if not paths:
        return {}
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return {str(p.relative_to(root)): file_fingerprint(p) for p in paths}


def model_fingerprint(name_or_path: str, gguf_file: str | None = None) -> dict[str, Any]:
    """Returns what identifies a base model: for a local folder, `file_fingerprint` of each file loading reads
    (MODEL_FILE_SUFFIXES at its top level; of the GGUF files only `gguf_file`); for a hub id, the commit of the
    cached snapshot the run loaded (`{"hub": id, "commit": ...}`; None when it is not in the local cache)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        files = sorted(
            f
            for f in folder.iterdir()
            if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES and (f.suffix != ".gguf" or f.name == gguf_file)
        )
        return {"files": {f.name: file_fingerprint(f) for f in files}}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, gguf_file or "config.json")
    commit = Path(cached).parent.name if isinstance(cached, str) else None
    return {"hub": name_or_path, "commit": commit}


def stored_inputs(output_dir: Path) -> dict[str, Any] | None:
    """Returns the inputs fingerprint a run directory holds: its inputs.json, else metrics.json's "inputs", else
    None (a run from before fingerprints, or none yet)."""
    if (output_dir / INPUTS_FILE).exists():
        return json.loads((output_dir / INPUTS_FILE).read_text())
    if (output_dir / METRICS_FILE).exists():
        return json.loads((output_dir / METRICS_FILE).read_text()).get("inputs")
    return None


def _differing_inputs(theirs: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """Returns one line per input that differs: each data file, and the base model (file by file for a folder)."""
    lines = []
    for kind, label in (("data", "data file"), ("model", "base model")):
        a, b = theirs.get(kind) or {}, mine.get(kind) or {}
        if kind == "model" and "files" in a and "files" in b:
            a, b, label = a["files"], b["files"], "base model file"
        elif kind == "model":
            a, b = ({"": a}, {"": b}) if a != b else ({}, {})
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                shown = f"{label} {name}".rstrip()
                lines.append(f"{shown}: {_short(a.get(name))} there, {_short(b.get(name))} now")
    return lines


def _short(fingerprint: Any) -> str:
    """A fingerprint as a message shows it: its size and the first 12 hex digits of its hash."""
    if not isinstance(fingerprint, Mapping):
        return "<none>"
    if "hub" in fingerprint:
        return f"{fingerprint['hub']}@{fingerprint.get('commit')}"
    if isinstance(fingerprint.get("files"), Mapping):
        return f"a local folder of {len(fingerprint['files'])} file(s)"
    digest = next((v for k, v in fingerprint.items() if k.endswith("sha256") or k == "sha256_sampled"), "")
    return f"{fingerprint.get('size')} bytes, sha256 {digest[:12]}"


def claim_run_dir(
    output_dir: Path,
    config: Mapping[str, Any],
    resume: bool,
    write: bool = True,
    inputs: Mapping[str, Any] | None = None,
) -> None:
    """Checks `config` (a `portable_config`) against the one stored in the run directory, and `inputs` ({"data":
    `data_fingerprint`, "model": `model_fingerprint`}) against the stored ones when both exist, and, if `write`
    (the main process), stores both there; raises RunDirError naming every differing key or input when the
    directory belongs to another configuration or was trained on other inputs. Every rank checks, so that all of
    them stop together."""
    stored_file = output_dir / STORED_CONFIG_FILE
    mine = result_config(config)
    stored = stored_config(output_dir)
    action = "resume" if resume else "write into"
    if stored is not None:
        theirs = result_config(stored)
        differing = sorted(set(mine) ^ set(theirs) | {k for k in set(mine) & set(theirs) if mine[k] != theirs[k]})
        if differing:
            shown = "; ".join(
                f"{k}: {theirs.get(k, '<unset>')!r} there, {mine.get(k, '<unset>')!r} now" for k in differing
            )
            raise RunDirError(
                f"refusing to {action} {output_dir}: it holds a run of another configuration ({shown}). Give this "
                f"run its own directory (run_name=... or an override on the command line), or delete that one."
            )
    stored_fingerprint = stored_inputs(output_dir)
    if inputs is not None and stored_fingerprint is not None:
        differing_inputs = _differing_inputs(stored_fingerprint, inputs)
        if differing_inputs:
            raise RunDirError(
                f"refusing to {action} {output_dir}: it holds a run trained on other inputs (the same configuration, "
                f"other files: {'; '.join(differing_inputs)}). Give this run its own directory (run_name=...), "
                f"or delete that one."
            )
    if not write:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    files = [(stored_file, config)] + ([(output_dir / INPUTS_FILE, inputs)] if inputs is not None else [])
    for path, content in files:
        write_atomic(path, json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")
