"""The training engine end to end on a tiny encoder and tiny GLUE files: CLI, every method, resume after a
kill, two DeepSpeed ranks, sweeps, W&B offline, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import psutil
import pytest
import torch
from hydra import compose, initialize_config_dir

from mtllora.adapters import load_adapter, read_adapter_config
from mtllora.configs import CONFIG_DIR, register_resolvers
from mtllora.engine import last_complete_checkpoint
from mtllora.rundir import RunDirError
from mtllora.train import run
from mtllora.training_args import batch_layout, batch_split, resolve_precision, training_arguments
from tests.test_record import WRITTEN_KEYS

REPO = Path(__file__).resolve().parents[1]
# The repository first, then what the caller put on PYTHONPATH (tests/test_compat.py: an older transformers).
PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
ENV = {**os.environ, "PYTHONPATH": PYTHONPATH, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}


def overrides(encoder: Path, glue: Path, out: Path, *extra: str) -> list[str]:
    return [
        "experiment=glue_ci",
        f"model.name_or_path={encoder}",
        f"paths.data_dir={glue}",
        f"paths.runs_dir={out / 'runs'}",
        *extra,
    ]


def compose_cfg(args: list[str], output_dir: Path):
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*args, f"paths.output_dir={output_dir}"])


def run_process(command: list[str], timeout: int, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    """subprocess.run from the repository root, which on timeout kills what the command started too (a launcher's
    ranks left running would hold their port for the next test; torchrun starts them in sessions of their own) and
    fails the test with the end of the output."""
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            stdout, stderr = process.communicate()
            pytest.fail(f"{' '.join(command)} timed out after {timeout} s; the end of its output:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def cli(args: list[str], launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), *(["-m"] if launcher is None else []), "mtllora.train", *args]
    return run_process(command, timeout)


def test_cli_run_writes_metrics_and_a_loadable_adapter(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    result = cli(overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=mtl_lora", "seed=3"))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "glue_ci" / "glue-mtl_lora-tiny-bert-s3"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics) == WRITTEN_KEYS and metrics["version"] == 2
    assert metrics["task_order"] == ["cola", "sst2", "mrpc", "stsb", "rte"]
    assert set(metrics["tasks"]["mrpc"]) == {"accuracy", "f1"} and set(metrics["tasks"]["stsb"]) == {
        "pearson",
        "spearmanr",
    }
    assert metrics["train"]["steps"] == 6 and metrics["seed"] == 3 and metrics["method"] == "mtl_lora"
    batch = {k: metrics["train"][k] for k in ("global_batch_size", "per_device_batch_size", "world_size")}
    assert batch == {"global_batch_size": 8, "per_device_batch_size": 8, "world_size": 1}
    assert metrics["train"]["gradient_accumulation_steps"] == 1
    # Start-up (before HF's loop) and the loop, apart: together the training's seconds.
    train = metrics["train"]
    assert train["startup_seconds"] > 0 and train["loop_seconds"] > 0
    assert train["startup_seconds"] + train["loop_seconds"] == pytest.approx(train["seconds"], rel=1e-6)
    assert metrics["params"]["trainable"] < metrics["params"]["total"]
    assert metrics["config"]["method"]["adapter"]["num_tasks"] == 5
    # The stored config holds no absolute path: the encoder folder (outside the repository and the data directory)
    # by its name only, the data directory relative to the repository.
    text = (run_dir / "metrics.json").read_text()
    assert str(tiny_encoder_dir) not in text and '"/' not in text
    assert metrics["config"]["model"]["name_or_path"] == "<external>/" + tiny_encoder_dir.name
    assert metrics["config"]["paths"]["data_dir"] == os.path.relpath(tiny_glue_dir.resolve(), REPO)
    assert metrics["config"]["paths"]["output_dir"] == "${hydra:runtime.output_dir}"  # as configured
    assert json.loads((run_dir / "config.json").read_text()) == metrics["config"]
    config = read_adapter_config(run_dir / "adapter.safetensors")
    assert config.method == "mtl_lora" and config.num_tasks == 5 and config.trainable == [r"^heads\."]


@pytest.mark.parametrize("method", ["lora", "lora_r16", "dora", "multilora", "moelora", "mtl_lora"])
def test_every_method_trains_and_reloads_to_the_same_predictions(method, tiny_encoder_dir, tiny_glue_dir, tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from transformers import Trainer, TrainingArguments

    from mtllora.models import ModelConfig

    record = f"trainer.callbacks=[{{_target_:tests.callbacks.RecordLogits,path:{tmp_path / 'logits.pt'}}}]"
    cfg = compose_cfg(
        overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, f"method={method}", record), tmp_path / "run"
    )
    metrics = run(cfg)
    assert metrics["label"] == cfg.method.label
    # The saved adapter (with the task heads), loaded into a freshly built model, gives the trained model's logits
    # on a mixed-task batch and scores the dev sets exactly as the trained model did at the end of the run.
    bench = instantiate(cfg.benchmark)
    model, tokenizer = bench.build_model(ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True)))
    load_adapter(model, tmp_path / "run" / "adapter.safetensors")
    trained = torch.load(tmp_path / "logits.pt")
    assert len(set(trained["batch"]["task_ids"].tolist())) > 1
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**trained["batch"]).logits, trained["logits"], rtol=0, atol=0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "eval"),
        per_device_eval_batch_size=cfg.trainer.per_device_eval_batch_size,
        use_cpu=True,
        remove_unused_columns=False,
        report_to=[],
    )
    reloaded = bench.evaluate(Trainer(model=model, args=args, data_collator=bench.collator(tokenizer)), tokenizer)
    assert reloaded.keys() == metrics["tasks"].keys()
    for task, values in metrics["tasks"].items():
        assert reloaded[task] == pytest.approx(values, rel=1e-6, abs=1e-9), task


def test_resume_after_a_kill_gives_the_same_adapter_weights(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    base = overrides(
        tiny_encoder_dir,
        tiny_glue_dir,
        tmp_path,
        "method=mtl_lora",
        "trainer.max_steps=8",
        "trainer.save_steps=4",
        "method.adapter.dropout=0.1",
        "trainer.global_train_batch_size=16",  # two accumulated micro-batches of 8 per step
    )
    straight = tmp_path / "straight"
    run(compose_cfg(base, straight))
    interrupted = tmp_path / "interrupted"
    killed = cli(
        [
            *base,
            f"paths.output_dir={interrupted}",
            "hydra.run.dir=" + str(interrupted),
            "trainer.callbacks=[{_target_:tests.callbacks.KillAtStep,step:6}]",
        ]
    )
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert (interrupted / "checkpoint-4" / "COMPLETE").exists() and not (interrupted / "metrics.json").exists()
    (interrupted / "checkpoint-6").mkdir()  # a checkpoint cut short by the kill: no COMPLETE marker
    assert last_complete_checkpoint(interrupted) == str(interrupted / "checkpoint-4")
    metrics = run(compose_cfg([*base, "trainer.resume=true"], interrupted))
    assert metrics["train"]["resumed_from"] == "checkpoint-4" and metrics["train"]["steps"] == 8
    from safetensors.torch import load_file

    a, b = load_file(straight / "adapter.safetensors"), load_file(interrupted / "adapter.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    # Resuming the finished run (a whole profile rerun after a crash) returns its metrics and loads nothing.
    from mtllora.benchmarks.glue import GlueBenchmark

    with mock.patch.object(GlueBenchmark, "build_model", side_effect=AssertionError("a finished run was retrained")):
        stored = json.loads((interrupted / "metrics.json").read_text())
        assert run(compose_cfg([*base, "trainer.resume=true"], interrupted)) == stored
        with pytest.raises(RunDirError, match=r"refusing to resume .*trainer\.learning_rate"):
            run(compose_cfg([*base, "trainer.resume=true", "trainer.learning_rate=0.5"], interrupted))


LAUNCHERS = {
    "deepspeed": ["deepspeed", "--num_gpus", "2", "--master_port", "29517", "--module"],
    "torchrun": ["torchrun", "--nproc_per_node", "2", "--master_port", "29518", "-m"],
}


@pytest.mark.parametrize("launcher_name", sorted(LAUNCHERS))
def test_two_ranks_stay_in_sync_and_learn(launcher_name, tiny_encoder_dir, tiny_glue_dir, tmp_path):
    record = tmp_path / "ranks"
    executable, *arguments = LAUNCHERS[launcher_name]
    launcher = [str(Path(sys.executable).with_name(executable)), *arguments]
    result = cli(
        overrides(
            tiny_encoder_dir,
            tiny_glue_dir,
            tmp_path,
            "method=mtl_lora",
            "deepspeed=zero2",
            "trainer.max_steps=12",
            f"trainer.callbacks=[{{_target_:tests.callbacks.RecordRank,directory:{record}}}]",
        ),
        launcher=launcher,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    weights = [torch.load(record / f"rank{r}.pt") for r in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=0, msg=name)
    for r in (0, 1):
        before, after = json.loads((record / f"rank{r}.json").read_text())["probe_loss"]
        assert after < before, (r, before, after)
    metrics = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert metrics["train"]["world_size"] == 2


def test_sweep_with_the_submitit_local_launcher(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    result = cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            *overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=lora,mtl_lora", "trainer.max_steps=2"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = sorted(p.parent.name for p in (tmp_path / "runs").rglob("metrics.json"))
    # trainer.max_steps changes results, so it names the directories; the paths do not.
    assert found == ["glue-lora-tiny-bert-s1,trainer.max_steps=2", "glue-mtl_lora-tiny-bert-s1,trainer.max_steps=2"]


def test_wandb_logger_runs_offline_without_an_api_key(tiny_encoder_dir, tiny_glue_dir, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg(
        overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "logger=wandb", "trainer.max_steps=2"), tmp_path / "run"
    )
    run(cfg)
    assert os.environ["WANDB_MODE"] == "offline"
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("run-*.wandb"))


def test_clear_errors(tiny_encoder_dir, tiny_glue_dir, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"lacks 5 file.*: {missing}/CoLA/ \\(or {missing}/glue/CoLA/\\)"):
        run(compose_cfg(overrides(tiny_encoder_dir, missing, tmp_path), tmp_path / "a"))
    with pytest.raises(ValueError, match="unknown GLUE task 'colaa'"):
        run(
            compose_cfg(
                overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "benchmark.tasks=[colaa,rte]"), tmp_path / "b"
            )
        )
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="bf16 was requested but this cpu does not support it"):
        assert resolve_precision(True) == (False, "fp32 (bf16 was requested but this cpu does not support it)")
    assert resolve_precision("auto") == (False, "fp32")


def test_gradient_checkpointing_trains_the_task_headed_model_to_the_same_weights(
    tiny_encoder_dir, tiny_glue_dir, tmp_path
):
    from safetensors.torch import load_file

    base = overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=mtl_lora", "trainer.max_steps=3")
    run(compose_cfg(base, tmp_path / "plain"))
    metrics = run(compose_cfg([*base, "trainer.gradient_checkpointing=true"], tmp_path / "checkpointed"))
    assert metrics["train"]["steps"] == 3
    plain, checkpointed = (load_file(tmp_path / d / "adapter.safetensors") for d in ("plain", "checkpointed"))
    assert plain.keys() == checkpointed.keys()
    for name in plain:  # recomputation under the same task ids and dropout masks: the same training
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_any_training_argument_changes_the_training_and_the_run_keeps_its_log_history(
    tiny_encoder_dir, tiny_glue_dir, tmp_path
):
    from safetensors.torch import load_file

    # The benchmark evaluates every 2 steps too (HF's eval_strategy/eval_steps, new keys as well).
    evaluation = ["+trainer.eval_strategy=steps", "+trainer.eval_steps=2"]
    base = overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=lora", "trainer.max_steps=4", *evaluation)
    metrics = {}
    for beta2 in ("0.5", "0.999"):  # not in configs/trainer/default.yaml: a new key, as a sweep adds it
        metrics[beta2] = run(compose_cfg([*base, f"+trainer.adam_beta2={beta2}"], tmp_path / beta2))
    low, high = (load_file(tmp_path / d / "adapter.safetensors") for d in ("0.5", "0.999"))
    lora = [name for name in low if "lora" in name]
    assert lora and all(not torch.equal(low[name], high[name]) for name in lora)
    # The loss curve stays in the run directory without any logger (logging_steps=2: steps 2 and 4), beside the
    # evaluation curve, whose last point is the final evaluation (same weights).
    history = json.loads((tmp_path / "0.5" / "trainer_state.json").read_text())["log_history"]
    losses = [entry for entry in history if "loss" in entry]
    assert [entry["step"] for entry in losses] == [2, 4] and all(entry["loss"] > 0 for entry in losses)
    evaluations = [entry for entry in history if "eval/average" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    final = metrics["0.5"]
    assert evaluations[-1]["eval/average"] == pytest.approx(final["average"], abs=1e-9)
    assert evaluations[-1]["eval/cola/matthews_correlation"] == pytest.approx(
        final["tasks"]["cola"]["matthews_correlation"], abs=1e-9
    )


def test_evaluation_progress_bars_name_their_task(tiny_encoder_dir, tiny_glue_dir, tmp_path, capfd):
    run(compose_cfg(overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "method=zero_shot"), tmp_path / "run"))
    bars = capfd.readouterr().err
    assert all(f"evaluate {task}: 100%" in bars for task in ("cola", "sst2", "mrpc", "stsb", "rte")), bars[-2000:]


def test_every_trainer_key_reaches_the_training_arguments_or_is_refused(
    tiny_encoder_dir, tiny_glue_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path)
    extra = ["+trainer.adam_beta2=0.9", "+trainer.label_smoothing_factor=0.1", "trainer.gradient_checkpointing=true"]
    built = training_arguments(compose_cfg([*base, *extra], tmp_path / "a"), tmp_path / "a", bf16=False)
    assert (built.adam_beta2, built.label_smoothing_factor, built.gradient_checkpointing) == (0.9, 0.1, True)
    assert (built.learning_rate, built.warmup_steps, built.save_strategy) == (1e-3, 0.0, "no")  # glue_ci's
    with pytest.raises(
        ValueError, match=r"trainer\.adam_betaa2 is not a transformers .* field.*did you mean adam_beta2"
    ):
        training_arguments(compose_cfg([*base, "+trainer.adam_betaa2=0.9"], tmp_path / "b"), tmp_path / "b", False)
    owned = {
        "output_dir=x": r"set by paths\.output_dir \(configs/paths/default\.yaml",
        "seed=2": r"set by seed \(configs/train\.yaml\)",
        "report_to=[]": r"set by the logger group",
        "deepspeed=x.json": r"set by the deepspeed group",
        "warmup_steps=5": r"set by trainer\.warmup_ratio",
    }
    for override, message in owned.items():
        with pytest.raises(ValueError, match=rf"trainer\.{override.split('=')[0]} is {message}"):
            training_arguments(compose_cfg([*base, f"+trainer.{override}"], tmp_path / "c"), tmp_path / "c", False)
    # ... and before the model loads (this model path does not exist).
    missing_model = overrides(tmp_path / "no-model", tiny_glue_dir, tmp_path, "+trainer.adam_betaa2=0.9")
    with pytest.raises(ValueError, match="did you mean adam_beta2"):
        run(compose_cfg(missing_model, tmp_path / "d"))


# (global batch, ranks, most per device) → (per-device batch, accumulation steps): the fewest accumulation steps.
BATCH_SPLITS = [
    (64, 1, 8, (8, 8)),
    (64, 2, 8, (8, 4)),
    (64, 8, 8, (8, 1)),
    (16, 1, 8, (8, 2)),
    (16, 2, 8, (8, 1)),
    (16, 8, 8, (2, 1)),
    (512, 1, 512, (512, 1)),
    (512, 8, 512, (64, 1)),
    (512, 1, 300, (256, 2)),
    (300, 2, 512, (150, 1)),
    (24, 2, 5, (4, 3)),  # 12 and 6 per device exceed 5; 4 × 3 steps × 2 ranks = 24
    (7, 1, 2, (1, 7)),
]


@pytest.mark.parametrize(("global_batch", "ranks", "most", "expected"), BATCH_SPLITS)
def test_global_batch_split_over_ranks(global_batch, ranks, most, expected):
    per_device, accumulation = batch_split(global_batch, ranks, most)
    assert (per_device, accumulation) == expected
    assert per_device * accumulation * ranks == global_batch


def test_a_global_batch_that_cannot_be_split_names_the_numbers():
    with pytest.raises(
        ValueError,
        match=r"global_train_batch_size=300 cannot be split over 8 device\(s\) with at most "
        r"trainer\.per_device_train_batch_size=64 per device",
    ):
        batch_split(300, 8, 64)  # 300 is no multiple of 8


def test_training_arguments_take_the_split_of_the_global_batch(tiny_encoder_dir, tiny_glue_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = overrides(tiny_encoder_dir, tiny_glue_dir, tmp_path, "trainer.global_train_batch_size=24")
    built = training_arguments(compose_cfg(args, tmp_path / "a"), tmp_path / "a", bf16=False)
    assert (built.per_device_train_batch_size, built.gradient_accumulation_steps) == (8, 3)  # at most 8 per device
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2 was set together with .*=24"):
        training_arguments(
            compose_cfg([*args, "trainer.gradient_accumulation_steps=2"], tmp_path / "b"), tmp_path / "b", bf16=False
        )
    monkeypatch.setattr("mtllora.training_args._world_size", lambda: 2)  # a launch that the environment misreports
    with pytest.raises(
        ValueError, match=r"announces 2 training process\(es\) \(WORLD_SIZE\), but the Trainer runs on 1"
    ):
        training_arguments(compose_cfg(args, tmp_path / "c"), tmp_path / "c", bf16=False)


# The paper profiles: their global batch (the official runs', per method for commonsense) and a checkpoint
# interval (every 5% of a multi-hour run; GLUE every 2000 steps).
PAPER_PROFILES = [
    ("commonsense", "mtl_lora", 64, 8, 0.05),
    ("commonsense", "lora", 64, 8, 0.05),
    ("commonsense", "dora", 64, 8, 0.05),
    ("commonsense", "moelora", 64, 8, 0.05),
    ("commonsense", "multilora", 16, 8, 0.05),
    ("image_text", "mtl_lora", 512, 512, 0.05),
    ("glue", "mtl_lora", 32, 32, 2000),
]


@pytest.mark.parametrize(("experiment", "method", "global_batch", "most", "save_steps"), PAPER_PROFILES)
def test_paper_profiles_state_their_global_batch_and_save_checkpoints(
    experiment, method, global_batch, most, save_steps, tmp_path, monkeypatch
):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose_cfg([f"experiment={experiment}", f"method={method}", "deepspeed=none"], tmp_path)
    assert (cfg.trainer.global_train_batch_size, cfg.trainer.per_device_train_batch_size) == (global_batch, most)
    for ranks in (1, 2, 8):
        per_device, accumulation = batch_layout(cfg.trainer, ranks)
        assert per_device * accumulation * ranks == global_batch and per_device <= most
    args = training_arguments(cfg, tmp_path, bf16=False)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == global_batch
    assert args.save_strategy == "steps" and args.save_steps == save_steps
