"""Every config composes into valid objects; the equal-parameter LoRA really matches MTL-LoRA's count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModel

from mtllora.adapters import AdapterConfig, apply_adapters, count_parameters
from mtllora.config_check import config_problems
from mtllora.configs import CONFIG_DIR, register_resolvers
from mtllora.models import ModelConfig
from mtllora.training_args import passed_training_arguments

METHODS = ["lora", "lora_r16", "dora", "multilora", "moelora", "mtl_lora"]


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, "paths.output_dir=unused"])


@pytest.mark.parametrize("experiment", ["glue", "glue_cpu", "glue_ci"])
@pytest.mark.parametrize("method", METHODS)
def test_every_experiment_and_method_composes(experiment, method):
    cfg = _compose(f"experiment={experiment}", f"method={method}")
    container = OmegaConf.to_container(cfg, resolve=True)
    adapter = AdapterConfig.from_dict(container["method"]["adapter"])
    assert adapter.target_modules == container["model"]["target_modules"]
    if adapter.num_tasks is not None:
        assert adapter.num_tasks == len(container["benchmark"]["tasks"])
    ModelConfig.from_mapping(container["model"])
    assert cfg.profile == experiment


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")))
def test_every_experiment_sets_only_training_arguments_or_the_projects_trainer_keys(experiment):
    # A trainer key that is neither would fail the run (after its data checks); here it fails at once.
    passed = passed_training_arguments(_compose(f"experiment={experiment}").trainer)
    assert {"learning_rate", "num_train_epochs", "per_device_train_batch_size"} <= passed.keys()
    assert passed["disable_tqdm"] is False and "callbacks" not in passed and "warmup_ratio" not in passed


EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
ALL_METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_committed_experiment_and_method_passes_the_config_check(experiment, method):
    # Where the model lives is the machine's business (SmolLM2 comes from an optional package, the tiny VL-BART is
    # generated): a hub id stands in for it, so that every value the configs set is checked here.
    cfg = _compose(f"experiment={experiment}", f"method={method}", "model.name_or_path=org/model")
    problems = config_problems(cfg)
    if experiment.startswith("image_text") and method == "zero_shot":
        # The image-text profiles set adapter options (r, alpha, dropout), which give zero_shot's `adapter: null` an
        # adapter without a method: refused up front (it failed at the model before).
        assert len(problems) == 1 and problems[0].startswith("method.adapter.method=None: expected one of")
    else:
        assert problems == []


def _minilm_parameter_count(method: str) -> int:
    cfg = _compose("experiment=glue_cpu", f"method={method}")
    container = OmegaConf.to_container(cfg, resolve=True)
    with torch.device("meta"):
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(container["model"]["name_or_path"]))
    apply_adapters(encoder, AdapterConfig.from_dict(container["method"]["adapter"]))
    return count_parameters(encoder).trainable


def test_lora_r16_matches_mtl_lora_parameter_count_in_the_cpu_profile():
    mtl, lora16, lora8 = (_minilm_parameter_count(m) for m in ("mtl_lora", "lora_r16", "lora"))
    # q,k,v,o of 6 layers, 384×384: MTL-LoRA r=8, n=3, T=5: 8·384 + 3·8·384 + 5·64 + 5·3 per layer.
    assert mtl == 24 * (8 * 384 + 3 * 8 * 384 + 5 * 64 + 15) == 302_952
    assert lora16 == 24 * 16 * 768 == 294_912 and lora8 == lora16 // 2
    assert abs(lora16 - mtl) / mtl < 0.03  # the closest LoRA rank: r=17 would overshoot by 3.5 %
