"""Bad inputs: config. One `Case` row each (see tests/bad_inputs/__init__.py).

Every row fails before training: the config check (`mtllora.config_check`) runs before any data or model loads, and
a model folder without tokenizer files fails when the model is built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mtllora.config_check import ConfigError
from tests.bad_inputs import Case, Inputs, glue_run, override_case


def _without_tokenizer(inputs: Inputs, tmp: Path) -> dict:
    """The tiny encoder's weights and config, without its tokenizer files."""
    folder = tmp / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(inputs.encoder / name, folder / name)
    return glue_run(inputs, tmp, encoder=folder)


def _run_dir_under_a_file(inputs: Inputs, tmp: Path) -> dict:
    """A runs folder that cannot be created: a file stands where one of its parents should be."""
    from mtllora.train import run
    from tests.test_train import compose_cfg, overrides

    (tmp / "taken").write_text("a file, not a folder\n")
    return run(compose_cfg(overrides(inputs.encoder, inputs.glue, tmp), tmp / "taken" / "run"))


CASES: list[Case] = [
    override_case(
        "num_tasks_above_the_task_count",
        "method.adapter.num_tasks=7",
        ConfigError,
        r"method\.adapter\.num_tasks=7: expected 5, the number of benchmark\.tasks \['cola', 'sst2', 'mrpc'",
    ),
    Case(
        "model_folder_without_tokenizer_files",
        _without_tokenizer,
        FileNotFoundError,
        r"the folder .*weights-only holds no tokenizer files: BertTokenizer reads tokenizer\.json or vocab\.txt",
    ),
    override_case(
        "max_length_zero", "model.max_length=0", ConfigError, r"model\.max_length=0: expected a positive integer"
    ),
    override_case(
        "unknown_train_sampling_strategy",
        "trainer.train_sampling_strategy=foo",
        ConfigError,
        r"trainer\.train_sampling_strategy='foo': expected one of \['random', 'sequential', 'group_by_length'",
    ),
    override_case("seed_not_an_integer", "seed=abc", ConfigError, r"seed='abc': expected a non"),
    override_case(
        "max_train_samples_zero",
        "benchmark.max_train_samples=0",
        ConfigError,
        r"benchmark\.max_train_samples=0: expected a positive integer \(rows per task\), or null for all rows",
    ),
    override_case(
        "max_steps_not_an_integer",
        "trainer.max_steps=abc",
        ConfigError,
        r"trainer\.max_steps='abc': expected an integer",
    ),
    override_case(
        "gradient_accumulation_steps_zero",
        "trainer.gradient_accumulation_steps=0",
        ConfigError,
        r"trainer\.gradient_accumulation_steps=0: expected a positive integer",
    ),
    Case(
        "model_folder_missing",
        lambda i, t: glue_run(i, t, f"model.name_or_path={t / 'no-such-model'}"),
        ConfigError,
        r"model\.name_or_path='.*no-such-model': no such local folder",
    ),
    Case(
        "run_dir_cannot_be_created",
        _run_dir_under_a_file,
        ConfigError,
        r"paths\.output_dir='.*taken/run': .*taken is a file, not a folder",
    ),
]
