"""W&B as the place where runs are compared: tiny GLUE runs with logger=wandb (offline), read back with wandb's own
reader of the run files (`wandb leet inspect --json`), must hold the config, summary, history, adapter artifact and
run ids described in mtllora.wandb_log; `mtllora.tables --wandb` must log the tables into a "tables" run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from hydra import compose, initialize_config_dir

from mtllora import tables
from mtllora.benchmarks.instruct import alpaca_prompt, read_records
from mtllora.configs import CONFIG_DIR, register_resolvers
from mtllora.testing import write_tiny_llama
from mtllora.train import run
from mtllora.wandb_log import HISTORY_KEYS, STEP_METRIC, run_id, sample_predictions, summary_metrics

WANDB_CLI = str(Path(sys.executable).with_name("wandb"))
REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "data" / "examples" / "toy_multitask"
GROUP = "glue-tiny-bert-glue_ci"
METHODS = ("lora", "mtl_lora", "zero_shot")


def inspect(run_dir: Path, *flags: str) -> str:
    """wandb's reader of an offline run's `run-*.wandb` file, as JSON."""
    result = subprocess.run(
        [WANDB_CLI, "leet", "inspect", "--json", *flags, str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in inspect(run_dir).splitlines()]


def final_state(run_dir: Path) -> dict:
    """The run's config, summary and id as the reader sees them at the end of the file."""
    return json.loads(inspect(run_dir, "--summary"))


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def run_with(overrides: list[str]) -> dict:
    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return run(compose("train", overrides=["logger=wandb", *overrides]))


def compose_run(encoder: Path, glue: Path, runs: Path, method: str, *extra: str) -> dict:
    return run_with(
        [
            "experiment=glue_ci",
            f"method={method}",
            "trainer.max_steps=4",
            f"model.name_or_path={encoder}",
            f"paths.data_dir={glue}",
            f"paths.runs_dir={runs}",
            f"paths.output_dir={run_dir(runs, method)}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(name, str(home / name.lower()))
        yield


@pytest.fixture(scope="module")
def runs(wandb_env, tiny_encoder_dir, tiny_glue_dir, tmp_path_factory):
    """{method: metrics} of a LoRA, an MTL-LoRA and a zero-shot run under <root>/runs/glue_ci."""
    root = tmp_path_factory.mktemp("wandb-runs") / "runs"
    return root, {method: compose_run(tiny_encoder_dir, tiny_glue_dir, root, method) for method in METHODS}


def run_dir(root: Path, method: str) -> Path:
    return root / "glue_ci" / f"glue-{method}-tiny-bert-s1"


@pytest.mark.parametrize("method", METHODS)
def test_a_run_holds_the_config_summary_and_history_of_its_metrics(runs, method):
    root, all_metrics = runs
    metrics = all_metrics[method]
    (offline,) = offline_runs(run_dir(root, method))
    state, stream = final_state(offline), records(offline)
    # The config is the run's portable Hydra config, nothing else: no flat TrainingArguments keys from HF.
    assert state["config"] == metrics["config"]
    assert not [r for r in stream if r["type"] == "config"]  # nothing was added to it later
    (start,) = [r["run"] for r in stream if r["type"] == "run"]
    assert start["run_id"] == state["run_id"] == run_id(run_dir(root, method), root)
    assert start["job_type"] == ("eval" if method == "zero_shot" else "train") and start["resume"] is True
    assert start["run_group"] == GROUP and start["display_name"] == f"glue-{method}-tiny-bert-s1"
    # The summary: metrics.json's numbers on the tables' scale, under the same names for every benchmark.
    summary = {k: v for k, v in state["summary"].items() if not k.startswith("_")}
    expected = summary_metrics(metrics)
    history = {f"train/{k}" for k in HISTORY_KEYS} | {STEP_METRIC} if method != "zero_shot" else set()
    assert set(summary) == set(expected) | history
    for key, value in expected.items():
        assert summary[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    assert summary["score/mrpc"] == pytest.approx(metrics["task_scores"]["mrpc"])
    assert summary["metric/mrpc/f1"] == pytest.approx(100 * metrics["tasks"]["mrpc"]["f1"])
    assert summary["metric/cola/matthews_correlation"] == pytest.approx(
        100 * metrics["tasks"]["cola"]["matthews_correlation"]
    )
    assert summary["average"] == pytest.approx(metrics["average"])
    assert summary["params/trainable"] == metrics["params"]["trainable"]
    assert summary["params/percent"] == pytest.approx(metrics["params"]["percent"])
    assert summary["peak_memory_mb"] == pytest.approx(metrics["peak_memory_mb"])
    assert summary["train/precision"] == "fp32" and summary["git_commit"] == metrics["git_commit"]
    assert ("train/samples_per_second" in summary) == (method != "zero_shot")
    # History: the training loss and learning rate at the logged steps (glue_ci logs every 2 steps), nothing else.
    rows = [r["history"]["item"] for r in stream if r["type"] == "history"]
    if method == "zero_shot":
        assert rows == []
    else:
        assert [row[STEP_METRIC] for row in rows] == [2, 4]
        assert all({"train/loss", "train/learning_rate"} <= set(row) for row in rows)
        assert {key for row in rows for key in row if not key.startswith("_")} == history


def test_the_adapter_is_the_only_artifact(runs):
    root, _ = runs
    for method in METHODS:
        (offline,) = offline_runs(run_dir(root, method))
        artifacts = [r["artifact"] for r in records(offline) if r["type"] == "artifact"]
        if method == "zero_shot":
            assert artifacts == []  # nothing was trained
            continue
        (artifact,) = artifacts
        (entry,) = artifact["manifest"]["contents"]
        adapter = run_dir(root, method) / "adapter.safetensors"
        assert artifact["type"] == "adapter" and artifact["name"] == f"adapter-{run_id(run_dir(root, method), root)}"
        assert entry["path"] == "adapter.safetensors" and int(entry["size"]) == adapter.stat().st_size


def test_a_rerun_continues_the_same_wandb_run(runs, tiny_encoder_dir, tiny_glue_dir):
    root, _ = runs
    folder = run_dir(root, "lora")
    # Resuming the finished run changes nothing, in W&B either.
    compose_run(tiny_encoder_dir, tiny_glue_dir, root, "lora", "trainer.resume=true")
    assert len(offline_runs(folder)) == 1
    # Rerunning the configuration into its directory logs into the same W&B run (the same id, resume allowed).
    compose_run(tiny_encoder_dir, tiny_glue_dir, root, "lora")
    ids = {final_state(offline)["run_id"] for offline in offline_runs(folder)}
    assert len(offline_runs(folder)) == 2 and ids == {run_id(folder, root)}


def test_tables_are_logged_into_a_tables_run(runs, tmp_path):
    root, metrics = runs
    tables.main(["--runs", str(root), "--out", str(tmp_path / "tables"), "--paper", str(tmp_path), "--wandb"])
    (offline,) = offline_runs(tmp_path / "tables")
    state, stream = final_state(offline), records(offline)
    (start,) = [r["run"] for r in stream if r["type"] == "run"]
    assert start["job_type"] == "tables" and start["run_group"] == GROUP

    def table(key: str) -> list[dict]:
        data = json.loads((offline / "files" / state["summary"][key]["path"]).read_text())
        return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]

    scores = {row["label"]: row for row in table("scores")}
    assert set(scores) == {"LoRA", "MTL-LoRA", "Zero-shot"}
    for method, label in (("lora", "LoRA"), ("mtl_lora", "MTL-LoRA")):
        assert scores[label]["average"] == pytest.approx(metrics[method]["average"], abs=1e-4)
        assert scores[label]["cola"] == pytest.approx(metrics[method]["task_scores"]["cola"], abs=1e-4)
        assert scores[label]["params_trainable"] == metrics[method]["params"]["trainable"]
    (difference,) = [row for row in table("differences") if row["label"] == "MTL-LoRA − LoRA"]
    gap = metrics["mtl_lora"]["average"] - metrics["lora"]["average"]
    assert difference["average"] == pytest.approx(gap, abs=2e-4) and difference["seeds"] == 1
    assert "average_se" in difference and "average_std" not in difference
    assert state["summary"]["plot"]["_type"] == "image-file"


def test_prediction_rows_are_sampled_per_task(tmp_path):
    rows = [{"index": i, "label": "a", "response": f"the answer is {i}", "prediction": str(i)} for i in range(30)]
    (tmp_path / "boolq.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "piqa.jsonl").write_text(json.dumps({"input": "q", "images": ["x", "y"], "prediction": "p"}) + "\n")
    columns, sampled = sample_predictions(tmp_path, ["piqa", "boolq", "missing"], per_task=5)
    assert columns == ["task", "input", "images", "prediction", "index", "label", "response"]
    assert sampled[0] == ["piqa", "q", '["x", "y"]', "p", None, None, None]
    indices = [row[4] for row in sampled[1:]]
    assert len(indices) == 5 and indices == sorted(indices) and len(set(indices)) == 5
    assert sample_predictions(tmp_path, ["piqa", "boolq"], per_task=5) == (columns, sampled)  # a fixed sample
    table = wandb.Table(columns=columns, data=sampled)
    assert table.columns == columns and len(table.data) == 6


def test_a_generation_run_logs_a_sample_of_its_predictions(wandb_env, tmp_path):
    texts = [
        alpaca_prompt(r["instruction"], r["input"], r["output"])
        for path in TOY.glob("*.jsonl")
        for r in read_records(path)
    ]
    output_dir = tmp_path / "runs" / "instruct_example" / "zero-shot"
    metrics = run_with(
        [
            "experiment=instruct_example",
            "method=zero_shot",
            f"model.name_or_path={write_tiny_llama(tmp_path / 'llama', texts)}",
            "model.gguf_file=null",
            "benchmark.max_new_tokens=4",
            "logger.predictions_sample=3",
            f"benchmark.cache_dir={tmp_path / 'cache'}",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.output_dir={output_dir}",
        ]
    )
    (offline,) = offline_runs(output_dir)
    logged = json.loads((offline / "files" / final_state(offline)["summary"]["predictions"]["path"]).read_text())
    columns, rows = sample_predictions(output_dir / "predictions", metrics["task_order"], 3)
    assert logged["columns"] == columns and logged["data"] == rows and len(rows) == 3 * len(metrics["task_order"])
    assert {"task", "prompt", "label", "response", "prediction"} <= set(columns)


def test_make_tables_takes_wandb_1():
    def dry_run(*args: str) -> str:
        command = ["make", "--no-print-directory", "-n", "tables", *args]  # also when run under `make test`
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert dry_run("WANDB=1").endswith("-m mtllora.tables --wandb")
    assert dry_run().endswith("-m mtllora.tables")


def test_history_takes_training_logs_and_mid_run_evaluations_only(monkeypatch):
    from types import SimpleNamespace

    from mtllora.wandb_log import WandbHistory

    logged = []
    monkeypatch.setattr(wandb, "log", logged.append)
    state = SimpleNamespace(global_step=6)
    history = WandbHistory()
    history.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-3, "epoch": 0.2, "total_flos": 7})
    history.on_log(None, state, None, logs={"eval/cola/matthews_correlation": 0.1, "eval/average": 40.0, "epoch": 0.2})
    history.on_log(None, state, None, logs={"train_runtime": 3.0, "epoch": 0.2})  # end-of-training totals: summary
    assert logged == [
        {"train/loss": 0.5, "train/learning_rate": 1e-3, "train/epoch": 0.2, STEP_METRIC: 6},
        {"train/epoch": 0.2, "eval/cola/matthews_correlation": 0.1, "eval/average": 40.0, STEP_METRIC: 6},
    ]
