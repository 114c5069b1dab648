"""Checks that a run can reach everything it needs before anything runs: a valid config, Hugging Face hub access
and its data files.

A gated model (LLaMA-2) whose licence was not accepted, a misspelt hub id, or an id missing from the cache under
HF_HUB_OFFLINE=1 otherwise fails deep inside a run, after minutes of setup or an earlier run's hours. `check(cfg)`
(what `python -m mtllora.plan` calls) checks the config's values (`mtllora.config_check`), every hub id the composed
config needs, `cfg.model.name_or_path` and the benchmark's `hub_datasets()`, and the benchmark's data files
(`Benchmark.check_inputs`), and raises one PreflightError listing every problem with what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import datasets
from huggingface_hub import auth_check, constants, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.file_download import repo_folder_name
from omegaconf import DictConfig, OmegaConf

from .config_check import ConfigError, check_config
from .models import is_local_path

LOGIN = "`hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"


class PreflightError(RuntimeError):
    """Something a run needs is not reachable; the message lists every problem and what to do."""


def check(cfg: DictConfig) -> None:
    """Checks a composed run config before anything runs: its values (`config_check.check_config`), hub access
    to the model and the benchmark's hub datasets (`check_hub_access`), then the benchmark's data files
    (`check_inputs`); raises one PreflightError with all of them. Access and data are checked on a valid config
    only (its values name what to check), so a bad config is reported alone."""
    from .configs import instantiate_node, register_resolvers

    register_resolvers()
    try:
        check_config(cfg)
    except ConfigError as err:
        raise PreflightError(str(err)) from err
    problems = []
    benchmark = instantiate_node(cfg.benchmark)
    try:
        check_hub_access(model_ids(cfg), benchmark.hub_datasets())
    except PreflightError as err:
        problems.append(str(err))
    try:
        benchmark.check_inputs()
    except (OSError, ValueError) as err:
        problems.append(f"data: {err}")
    if problems:
        raise PreflightError("\n".join(problems))


def model_ids(cfg: DictConfig) -> list[str]:
    """Returns the model ids (hub ids or local paths) a run loads: `model.name_or_path`, with its GGUF file as
    `<path>::<file>` when `model.gguf_file` is set."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    name, gguf = str(model["name_or_path"]), model.get("gguf_file")
    return [f"{name}::{gguf}" if gguf else name]


def check_hub_access(repo_ids: Iterable[str], dataset_ids: Iterable[str] = ()) -> None:
    """Checks that every model in `repo_ids` and dataset in `dataset_ids` can be loaded: a local path must exist; a
    hub id must be accessible (`huggingface_hub.auth_check`), or, under HF_HUB_OFFLINE=1, be in the local cache
    (checked without network). A model id may name a file in it as `<id>::<file>` (a GGUF file). Raises one
    PreflightError listing each inaccessible id and what to do."""
    problems = [problem for repo_id in repo_ids if (problem := _problem(repo_id, "model"))]
    problems += [problem for repo_id in dataset_ids if (problem := _problem(repo_id, "dataset"))]
    if problems:
        raise PreflightError(
            f"{len(problems)} of the run's models/datasets cannot be loaded:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )


def _problem(name: str, repo_type: str) -> str | None:
    """What keeps model or dataset `name` from loading, with the fix; None when it loads."""
    repo_id, _, filename = name.partition("::")
    if is_local_path(repo_id):
        path = Path(repo_id).expanduser()
        wanted = path / filename if filename else path
        return None if wanted.exists() else f"{wanted}: no such local {'file' if filename else 'file or folder'}"
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    if is_offline_mode():
        if _cached(repo_id, repo_type, filename or "config.json"):
            return None
        what = f"{repo_type} {repo_id}" + (f" (file {filename})" if filename else "")
        caches = str(constants.HF_HUB_CACHE)
        download = f"hf download {repo_id}"
        if repo_type == "dataset":
            caches += f" or {datasets.config.HF_DATASETS_CACHE}"
            download += " --repo-type dataset"
        return (
            f"{what}: HF_HUB_OFFLINE=1 and it is not in the local cache ({caches}): load it once with network access "
            f"(e.g. `{download}`), or use a local copy"
        )
    try:
        auth_check(repo_id, repo_type=repo_type)
    except GatedRepoError:
        return (
            f"{repo_type} {repo_id} is gated: accept its licence at {url} with your Hugging Face account, then log "
            f"in as that account: {LOGIN}"
        )
    except RepositoryNotFoundError:
        return (
            f"{repo_type} {repo_id}: not found on the hub: check the name (or, if it is private, log in with an "
            f"account that can read it: {LOGIN})"
        )
    except (HfHubHTTPError, OSError) as err:  # no network, a proxy, a hub outage
        return (
            f"{repo_type} {repo_id}: could not check it on the hub ({type(err).__name__}: {err}); without network "
            "access, set HF_HUB_OFFLINE=1 and have it in the local cache"
        )
    return None


def _cached(repo_id: str, repo_type: str, filename: str) -> bool:
    """Whether the local cache holds the repository, without network: a model's `filename` in the hub cache; a
    dataset's files in the hub cache or its prepared copy in the datasets cache."""
    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE), str)
    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="dataset") / "snapshots"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return (snapshots.is_dir() and any(snapshots.iterdir())) or prepared.is_dir()
